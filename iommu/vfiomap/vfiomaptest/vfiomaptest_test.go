package vfiomaptest

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/vfio"
)

// TestRules: the double refuses what vfio_iommu_type1 refuses, and
// resolves buffers to guest RAM.
func TestRules(t *testing.T) {
	mem, err := memory.New([]memory.Layout{{GPA: 0, Size: 1 << 20}, {GPA: 1 << 32, Size: 1 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	lo, hi := mem.Regions()[0].Data, mem.Regions()[1].Data
	c := &Container{Mem: mem, Limit: 3}
	rw := uint32(vfio.DMARead | vfio.DMAWrite)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	refused := func(err, want error) {
		t.Helper()
		if !errors.Is(err, want) {
			t.Fatalf("got %v, want %v", err, want)
		}
	}
	must(c.MapDMA(lo[0x2000:0x4000], 0x10000, rw))
	must(c.MapDMA(hi[0x1000:0x2000], 0x20000, vfio.DMARead))
	if ms := c.Mappings(); len(ms) != 2 || ms[0] != (Mapping{IOVA: 0x10000, Size: 0x2000, GPA: 0x2000, Rights: rw}) ||
		ms[1] != (Mapping{IOVA: 0x20000, Size: 0x1000, GPA: 1<<32 + 0x1000, Rights: vfio.DMARead}) {
		t.Fatalf("mappings: %+v", c.Mappings())
	}
	refused(c.MapDMA(lo[0:0x1000], 0x11000, rw), unix.EEXIST)         // overlaps
	refused(c.MapDMA(lo[0:0x1000], 0x30000, 0), unix.EINVAL)          // no rights
	refused(c.MapDMA(lo[0:0x800], 0x30000, rw), unix.EINVAL)          // not a page multiple
	refused(c.MapDMA(lo[0x800:0x1800], 0x30000, rw), unix.EFAULT)     // not page-aligned
	refused(c.MapDMA(make([]byte, 0x1000), 0x30000, rw), unix.EFAULT) // not guest RAM
	must(c.MapDMA(lo[0:0x1000], 0x30000, rw))
	refused(c.MapDMA(lo[0:0x1000], 0x40000, rw), unix.ENOSPC) // the limit
	refused(c.UnmapDMA(0x11000, 0x1000), unix.EINVAL)         // splits a mapping
	refused(c.UnmapDMA(0xf000, 0x2000), unix.EINVAL)          // straddles its start
	if len(c.Mappings()) != 3 {
		t.Fatal("a refused unmap removed something")
	}
	must(c.UnmapDMA(0, 0x25000)) // two whole mappings and the gaps around them
	if ms := c.Mappings(); len(ms) != 1 || ms[0].IOVA != 0x30000 || c.Bytes() != 0x1000 {
		t.Fatalf("after the unmap: %+v", ms)
	}
	if p, ok := c.Pages(1); !ok || p[0x30000] != (Page{GPA: 0, Rights: rw}) {
		t.Fatalf("pages: %v %v", p, ok)
	}
	if _, ok := c.Pages(0); ok {
		t.Fatal("Pages ignores its bound")
	}
	if c.PeakMappings != 3 {
		t.Fatalf("peak %d", c.PeakMappings)
	}
}
