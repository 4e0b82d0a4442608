package vtd_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/viovmm/vio/iommu/vtd"
	"github.com/viovmm/vio/memory"
)

func TestTranslationOffIsIdentity(t *testing.T) {
	g := newGuest(t, vtd.Config{})
	g.fill(0x7000, 0x77)
	g.mustByte(sid, 0x7123, 0x77)
	// Still checked against guest RAM.
	if _, err := g.read(sid, ramSize, 1); !errors.Is(err, memory.ErrOutOfRange) {
		t.Fatalf("read past RAM with translation off: %v", err)
	}
}

func TestTranslate4And3Levels(t *testing.T) {
	for _, levels := range []int{3, 4} {
		g := newGuest(t, vtd.Config{})
		g.setRoot()
		pt := g.alloc()
		g.setContext(sid, domain, 0, uint64(levels-2), pt, false)
		g.enable()
		iova := uint64(0x12_3456_7000)
		if levels == 3 {
			iova = 0x40_1234_5000 // below 2^39
		}
		g.mapPage(pt, levels, iova, 0x20_0000, kib4, pRW)
		g.fill(0x20_0000, 0xab)
		g.mustByte(sid, iova+0x10, 0xab)

		// Writes land at the translated address and nowhere else.
		v := g.u.DMA(sid)
		if _, err := v.WriteAt([]byte("hello"), int64(iova+0x100)); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 5)
		g.mem.ReadAt(got, 0x20_0100)
		if string(got) != "hello" {
			t.Fatalf("%d levels: guest RAM at the target holds %q", levels, got)
		}
		if err := v.StoreUint32(iova+0x200, 0xcafef00d); err != nil {
			t.Fatal(err)
		}
		if x, err := g.mem.LoadUint32(0x20_0200); err != nil || x != 0xcafef00d {
			t.Fatalf("StoreUint32 landed %#x, %v", x, err)
		}
		if x, err := v.LoadUint16(iova + 0x202); err != nil || x != 0xcafe {
			t.Fatalf("LoadUint16 = %#x, %v", x, err)
		}
		if err := v.StoreUint16(iova+0x204, 0xbeef); err != nil {
			t.Fatal(err)
		}
		if x, _ := g.mem.LoadUint16(0x20_0204); x != 0xbeef {
			t.Fatalf("StoreUint16 landed %#x", x)
		}
		if _, err := v.LoadUint32(iova + 0x201); !errors.Is(err, memory.ErrOutOfRange) {
			t.Fatalf("unaligned LoadUint32: %v", err)
		}
		// The neighbouring page is not mapped.
		_, err := g.read(sid, iova+kib4, 1)
		wantFault(t, err, vtd.FaultRead)
	}
}

func TestAddressBeyondWidth(t *testing.T) {
	g := newGuest(t, vtd.Config{})
	g.setRoot()
	pt := g.alloc()
	g.setContext(sid, domain, 0, 1, pt, false) // 3 levels: 39 bits
	g.enable()
	_, err := g.read(sid, 1<<39, 1)
	wantFault(t, err, vtd.FaultAddressTooWide)
	_, err = g.u.DMA(sid).Slice(1<<63, 1)
	wantFault(t, err, vtd.FaultAddressTooWide)
}

func TestPermissions(t *testing.T) {
	g := newGuest(t, vtd.Config{})
	pt := g.setup()
	g.mapPage(pt, 4, 0x1000, 0x10_0000, kib4, pR)
	g.mapPage(pt, 4, 0x2000, 0x10_1000, kib4, pW)
	g.fill(0x10_0000, 0x11)
	g.fill(0x10_1000, 0x22)
	v := g.u.DMA(sid)

	g.mustByte(sid, 0x1000, 0x11)
	_, err := v.WriteAt([]byte{9}, 0x1000)
	wantFault(t, err, vtd.FaultWrite)
	if _, err := v.SliceForWrite(0x1000, 4); err == nil {
		t.Fatal("SliceForWrite of a read-only page succeeded")
	}
	if err := v.StoreUint32(0x1000, 1); err == nil {
		t.Fatal("StoreUint32 to a read-only page succeeded")
	}
	if err := v.MarkDirty(0x1000, 1); err == nil {
		t.Fatal("MarkDirty of a read-only page succeeded")
	}
	g.mustByte(sid, 0x1000, 0x11) // unchanged

	if _, err := v.WriteAt([]byte{9}, 0x2000); err != nil {
		t.Fatal(err)
	}
	_, err = g.read(sid, 0x2000, 1)
	wantFault(t, err, vtd.FaultRead)
	if _, err := v.Slice(0x2000, 1); err == nil {
		t.Fatal("Slice of a write-only page succeeded")
	}

	// Permissions accumulate: a read-only directory entry makes the
	// read-write page below it read-only.
	leaf := g.mapPage(pt, 4, 0x40_0000_0000, 0x10_2000, kib4, pRW)
	_ = leaf
	// Walk down to the level-3 entry of that IOVA and drop its W.
	l4 := pt + (0x40_0000_0000>>39&511)*8
	l3 := g.memR64(l4)&^0xfff + (0x40_0000_0000>>30&511)*8
	g.memW64(l3, g.memR64(l3)&^pW)
	if _, err := v.ReadAt(make([]byte, 1), 0x40_0000_0000); err != nil {
		t.Fatal(err)
	}
	_, err = v.WriteAt([]byte{1}, 0x40_0000_0000)
	wantFault(t, err, vtd.FaultWrite)
}

func TestSuperpages(t *testing.T) {
	g := newGuest(t, vtd.Config{})
	pt := g.setup()
	g.mapPage(pt, 4, 0x8000_0000, 0x20_0000, mib2, pRW)
	g.mapPage(pt, 4, 0x1_4000_0000, 0, gib1, pRW)
	g.fill(0x20_0000+0x1f_f000, 0xee) // last 4 KiB of the 2 MiB page
	g.fill(0x30_5000, 0xdd)
	g.mustByte(sid, 0x8000_0000+0x1f_f123, 0xee)
	g.mustByte(sid, 0x1_4000_0000+0x30_5000, 0xdd)
	// The 1 GiB page maps more than guest RAM: beyond RAM is refused by
	// memory, not read from somewhere else.
	if _, err := g.read(sid, 0x1_4000_0000+ramSize, 1); !errors.Is(err, memory.ErrOutOfRange) {
		t.Fatalf("read through a superpage past RAM: %v", err)
	}
	// A slice across 4 KiB boundaries of one superpage is contiguous.
	s, err := g.u.DMA(sid).Slice(0x8000_0000+0x1f_e000, 0x2000)
	if err != nil || len(s) != 0x2000 || s[0x1fff] != 0xee {
		t.Fatalf("slice inside a 2 MiB page: len %d, %v", len(s), err)
	}
	// A superpage address not aligned to its size is a reserved-bit fault.
	e := g.mapPage(pt, 4, 0xc000_0000, 0x20_1000, mib2, pRW)
	_, err = g.read(sid, 0xc000_0000, 1)
	wantFault(t, err, vtd.FaultPagingReserved)
	// PS in a level-4 entry is reserved too.
	g.memW64(e, 0)
	l4 := pt + (0x80_0000_0000>>39&511)*8
	g.memW64(l4, pRW|pPS)
	_, err = g.read(sid, 0x80_0000_0000, 1)
	wantFault(t, err, vtd.FaultPagingReserved)
}

func TestPassThrough(t *testing.T) {
	g := newGuest(t, vtd.Config{})
	g.setRoot()
	g.setContext(sid, domain, 2, 2, 0, false)
	g.enable()
	g.fill(0x9000, 0x99)
	g.mustByte(sid, 0x9000, 0x99)
	// Another device without a context entry is blocked.
	_, err := g.read(sid+1, 0x9000, 1)
	wantFault(t, err, vtd.FaultContextNotPresent)
}

func TestSplitAccesses(t *testing.T) {
	g := newGuest(t, vtd.Config{})
	pt := g.setup()
	// Two IOVA pages on adjacent GPAs, a third on a distant one.
	g.mapPage(pt, 4, 0x10000, 0x30_0000, kib4, pRW)
	g.mapPage(pt, 4, 0x11000, 0x30_1000, kib4, pRW)
	g.mapPage(pt, 4, 0x12000, 0x50_0000, kib4, pRW)
	v := g.u.DMA(sid)

	if s, err := v.Slice(0x10800, 0x1000); err != nil || len(s) != 0x1000 {
		t.Fatalf("slice over adjacent pages: %v", err)
	}
	faults := g.u.Stats().Faults
	if _, err := v.Slice(0x11800, 0x1000); !errors.Is(err, memory.ErrNotMapped) {
		t.Fatalf("slice over non-adjacent pages: %v", err)
	}
	if g.u.Stats().Faults != faults || g.r32(rFSTS) != 0 {
		t.Fatal("a non-contiguous slice was recorded as a fault")
	}
	// ReadAt and WriteAt split where they must.
	data := bytes.Repeat([]byte("0123456789abcdef"), 0x1a0)
	if _, err := v.WriteAt(data, 0x10800); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if _, err := v.ReadAt(got, 0x10800); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back across three pages: %v", err)
	}
	tail := make([]byte, 0x200)
	g.mem.ReadAt(tail, 0x50_0000)
	if !bytes.Equal(tail, data[0x1800:]) {
		t.Fatal("the third page's bytes are not at its GPA")
	}
	// All or nothing: a write running into an unmapped page writes none.
	before := make([]byte, 0x100)
	g.mem.ReadAt(before, 0x50_0f00)
	_, err := v.WriteAt(make([]byte, 0x200), 0x12f00)
	wantFault(t, err, vtd.FaultWrite)
	after := make([]byte, 0x100)
	g.mem.ReadAt(after, 0x50_0f00)
	if !bytes.Equal(before, after) {
		t.Fatal("a failed write changed guest memory")
	}
	// Hostile lengths fail cleanly.
	if _, err := v.Slice(0x10000, 1<<62); !errors.Is(err, memory.ErrOutOfRange) {
		t.Fatalf("huge slice: %v", err)
	}
	if _, err := v.Slice(^uint64(0)-10, 100); !errors.Is(err, memory.ErrNotMapped) {
		t.Fatalf("wrapping slice: %v", err)
	}
	if _, err := v.ReadAt(make([]byte, 1), -5); !errors.Is(err, memory.ErrNotMapped) {
		t.Fatalf("negative address: %v", err)
	}
}

func TestMalformedTables(t *testing.T) {
	cases := []struct {
		name   string
		break_ func(g *guest, pt uint64)
		reason vtd.FaultReason
	}{
		{"root not present", func(g *guest, pt uint64) { g.memW64(g.root, 0) }, vtd.FaultRootNotPresent},
		{"root reserved low", func(g *guest, pt uint64) { g.memW64(g.root, g.memR64(g.root)|1<<5) }, vtd.FaultRootReserved},
		{"root reserved high", func(g *guest, pt uint64) { g.memW64(g.root+8, 1) }, vtd.FaultRootReserved},
		{"context table outside RAM", func(g *guest, pt uint64) { g.memW64(g.root, 1<<40|1) }, vtd.FaultContextAccess},
		{"context not present", func(g *guest, pt uint64) { g.setContext(sid, domain, 0, 2, pt, false); g.memW64(ctxAddr(g), 0) }, vtd.FaultContextNotPresent},
		{"context reserved low", func(g *guest, pt uint64) { g.memW64(ctxAddr(g), g.memR64(ctxAddr(g))|1<<8) }, vtd.FaultContextReserved},
		{"context reserved high", func(g *guest, pt uint64) { g.memW64(ctxAddr(g)+8, g.memR64(ctxAddr(g)+8)|1<<30) }, vtd.FaultContextReserved},
		{"bad AW", func(g *guest, pt uint64) { g.setContext(sid, domain, 0, 3, pt, false) }, vtd.FaultContextInvalid},
		{"TT device-TLB", func(g *guest, pt uint64) { g.setContext(sid, domain, 1, 2, pt, false) }, vtd.FaultContextInvalid},
		{"TT reserved", func(g *guest, pt uint64) { g.setContext(sid, domain, 3, 2, pt, false) }, vtd.FaultContextInvalid},
		{"page table outside RAM", func(g *guest, pt uint64) { g.setContext(sid, domain, 0, 2, 1<<44, false) }, vtd.FaultPagingAccess},
		{"next table outside RAM", func(g *guest, pt uint64) { g.memW64(pt, 1<<44|pRW) }, vtd.FaultPagingAccess},
		{"paging reserved", func(g *guest, pt uint64) { g.memW64(pt, g.memR64(pt)|1<<50) }, vtd.FaultPagingReserved},
		{"not present", func(g *guest, pt uint64) { g.memW64(pt, 0) }, vtd.FaultRead},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := newGuest(t, vtd.Config{})
			pt := g.setup()
			g.mapPage(pt, 4, 0x1000, 0x10_0000, kib4, pRW)
			g.mustByte(sid, 0x1000, 0)
			c.break_(g, pt)
			g.w64(rCCMD, 1<<63|1<<61) // global context invalidation
			g.w64(rIOTLB, 1<<63|1<<60)
			_, err := g.read(sid, 0x1000, 1)
			wantFault(t, err, c.reason)
			if _, hi := g.record(0); hi>>32&0xff != uint64(c.reason) || hi>>63 == 0 {
				t.Fatalf("fault record 0 high = %#x", hi)
			}
		})
	}
	// The root table itself outside RAM.
	g := newGuest(t, vtd.Config{})
	g.w64(rRTADDR, 1<<44)
	g.w32(rGCMD, gSRTP)
	g.enable()
	_, err := g.read(sid, 0, 1)
	wantFault(t, err, vtd.FaultRootAccess)
}

func ctxAddr(g *guest) uint64 {
	return g.memR64(g.root+uint64(sid>>8)*16)&^0xfff + uint64(sid&0xff)*16
}
