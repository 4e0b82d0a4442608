package vfiomap_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/viovmm/vio/iommu/vfiomap"
	"github.com/viovmm/vio/iommu/vfiomap/vfiomaptest"
	"github.com/viovmm/vio/iommu/vtd"
	"golang.org/x/sys/unix"
)

func none() map[uint64]vfiomaptest.Page { return map[uint64]vfiomaptest.Page{} }

// TestFollowsGuest: the life of a device behind the vIOMMU, as Linux
// leads it: identity before translation, blocked with translation on and
// no context, attached to a domain, mapping and unmapping its buffers,
// translation off again. At each step the container maps exactly what
// the device may reach.
func TestFollowsGuest(t *testing.T) {
	g := newGuest(t, vfiomap.Config{})
	g.mustHost("reset (translation off)", g.identityPages())
	if ms := g.c.Mappings(); len(ms) != 2 {
		t.Fatalf("identity is one mapping per RAM region, got %d", len(ms))
	}
	g.setRoot()
	g.mustHost("root latched, translation still off", g.identityPages())
	g.translation(true)
	g.mustHost("translation on, no context", none())
	if s := g.f.Stats(); s.Mode != vtd.ContextBlocked || s.Bytes != 0 {
		t.Fatalf("stats while blocked: %+v", s)
	}

	g.attach(5)
	g.mustDomain("attached to an empty domain", 5)
	if s := g.f.Stats(); s.Mode != vtd.ContextTranslated || s.Domain != 5 {
		t.Fatalf("stats after attach: %+v", s)
	}
	// A 3-page buffer, contiguous in RAM: one host mapping.
	g.dmaMap(5, 0xffff_d000, 0x10_0000, 3, pRW)
	g.mustDomain("3-page map", 5)
	if ms := g.c.Mappings(); len(ms) != 1 || ms[0].Size != 3*kib4 {
		t.Fatalf("a contiguous buffer is not one mapping: %+v", ms)
	}
	// Two scattered pages, one read-only (the device reads it: the
	// guest's DMA_TO_DEVICE), one in high RAM.
	g.dmaMap(5, 0xffff_b000, 0x20_0000, 1, pR)
	g.dmaMap(5, 0xffff_c000, highBase+0x5000, 1, pW)
	g.mustDomain("scattered pages", 5)
	if ms := g.c.Mappings(); len(ms) != 3 {
		t.Fatalf("three buffers, %d mappings: %+v", len(ms), ms)
	}
	// Unmap the page at 0xffff_c000 with an invalidation of the aligned
	// 4-page block around it, which also covers pages that stay mapped
	// (Linux's masks round up like that): those are not touched.
	calls := g.c.MapCalls
	unmaps := g.c.UnmapCalls
	g.leaf(5, 0xffff_c000, 0, kib4, 0)
	g.iotlb(3, 5, 0xffff_c000, 2) // 0xffff_c000..0xffff_ffff
	g.mustDomain("unmap under a wide invalidation", 5)
	if g.c.MapCalls != calls || g.c.UnmapCalls != unmaps+1 {
		t.Fatalf("one unmap and no map expected: %d maps, %d unmaps", g.c.MapCalls-calls, g.c.UnmapCalls-unmaps)
	}
	// Remap the page with other rights: the host follows.
	g.dmaMap(5, 0xffff_b000, 0x20_0000, 1, pRW)
	g.mustDomain("rights changed", 5)
	g.dmaUnmap(5, 0xffff_d000, 3)
	g.dmaUnmap(5, 0xffff_b000, 1)
	g.mustDomain("all unmapped", 5)
	if b := g.c.Bytes(); b != 0 || g.f.Stats().Bytes != 0 {
		t.Fatalf("pinned after everything was unmapped: host %d, follower %d", b, g.f.Stats().Bytes)
	}
	// A 2 MiB superpage and a 1 GiB one (whose RAM part only is mapped).
	g.leaf(5, 0x4000_0000, 0x20_0000, mib2, pRW)
	g.psi(5, 0x4000_0000, 512)
	g.mustDomain("2 MiB superpage", 5)
	g.leaf(5, 0x8000_0000, 0, gib1, pR)
	g.psi(5, 0x8000_0000, 1<<18)
	g.mustDomain("1 GiB superpage over the end of RAM", 5)
	if s := g.f.Stats(); s.Refused != (gib1-low)/kib4 {
		t.Fatalf("refused %d pages outside RAM, want %d", s.Refused, (gib1-low)/kib4)
	}
	// Translation off: identity again.
	g.translation(false)
	g.mustHost("translation off", g.identityPages())
	g.translation(true)
	g.mustDomain("translation back on", 5)
	if err := g.f.Err(); err == nil || !strings.Contains(err.Error(), "outside RAM") {
		t.Fatalf("Err after a refused page: %v", err)
	}
	if s := g.f.Stats(); s.Errors != 0 {
		t.Fatalf("host calls failed: %+v", s)
	}
}

// TestPassThroughContext: a pass-through context (Linux's identity
// domain, iommu=pt) maps all RAM at its own address; moving the device
// into a translated domain takes that away.
func TestPassThroughContext(t *testing.T) {
	g := newGuest(t, vfiomap.Config{})
	g.setRoot()
	g.translation(true)
	g.setContext(sid, 1, 2, 0, true)
	g.ccmd(3, 0, sid, 0)
	g.mustHost("pass-through context", g.identityPages())
	if s := g.f.Stats(); s.Mode != vtd.ContextIdentity || s.Domain != 1 {
		t.Fatalf("stats: %+v", s)
	}
	g.dmaMap(2, 0x1000, 0x30_0000, 1, pRW) // domain 2 exists, device not in it
	g.attach(2)
	g.mustDomain("from pass-through into a domain", 2)
	// Detach: context cleared and invalidated.
	g.setContext(sid, 0, 0, 0, false)
	g.ccmd(3, 0, sid, 0)
	g.iotlb(2, 2, 0, 0)
	g.mustHost("detached", none())
	if s := g.f.Stats(); s.Mode != vtd.ContextBlocked {
		t.Fatalf("stats after detach: %+v", s)
	}
}

// TestDomainSwitch: a device moved to another domain gets that domain's
// mappings, replayed from its tables; the old domain's later changes do
// not reach it, the new one's do.
func TestDomainSwitch(t *testing.T) {
	g := newGuest(t, vfiomap.Config{})
	g.setRoot()
	g.translation(true)
	g.attach(1)
	g.dmaMap(1, 0x1000, 0x10_0000, 4, pRW)
	g.dmaMap(1, 0x10_0000, 0x40_0000, 1, pR)
	// Domain 2 is built while the device is elsewhere (its flushes name
	// domain 2, which the follower ignores).
	g.dmaMap(2, 0x1000, 0x50_0000, 2, pW)
	g.dmaMap(2, 0x7000_0000, highBase, 8, pRW)
	g.mustDomain("still in domain 1", 1)
	// Move: the context names domain 2; a domain-selective context
	// invalidation of the old domain, as a guest may do it.
	g.setContext(sid, 2, 0, g.domainTable(2), true)
	g.ccmd(2, 1, 0, 0)
	g.mustDomain("moved to domain 2", 2)
	g.dmaMap(1, 0x2000_0000, 0x60_0000, 1, pRW)
	g.mustDomain("domain 1 changed after the move", 2)
	g.dmaUnmap(2, 0x1000, 2)
	g.dmaMap(2, 0x3000, 0x70_0000, 1, pRW)
	g.mustDomain("domain 2 changed", 2)
	// Back to domain 1 through a global context invalidation.
	g.setContext(sid, 1, 0, g.domainTable(1), true)
	g.ccmd(1, 0, 0, 0)
	g.mustDomain("back in domain 1", 1)
	// Another device's context invalidation does not concern this one.
	calls := g.c.MapCalls + g.c.UnmapCalls
	g.ccmd(3, 0, sid+8, 0)
	if g.c.MapCalls+g.c.UnmapCalls != calls {
		t.Fatal("another device's context invalidation touched the container")
	}
}

// TestReplays: domain-wide and global IOTLB invalidations, a context
// invalidation with the context unchanged, and a new root table all
// bring the container in line with tables the guest changed without
// page-selective invalidations; what did not change is not touched.
func TestReplays(t *testing.T) {
	g := newGuest(t, vfiomap.Config{})
	g.setRoot()
	g.translation(true)
	g.attach(3)
	g.dmaMap(3, 0x1000, 0x10_0000, 2, pRW)
	keep := g.c.Mappings()
	// Changes with no invalidation: the host does not see them yet.
	g.leaf(3, 0x5000, 0x20_0000, kib4, pRW)
	g.leaf(3, 0x6000, highBase, kib4, pR)
	g.iotlb(2, 3, 0, 0)
	g.mustDomain("domain-selective", 3)
	if ms := g.c.Mappings(); ms[0] != keep[0] {
		t.Fatalf("an unchanged mapping was replaced: %+v, was %+v", ms[0], keep[0])
	}
	g.leaf(3, 0x5000, 0, kib4, 0)
	g.iotlb(1, 0, 0, 0)
	g.mustDomain("global", 3)
	g.leaf(3, 0x9000, 0x30_0000, kib4, pW)
	g.ccmd(3, 0, sid, 0)
	g.mustDomain("context invalidation, same context", 3)
	// A new root table whose context puts the device in domain 4: the
	// unit latches the root at SRTP, when the context is not there yet,
	// so the device is blocked until its context is written and
	// invalidated.
	g.dmaMap(4, 0x1000, 0x31_0000, 1, pRW)
	g.setRoot()
	g.mustHost("SRTP to an empty root table", none())
	g.setContext(sid, 4, 0, g.domainTable(4), true)
	g.ccmd(1, 0, 0, 0)
	g.mustDomain("new root, context invalidated", 4)
}

// TestRunSplit: a run the follower mapped whole (a replay joins
// contiguous pages) keeps its other pages when the guest unmaps one in
// the middle: type1 cannot split a mapping, so the run is unmapped and
// its surviving parts mapped again.
func TestRunSplit(t *testing.T) {
	g := newGuest(t, vfiomap.Config{})
	g.setRoot()
	g.translation(true)
	g.attach(1)
	for i := range uint64(4) {
		g.leaf(1, 0x10000+i*kib4, 0x10_0000+i*kib4, kib4, pRW)
	}
	g.iotlb(2, 1, 0, 0)
	if ms := g.c.Mappings(); len(ms) != 1 || ms[0].Size != 4*kib4 {
		t.Fatalf("a replay of 4 contiguous pages: %+v", ms)
	}
	g.dmaUnmap(1, 0x11000, 1)
	g.mustDomain("a page out of the middle of a run", 1)
	if s := g.f.Stats(); s.Remapped != 3*kib4 {
		t.Fatalf("remapped %d bytes, want the 3 surviving pages", s.Remapped)
	}
	if ms := g.c.Mappings(); len(ms) != 2 {
		t.Fatalf("after the split: %+v", ms)
	}
}

// TestHostile: what a hostile guest does cannot make the follower map
// what is not RAM, exceed its limits, or fail; what it cannot map stays
// unmapped, which on the host means the device's DMA there fails.
func TestHostile(t *testing.T) {
	t.Run("outside RAM", func(t *testing.T) {
		g := newGuest(t, vfiomap.Config{})
		g.setRoot()
		g.translation(true)
		g.attach(1)
		g.dmaMap(1, 0x1000, low-kib4, 3, pRW)    // the last page of low RAM and two beyond
		g.dmaMap(1, 0x10000, 0xfee0_0000, 1, pW) // the MSI window
		g.dmaMap(1, 0x20000, 1<<47, 1, pRW)      // far beyond
		g.mustDomain("pages outside RAM", 1)
		if s := g.f.Stats(); s.Refused != 4 || s.Errors != 0 || s.Mappings != 1 {
			t.Fatalf("stats: %+v", s)
		}
	})
	t.Run("aliases over the byte limit", func(t *testing.T) {
		g := newGuest(t, vfiomap.Config{})
		g.setRoot()
		g.translation(true)
		g.attach(1)
		// 64 2 MiB superpages, all on the same 2 MiB of RAM: 128 MiB of
		// mappings over 48 MiB of RAM.
		for i := range uint64(64) {
			g.leaf(1, 1<<30+i*mib2, 0x20_0000, mib2, pRW)
		}
		g.iotlb(3, 1, 1<<30, 15)
		ram := g.mem.Size()
		if b := g.c.Bytes(); b > ram || b < ram-mib2 {
			t.Fatalf("%d bytes mapped, limit %d", b, ram)
		}
		if s := g.f.Stats(); s.Refused == 0 || s.Errors != 0 {
			t.Fatalf("stats: %+v", s)
		}
	})
	t.Run("mapping limit", func(t *testing.T) {
		g := newGuest(t, vfiomap.Config{MaxMappings: 16})
		g.setRoot()
		g.translation(true)
		g.attach(1)
		for i := range uint64(40) {
			g.leaf(1, 0x10_0000+i*kib4, 0x10_0000+2*i*kib4, kib4, pRW) // not contiguous: 40 runs
		}
		g.iotlb(2, 1, 0, 0)
		if ms := g.c.Mappings(); len(ms) != 16 {
			t.Fatalf("%d mappings, limit 16", len(ms))
		}
		if s := g.f.Stats(); s.Refused != 24 || s.Errors != 0 {
			t.Fatalf("stats: %+v", s)
		}
	})
	t.Run("host entry limit", func(t *testing.T) {
		g := newGuest(t, vfiomap.Config{})
		g.c.Limit = 8 // dma_entry_limit lowered by the host's admin
		g.setRoot()
		g.translation(true)
		g.attach(1)
		for i := range uint64(20) {
			g.dmaMap(1, 0x10_0000+i*kib4, 0x10_0000+2*i*kib4, 1, pRW)
		}
		if ms := g.c.Mappings(); len(ms) != 8 {
			t.Fatalf("%d mappings, host limit 8", len(ms))
		}
		if s := g.f.Stats(); s.Errors != 12 || s.Mappings != 8 {
			t.Fatalf("stats: %+v", s)
		}
		if err := g.f.Err(); !errors.Is(err, unix.ENOSPC) {
			t.Fatalf("Err: %v", err)
		}
		// Unmapping makes room again: the follower's books are right.
		g.dmaUnmap(1, 0x10_0000, 4)
		g.dmaMap(1, 0x10_0000, 0x10_0000, 1, pRW)
		if ms := g.c.Mappings(); len(ms) != 5 {
			t.Fatalf("%d mappings after unmapping 4 and mapping 1", len(ms))
		}
		// A replay tries again what was refused, up to the limit.
		g.iotlb(2, 1, 0, 0)
		if ms := g.c.Mappings(); len(ms) != 8 {
			t.Fatalf("%d mappings after a replay", len(ms))
		}
	})
	t.Run("aliased tables", func(t *testing.T) {
		g := newGuest(t, vfiomap.Config{WalkBudget: 20_000, MaxMappings: 100})
		g.setRoot()
		g.translation(true)
		g.attach(1)
		g.dmaMap(1, 0x1000, 0x10_0000, 1, pRW)
		// Every level-2 entry of one level-3 table at one level-1
		// table mapping 512 pages: 262144 pages at 1 GiB.., far beyond
		// any budget; then a domain-wide flush makes a full walk.
		l1 := g.alloc()
		for i := range uint64(512) {
			g.memW64(l1+i*8, 0x10_0000|pRW)
		}
		l2 := g.alloc()
		for i := range uint64(512) {
			g.memW64(l2+i*8, l1|pRW)
		}
		l3 := g.memR64(g.domainTable(1)) &^ 0xfff
		g.memW64(l3+1*8, l2|pRW)
		g.iotlb(2, 1, 0, 0)
		s := g.f.Stats()
		if s.Truncated != 1 || s.Mappings > 100 || s.Errors != 0 {
			t.Fatalf("stats: %+v", s)
		}
		if _, ok := g.host()[0x1000]; !ok {
			t.Fatal("the page below the aliased tables is not mapped")
		}
		for iova := range g.host() {
			if iova >= 2<<30 {
				t.Fatalf("a page beyond where the walk stopped is mapped: %#x", iova)
			}
		}
	})
	t.Run("host failures", func(t *testing.T) {
		g := newGuest(t, vfiomap.Config{})
		g.setRoot()
		g.translation(true)
		g.attach(1)
		refuse := true
		g.c.FailMap = func(iova, size uint64) error {
			if refuse && iova == 0x5000 {
				return unix.ENOMEM
			}
			return nil
		}
		g.dmaMap(1, 0x5000, 0x10_0000, 1, pRW)
		g.dmaMap(1, 0x6000, 0x20_0000, 1, pRW)
		if _, ok := g.host()[0x5000]; ok || len(g.host()) != 1 {
			t.Fatalf("after a refused map: %v", g.host())
		}
		if !errors.Is(g.f.Err(), unix.ENOMEM) {
			t.Fatalf("Err: %v", g.f.Err())
		}
		refuse = false
		g.iotlb(2, 1, 0, 0) // a replay maps it now
		g.mustDomain("replayed after a refused map", 1)
		// An unmap the host refuses stays in the books and is tried
		// again at the next replay.
		g.c.FailUnmap = func(iova, size uint64) error { return unix.EINVAL }
		g.dmaUnmap(1, 0x5000, 1)
		if _, ok := g.host()[0x5000]; !ok {
			t.Fatal("the double did not refuse")
		}
		g.c.FailUnmap = nil
		g.iotlb(2, 1, 0, 0)
		g.mustDomain("replayed after a refused unmap", 1)
	})
}

// TestConfigErrors: a Config the follower cannot work with is refused.
func TestConfigErrors(t *testing.T) {
	if _, err := vfiomap.New(vfiomap.Config{}); err == nil {
		t.Fatal("a Config with no memory and no container")
	}
	g := newGuest(t, vfiomap.Config{})
	if _, err := vfiomap.New(vfiomap.Config{Mem: g.mem, Container: g.c, MaxMappings: -1}); err == nil {
		t.Fatal("a negative limit")
	}
}

// TestFanout: every follower behind a Fanout follows its own device.
func TestFanout(t *testing.T) {
	g := newGuest(t, vfiomap.Config{})
	other := &vfiomaptest.Container{Mem: g.mem}
	f2, err := vfiomap.New(vfiomap.Config{Mem: g.mem, Container: other, SourceID: sid + 8})
	if err != nil {
		t.Fatal(err)
	}
	fan := &vfiomap.Fanout{}
	fan.Add(g.f)
	fan.Add(f2)
	u, err := vtd.New(vtd.Config{Mem: g.mem, CachingMode: true, Notifier: fan})
	if err != nil {
		t.Fatal(err)
	}
	g.u = u
	u.Resync()
	g.setRoot()
	g.translation(true)
	g.attach(1)
	g.dmaMap(1, 0x1000, 0x10_0000, 2, pRW)
	g.mustDomain("first device", 1)
	if n := len(other.Mappings()); n != 0 {
		t.Fatalf("the second device, with no context, has %d mappings", n)
	}
	g.setContext(sid+8, 1, 0, g.domainTable(1), true)
	g.ccmd(3, 0, sid+8, 0)
	if p, _ := other.Pages(100); len(p) != 2 || p[0x1000].GPA != 0x10_0000 {
		t.Fatalf("the second device in domain 1: %v", p)
	}
}
