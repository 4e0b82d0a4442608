package vtd_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/viovmm/vio/iommu/vtd"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/queuetest"
)

// TestVirtqueueBehindUnit runs vio's virtqueue on a device view of the
// unit, as a virtio device with VIRTIO_F_ACCESS_PLATFORM would: the
// driver maps its rings and buffers (IOVA = GPA, as Linux's identity-ish
// DMA API would for this test), requests flow; then it unmaps the data
// area and points a new request at it: the device's access is blocked,
// the chain fails, the guest sees the DMAR fault, and the bytes are never
// read.
func TestVirtqueueBehindUnit(t *testing.T) {
	g := newGuest(t, vtd.Config{})
	pt := g.setup()
	g.w32(rFECTL, 0)
	const base, pages = 0x10_0000, 17 // one ring page, 16 data pages
	leaves := make([]uint64, pages)
	for i := range leaves {
		a := uint64(base + i*kib4)
		leaves[i] = g.mapPage(pt, 4, a, a, kib4, pRW)
	}
	drv, err := queuetest.New(g.mem, base, 16, 16*kib4, false)
	if err != nil {
		t.Fatal(err)
	}
	q, err := virtio.NewQueue(g.u.DMA(sid), drv.Config(), 16, 0)
	if err != nil {
		t.Fatal(err)
	}

	head, err := drv.Add([][]byte{[]byte("hello")}, []uint32{8})
	if err != nil {
		t.Fatal(err)
	}
	c, err := q.Next()
	if err != nil || c == nil {
		t.Fatalf("Next: %v, %v", c, err)
	}
	got := make([]byte, 5)
	if _, err := c.Readable.ReadAt(got, 0); err != nil || string(got) != "hello" {
		t.Fatalf("readable %q, %v", got, err)
	}
	if _, err := c.Writable.WriteAt([]byte("world!!!"), 0); err != nil {
		t.Fatal(err)
	}
	if err := q.Push(head, 8); err != nil {
		t.Fatal(err)
	}

	// The driver unmaps its data area and invalidates.
	gen := g.u.DMA(sid).Generation()
	for _, l := range leaves[1:] {
		g.memW64(l, 0)
	}
	g.invalidatePage(domain, base+kib4, 4) // 16 pages
	if g.u.DMA(sid).Generation() == gen {
		t.Fatal("generation did not move")
	}
	secret := bytes.Repeat([]byte{0x5e}, 32)
	if _, err := drv.Add([][]byte{secret}, nil); err != nil {
		t.Fatal(err)
	}
	c, err = q.Next()
	if err != nil || c != nil {
		t.Fatalf("a chain with unmapped buffers was handed out: %v, %v", c, err)
	}
	st := q.Stats()
	// (virtio's chain error keeps the cause's text, not its identity.)
	if st.BadChains != 1 || !errors.Is(st.LastError, virtio.ErrBadChain) {
		t.Fatalf("queue stats %+v", st)
	}
	if g.r32(rFSTS)&2 == 0 || len(g.msis) != 1 {
		t.Fatalf("the guest did not see the fault: FSTS %#x, MSIs %d", g.r32(rFSTS), len(g.msis))
	}
	lo, hi := g.record(0)
	if hi>>32&0xff != uint64(vtd.FaultRead) || hi&0xffff != sid || lo < base+kib4 || lo >= base+pages*kib4 {
		t.Fatalf("fault record %#x %#x", lo, hi)
	}
	// The rings are still mapped: the queue keeps working.
	if drv.UsedIdx() != 2 {
		t.Fatalf("used idx %d, want 2 (one good chain, one returned bad)", drv.UsedIdx())
	}
}
