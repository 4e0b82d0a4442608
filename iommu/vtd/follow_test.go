package vtd_test

import (
	"errors"
	"slices"
	"testing"

	"github.com/viovmm/vio/iommu/vtd"
)

// probe is a Notifier that, at every event, asks the unit what the test
// wants to know while the event's Tables is valid.
type probe struct {
	evs   []vtd.Invalidation
	ctx   []vtd.DeviceContext // sid's context at each event
	sid   uint16
	after func(ev vtd.Invalidation) // runs during the call, if set
	kept  *vtd.Tables               // the last event's Tables, kept past its call
}

func (p *probe) Invalidated(ev vtd.Invalidation) {
	p.evs = append(p.evs, ev)
	p.ctx = append(p.ctx, ev.Tables.Context(p.sid))
	p.kept = ev.Tables
	if p.after != nil {
		p.after(ev)
	}
}

func (p *probe) last(t *testing.T) (vtd.Invalidation, vtd.DeviceContext) {
	t.Helper()
	if len(p.evs) == 0 {
		t.Fatal("no event")
	}
	return p.evs[len(p.evs)-1], p.ctx[len(p.ctx)-1]
}

// TestContextEvents: every change that can move a device to another
// domain (or in or out of translation) reaches the Notifier, and
// Tables.Context then says where the device is.
func TestContextEvents(t *testing.T) {
	p := &probe{}
	forEachInvalidator(t, vtd.Config{CachingMode: true, Notifier: p}, func(t *testing.T, g *guest, inv invalidator) {
		*p = probe{sid: sid}
		u := g.u
		u.Resync()
		if ev, c := p.last(t); ev.Kind != vtd.TranslationChanged || c.Mode != vtd.ContextIdentity {
			t.Fatalf("Resync: %v, context %+v", ev.Kind, c)
		}
		g.setRoot()
		if ev, c := p.last(t); ev.Kind != vtd.TranslationChanged || c.Mode != vtd.ContextIdentity {
			t.Fatalf("SRTP with translation off: %v, context %+v", ev.Kind, c)
		}
		g.enable()
		if ev, c := p.last(t); ev.Kind != vtd.TranslationChanged || c.Mode != vtd.ContextBlocked || c.Reason != vtd.FaultRootNotPresent {
			t.Fatalf("TE on with no context: %v, context %+v", ev.Kind, c)
		}
		// Attach to a domain (a context that failed to load is not
		// cached; the device invalidation makes the unit read it).
		pt := g.alloc()
		g.setContext(sid, domain, 0, 2, pt, false)
		inv.context(3, 0, sid, 0)
		ev, c := p.last(t)
		if ev.Kind != vtd.InvalidateContextDevice || ev.SourceID != sid || c.Mode != vtd.ContextTranslated || c.Domain != domain {
			t.Fatalf("attach: %+v, context %+v", ev, c)
		}
		if c.AddressLimit() != 1<<48-1 {
			t.Fatalf("4-level context: address limit %#x", c.AddressLimit())
		}
		attached := c
		// The guest rewrites the context to pass-through but has not
		// invalidated: the unit (and so the follower) still uses the
		// cached one.
		g.setContext(sid, domain, 2, 2, 0, false)
		inv.iotlb(2, domain, 0, 0)
		if _, c := p.last(t); c != attached {
			t.Fatalf("a context changed without invalidation is used before it is invalidated: %+v", c)
		}
		inv.context(2, domain, 0, 0)
		ev, c = p.last(t)
		if ev.Kind != vtd.InvalidateContextDomain || ev.Domain != domain || c.Mode != vtd.ContextIdentity || c.Domain != domain {
			t.Fatalf("pass-through: %+v, context %+v", ev, c)
		}
		if !ev.Covers(sid, attached) || ev.Covers(sid, vtd.DeviceContext{Mode: vtd.ContextTranslated, Domain: domain + 1}) {
			t.Fatal("a domain context invalidation covers the wrong contexts")
		}
		// Another domain with a 3-level table, then a global context
		// invalidation.
		pt3 := g.alloc()
		g.setContext(sid, domain+1, 0, 1, pt3, false)
		inv.context(1, 0, 0, 0)
		ev, c = p.last(t)
		if ev.Kind != vtd.InvalidateContextAll || c.Mode != vtd.ContextTranslated || c.Domain != domain+1 || c.AddressLimit() != 1<<39-1 {
			t.Fatalf("global: %+v, context %+v", ev, c)
		}
		if c == attached {
			t.Fatal("two different contexts compare equal")
		}
		// Detach: context not present.
		g.memW64(ctxAddr(g), 0)
		inv.context(3, 0, sid|7, 3) // function mask 3 covers all of slot 3
		ev, c = p.last(t)
		if ev.Kind != vtd.InvalidateContextDevice || !ev.Covers(sid, c) || c.Mode != vtd.ContextBlocked {
			t.Fatalf("detach: %+v, context %+v", ev, c)
		}
		if ev.Covers(sid+8, c) {
			t.Fatal("a device invalidation covers the next slot")
		}
		// TE off: identity again; a machine reset says so too.
		g.gcmd &^= gTE
		g.w32(rGCMD, g.gcmd)
		if ev, c := p.last(t); ev.Kind != vtd.TranslationChanged || c.Mode != vtd.ContextIdentity {
			t.Fatalf("TE off: %v, context %+v", ev.Kind, c)
		}
		n := len(p.evs)
		u.Reset()
		if len(p.evs) != n+1 || p.evs[n].Kind != vtd.TranslationChanged {
			t.Fatalf("Reset: events %v", p.evs[n:])
		}
		// A Tables kept past its call is stale, never a race.
		if c := p.kept.Context(sid); c.Mode != vtd.ContextBlocked {
			t.Fatalf("a stale Tables answers %+v", c)
		}
		if _, err := p.kept.Walk(attached, 0, 1<<20, 100, func(vtd.Mapping) {}); !errors.Is(err, vtd.ErrStale) {
			t.Fatalf("a stale Walk: %v", err)
		}
	})
}

// TestWalk: Walk reports exactly the present leaves in range, in order,
// with accumulated permissions, skips what a translation would fault on,
// and stops at its budget.
func TestWalk(t *testing.T) {
	p := &probe{sid: sid}
	g := newGuest(t, vtd.Config{CachingMode: true, Notifier: p})
	pt := g.setup()
	m := func(iova, gpa, size uint64, r, w bool) vtd.Mapping {
		return vtd.Mapping{IOVA: iova, GPA: gpa, Size: size, Read: r, Write: w}
	}
	g.mapPage(pt, 4, 0x1000, 0x10_0000, kib4, pRW)
	g.mapPage(pt, 4, 0x2000, 0x20_0000, kib4, pR)
	g.mapPage(pt, 4, 0x40_0000, 0x60_0000, mib2, pW)
	g.mapPage(pt, 4, 0x8000_0000, 0x4000_0000, gib1, pRW)
	g.mapPage(pt, 4, 1<<40, 0x30_0000, kib4, pRW)
	// A 4 KiB page under a level-2 entry that grants only R.
	g.mapPage(pt, 4, 0x7f_0000_0000, 0x31_0000, kib4, pRW)
	l3 := g.memR64(pt+(0x7f_0000_0000>>39&511)*8) &^ 0xfff
	l2 := g.memR64(l3+(0x7f_0000_0000>>30&511)*8) &^ 0xfff
	g.memW64(l2+(0x7f_0000_0000>>21&511)*8, g.memR64(l2+(0x7f_0000_0000>>21&511)*8)&^pW)
	// Faulting entries: reserved bits, a misaligned 2 MiB page, a table
	// outside RAM.
	g.memW64(g.mapPage(pt, 4, 0x3000, 0x32_0000, kib4, pRW), 0x32_0000|pRW|1<<50)
	g.memW64(g.mapPage(pt, 4, 0x60_0000, 0x80_0000, mib2, pRW), 0x81_0000|pRW|pPS)
	l3b := g.memR64(pt) &^ 0xfff
	g.memW64(l3b+3*8, 0x7_0000_0000|pRW) // 3 GiB..4 GiB: its table is not in RAM

	var walked []vtd.Mapping
	var next uint64
	var werr error
	walk := func(first, last uint64, budget int) {
		walked = nil
		p.after = func(ev vtd.Invalidation) {
			c := ev.Tables.Context(sid)
			next, werr = ev.Tables.Walk(c, first, last, budget, func(m vtd.Mapping) { walked = append(walked, m) })
		}
		g.invalidatePage(domain, 0, 0)
		p.after = nil
	}
	all := []vtd.Mapping{
		m(0x1000, 0x10_0000, kib4, true, true),
		m(0x2000, 0x20_0000, kib4, true, false),
		m(0x40_0000, 0x60_0000, mib2, false, true),
		m(0x8000_0000, 0x4000_0000, gib1, true, true),
		m(1<<40, 0x30_0000, kib4, true, true),
		m(0x7f_0000_0000, 0x31_0000, kib4, true, false),
	}
	slices.SortFunc(all, func(a, b vtd.Mapping) int { return int(a.IOVA>>12) - int(b.IOVA>>12) })
	walk(0, 1<<64-1, 1<<20)
	if werr != nil || !slices.Equal(walked, all) {
		t.Fatalf("whole walk (err %v):\n got %+v\nwant %+v", werr, walked, all)
	}
	// A range reports the leaves that overlap it, superpages whole.
	walk(0x2000, 0x40_0fff, 1<<20)
	if werr != nil || !slices.Equal(walked, all[1:3]) {
		t.Fatalf("range walk: %+v, %v", walked, werr)
	}
	walk(0x8000_1000, 0x8000_1000, 1<<20)
	if werr != nil || !slices.Equal(walked, all[3:4]) {
		t.Fatalf("inside a superpage: %+v, %v", walked, werr)
	}
	// The budget: complete leaves below next, ErrWalkBudget, next where
	// it stopped; walking on from next finds the rest.
	walk(0, 1<<48-1, 512+512+2) // the level-4 table, a level-3, and two level-2 entries
	if !errors.Is(werr, vtd.ErrWalkBudget) || next == 0 {
		t.Fatalf("a walk over budget: next %#x, err %v", next, werr)
	}
	got := walked
	for _, w := range got {
		if w.IOVA >= next {
			t.Fatalf("a leaf at %#x reported at or beyond next %#x", w.IOVA, next)
		}
	}
	for errors.Is(werr, vtd.ErrWalkBudget) {
		walk(next, 1<<48-1, 1024)
		got = append(got, walked...)
	}
	if werr != nil || !slices.Equal(got, all) {
		t.Fatalf("resumed walks: %+v, %v", got, werr)
	}
	// Aliased tables: every level-2 entry of a level-3 table at one
	// level-1 table that maps all its entries: 512*512 leaves, far more
	// than any budget lets through.
	alias1 := g.alloc()
	for i := range uint64(512) {
		g.memW64(alias1+i*8, 0x10_0000|pRW)
	}
	alias2 := g.alloc()
	for i := range uint64(512) {
		g.memW64(alias2+i*8, alias1|pRW)
	}
	g.memW64(l3b+5*8, alias2|pRW)
	n := 0
	p.after = func(ev vtd.Invalidation) {
		next, werr = ev.Tables.Walk(ev.Tables.Context(sid), 0, 1<<48-1, 100_000, func(vtd.Mapping) { n++ })
	}
	g.invalidatePage(domain, 0, 0)
	if !errors.Is(werr, vtd.ErrWalkBudget) || n >= 100_000 {
		t.Fatalf("aliased tables: %d leaves, err %v", n, werr)
	}
	// Not translated: nothing to walk.
	p.after = func(ev vtd.Invalidation) {
		next, werr = ev.Tables.Walk(vtd.DeviceContext{Mode: vtd.ContextIdentity}, 0, 1<<48-1, 10, func(vtd.Mapping) { n++ })
	}
	n = 0
	g.invalidatePage(domain, 0, 0)
	if n != 0 || werr != nil {
		t.Fatalf("identity walk: %d leaves, %v", n, werr)
	}
}
