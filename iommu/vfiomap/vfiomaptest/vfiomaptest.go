// Package vfiomaptest is a test double for a VFIO type1v2 container, the
// host address space iommu/vfiomap keeps in step with a guest: it keeps
// the mappings it is given and enforces the kernel's rules on them, so a
// test can check exactly what a device could reach.
//
// The rules are those of vfio_iommu_type1 (v2): a mapping needs a
// non-empty, page-aligned range and at least one of read and write; it
// may not overlap another (EEXIST); the container holds at most Limit
// mappings (ENOSPC, the module's dma_entry_limit); an unmap removes every
// mapping inside its range and fails (EINVAL, removing nothing) when a
// mapping straddles either end. On top, the double insists that every
// buffer is guest RAM, which it resolves to guest physical addresses: a
// follower must never hand the host anything else.
package vfiomaptest

import (
	"fmt"
	"sort"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/vfio"
)

const page = 4096

// Mapping is one mapping of the container, with its buffer resolved to
// guest RAM.
type Mapping struct {
	IOVA, Size, GPA uint64
	Rights          uint32
}

// Page is what one 4 KiB device page reaches.
type Page struct {
	GPA    uint64
	Rights uint32
}

// Container is the double. Set Mem (and Limit) before use.
type Container struct {
	// Mem is the guest RAM buffers must come from.
	Mem *memory.Memory
	// Limit bounds the mappings (0: 65535).
	Limit int
	// FailMap and FailUnmap, if set, make the calls they accept fail
	// (as the host may: memlock limits, reserved ranges).
	FailMap   func(iova, size uint64) error
	FailUnmap func(iova, size uint64) error

	mu           sync.Mutex
	maps         []Mapping // sorted by IOVA
	MapCalls     int       // MapDMA calls, failed ones included
	UnmapCalls   int       // UnmapDMA calls, failed ones included
	PeakMappings int       // the most mappings held at once
}

// gpaOf resolves buf to the guest physical address of its first byte,
// without unsafe: a subslice of a region's Data shares its backing array,
// and its capacity says where it starts.
func (c *Container) gpaOf(buf []byte) (uint64, bool) {
	for _, r := range c.Mem.Regions() {
		off := cap(r.Data) - cap(buf)
		if off < 0 || off >= len(r.Data) || len(buf) > len(r.Data)-off {
			continue
		}
		if &r.Data[off] == &buf[0] {
			return r.GPA + uint64(off), true
		}
	}
	return 0, false
}

// MapDMA implements vfiomap.Container.
func (c *Container) MapDMA(buf []byte, iova uint64, rights uint32) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.MapCalls++
	size := uint64(len(buf))
	if size == 0 || size%page != 0 || iova%page != 0 || rights == 0 || rights&^(vfio.DMARead|vfio.DMAWrite) != 0 || iova+size < iova {
		return fmt.Errorf("map %#x+%#x rights %d: %w", iova, size, rights, unix.EINVAL)
	}
	gpa, ok := c.gpaOf(buf)
	if !ok || gpa%page != 0 {
		return fmt.Errorf("map %#x+%#x: the buffer is not page-aligned guest RAM: %w", iova, size, unix.EFAULT)
	}
	if c.FailMap != nil {
		if err := c.FailMap(iova, size); err != nil {
			return err
		}
	}
	i := sort.Search(len(c.maps), func(i int) bool { return c.maps[i].IOVA+c.maps[i].Size > iova })
	if i < len(c.maps) && c.maps[i].IOVA < iova+size {
		return fmt.Errorf("map %#x+%#x overlaps %#x+%#x: %w", iova, size, c.maps[i].IOVA, c.maps[i].Size, unix.EEXIST)
	}
	limit := c.Limit
	if limit == 0 {
		limit = 65535
	}
	if len(c.maps) >= limit {
		return fmt.Errorf("map %#x+%#x: %d mappings already: %w", iova, size, len(c.maps), unix.ENOSPC)
	}
	c.maps = append(c.maps, Mapping{})
	copy(c.maps[i+1:], c.maps[i:])
	c.maps[i] = Mapping{IOVA: iova, Size: size, GPA: gpa, Rights: rights}
	c.PeakMappings = max(c.PeakMappings, len(c.maps))
	return nil
}

// UnmapDMA implements vfiomap.Container.
func (c *Container) UnmapDMA(iova, size uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.UnmapCalls++
	if size == 0 || size%page != 0 || iova%page != 0 || iova+size < iova {
		return fmt.Errorf("unmap %#x+%#x: %w", iova, size, unix.EINVAL)
	}
	if c.FailUnmap != nil {
		if err := c.FailUnmap(iova, size); err != nil {
			return err
		}
	}
	end := iova + size
	lo := sort.Search(len(c.maps), func(i int) bool { return c.maps[i].IOVA+c.maps[i].Size > iova })
	hi := sort.Search(len(c.maps), func(i int) bool { return c.maps[i].IOVA >= end })
	if lo < hi && (c.maps[lo].IOVA < iova || c.maps[hi-1].IOVA+c.maps[hi-1].Size > end) {
		return fmt.Errorf("unmap %#x+%#x splits a mapping: %w", iova, size, unix.EINVAL)
	}
	c.maps = append(c.maps[:lo], c.maps[hi:]...)
	return nil
}

// Mappings returns the container's mappings, sorted by IOVA.
func (c *Container) Mappings() []Mapping {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Mapping(nil), c.maps...)
}

// Pages returns what each mapped 4 KiB device page reaches, however the
// pages are grouped into mappings. maxPages bounds the answer (a test's
// guard against a runaway); beyond it Pages returns nil and false.
func (c *Container) Pages(maxPages int) (map[uint64]Page, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[uint64]Page{}
	for _, m := range c.maps {
		if uint64(len(out))+m.Size/page > uint64(maxPages) {
			return nil, false
		}
		for off := uint64(0); off < m.Size; off += page {
			out[m.IOVA+off] = Page{GPA: m.GPA + off, Rights: m.Rights}
		}
	}
	return out, true
}

// Bytes returns the bytes mapped: what a host would pin.
func (c *Container) Bytes() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n uint64
	for _, m := range c.maps {
		n += m.Size
	}
	return n
}
