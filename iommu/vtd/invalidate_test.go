package vtd_test

import (
	"testing"

	"github.com/viovmm/vio/iommu/vtd"
)

// invalidator is one way of issuing invalidations: the registers or the
// queue. Each method returns only once the unit reports completion.
type invalidator interface {
	context(gran int, did, s uint16, fm uint64)
	iotlb(gran int, did uint16, addr, am uint64)
}

type regInvalidator struct{ g *guest }

func (r regInvalidator) context(gran int, did, s uint16, fm uint64) {
	g := r.g
	g.w64(rCCMD, 1<<63|uint64(gran)<<61|fm<<32|uint64(s)<<16|uint64(did))
	if v := g.r64(rCCMD); v>>63 != 0 || v>>59&3 != uint64(gran) {
		g.t.Fatalf("CCMD after invalidation = %#x", v)
	}
}

func (r regInvalidator) iotlb(gran int, did uint16, addr, am uint64) {
	g := r.g
	if gran == 3 {
		g.w64(rIVA, addr|am)
	}
	g.w64(rIOTLB, 1<<63|uint64(gran)<<60|uint64(did)<<32)
	if v := g.r64(rIOTLB); v>>63 != 0 || v>>57&3 != uint64(gran) {
		g.t.Fatalf("IOTLB after invalidation = %#x", v)
	}
}

// queue is the guest's invalidation queue, used as Linux's
// qi_submit_sync does: the descriptors, then a wait descriptor with a
// status write, then IQT, then the status is checked.
type queue struct {
	g      *guest
	base   uint64
	tail   uint64
	size   uint64 // descriptors
	status uint64 // where wait descriptors write
	seq    uint32
}

func newQueue(g *guest) *queue {
	q := &queue{g: g, base: g.alloc(), size: 256, status: g.alloc()}
	g.w64(rIQT, 0)
	g.w64(rIQA, q.base) // QS 0: one page
	g.gcmd |= gQIE
	g.w32(rGCMD, g.gcmd)
	if g.r32(rGSTS)&gQIE == 0 {
		g.t.Fatal("QIES not set")
	}
	return q
}

func (q *queue) put(lo, hi uint64) {
	q.g.memW64(q.base+q.tail*16, lo)
	q.g.memW64(q.base+q.tail*16+8, hi)
	q.tail = (q.tail + 1) % q.size
}

func (q *queue) submit(descs ...[2]uint64) {
	g := q.g
	for _, d := range descs {
		q.put(d[0], d[1])
	}
	q.seq++
	q.put(uint64(q.seq)<<32|1<<5|5, q.status) // wait, status write
	g.w64(rIQT, q.tail<<4)
	if v, _ := g.mem.LoadUint32(q.status); v != q.seq {
		g.t.Fatalf("wait status = %d, want %d (FSTS %#x)", v, q.seq, g.r32(rFSTS))
	}
	if h := g.r64(rIQH); h != q.tail<<4 {
		g.t.Fatalf("IQH = %#x, IQT = %#x", h, q.tail<<4)
	}
}

func (q *queue) context(gran int, did, s uint16, fm uint64) {
	q.submit([2]uint64{fm<<48 | uint64(s)<<32 | uint64(did)<<16 | uint64(gran)<<4 | 1, 0})
}

func (q *queue) iotlb(gran int, did uint16, addr, am uint64) {
	q.submit([2]uint64{uint64(did)<<16 | uint64(gran)<<4 | 2, addr | am})
}

// forEachInvalidator runs f once with register-based and once with queued
// invalidation, each on a fresh guest.
func forEachInvalidator(t *testing.T, cfg vtd.Config, f func(t *testing.T, g *guest, inv invalidator)) {
	t.Run("registers", func(t *testing.T) {
		g := newGuest(t, cfg)
		f(t, g, regInvalidator{g})
	})
	t.Run("queue", func(t *testing.T) {
		g := newGuest(t, cfg)
		f(t, g, lazyQueue{g: g})
	})
}

// lazyQueue enables queued invalidation at first use (after setup has
// enabled translation, as Linux does).
type lazyQueue struct{ g *guest }

func (l lazyQueue) get() *queue {
	if l.g.queue == nil {
		l.g.queue = newQueue(l.g)
	}
	return l.g.queue
}

func (l lazyQueue) context(gran int, did, s uint16, fm uint64) { l.get().context(gran, did, s, fm) }
func (l lazyQueue) iotlb(gran int, did uint16, addr, am uint64) {
	l.get().iotlb(gran, did, addr, am)
}

// TestIOTLBCaches checks that the cache really caches (a changed table is
// not seen before the matching invalidation) and that each invalidation
// kind drops exactly what it names.
func TestIOTLBCaches(t *testing.T) {
	forEachInvalidator(t, vtd.Config{}, func(t *testing.T, g *guest, inv invalidator) {
		pt := g.setup()
		const a, b, c = 0x10_0000, 0x10_1000, 0x10_2000
		g.fill(a, 0xa)
		g.fill(b, 0xb)
		g.fill(c, 0xc)
		leaf := g.mapPage(pt, 4, 0x4000, a, kib4, pRW)
		other := g.mapPage(pt, 4, 0x6000, a, kib4, pRW)
		g.mustByte(sid, 0x4000, 0xa)
		g.mustByte(sid, 0x6000, 0xa)

		// Remap 0x4000 to b (and 0x6000 to c) without invalidating: the
		// cached translations still go to a.
		g.memW64(leaf, b|pRW)
		g.memW64(other, c|pRW)
		hits := g.u.Stats().IOTLBHits
		g.mustByte(sid, 0x4000, 0xa)
		if g.u.Stats().IOTLBHits == hits {
			t.Fatal("a repeated translation missed the IOTLB")
		}
		view := g.u.DMA(sid)
		gen := view.Generation()

		// Page-selective for another page, and for another domain: still a.
		inv.iotlb(3, domain, 0x5000, 0)
		g.mustByte(sid, 0x4000, 0xa)
		inv.iotlb(3, domain+1, 0x4000, 0)
		g.mustByte(sid, 0x4000, 0xa)
		if view.Generation() <= gen {
			t.Fatal("an invalidation did not move the generation")
		}
		// The matching page: b. 0x6000 is still cached.
		inv.iotlb(3, domain, 0x4000, 0)
		g.mustByte(sid, 0x4000, 0xb)
		g.mustByte(sid, 0x6000, 0xa)
		// AM=1 at 0x6000 covers 0x6000-0x7fff; AM=2 at 0x4000 would too.
		inv.iotlb(3, domain, 0x6000, 1)
		g.mustByte(sid, 0x6000, 0xc)

		// Domain-selective: other domain keeps, own domain drops.
		g.memW64(leaf, a|pRW)
		inv.iotlb(2, domain+1, 0, 0)
		g.mustByte(sid, 0x4000, 0xb)
		inv.iotlb(2, domain, 0, 0)
		g.mustByte(sid, 0x4000, 0xa)

		// Global.
		g.memW64(leaf, c|pRW)
		g.mustByte(sid, 0x4000, 0xa)
		inv.iotlb(1, 0, 0, 0)
		g.mustByte(sid, 0x4000, 0xc)

		// Unmap: usable until invalidated, a fault after.
		g.memW64(leaf, 0)
		g.mustByte(sid, 0x4000, 0xc)
		inv.iotlb(3, domain, 0x4000, 0)
		_, err := g.read(sid, 0x4000, 1)
		wantFault(t, err, vtd.FaultRead)
		_, err = g.views[sid].ReadAt(make([]byte, 1), 0x4000)
		wantFault(t, err, vtd.FaultRead)
	})
}

func TestIOTLBSuperpageInvalidation(t *testing.T) {
	forEachInvalidator(t, vtd.Config{}, func(t *testing.T, g *guest, inv invalidator) {
		pt := g.setup()
		leaf := g.mapPage(pt, 4, 0x4000_0000, 0x20_0000, mib2, pRW)
		g.fill(0x20_0000+0x5000, 0x5)
		g.fill(0x40_0000+0x5000, 0x6)
		g.mustByte(sid, 0x4000_5000, 0x5)
		g.memW64(leaf, 0x40_0000|pRW|pPS)
		// A page-selective invalidation of any 4 KiB inside the 2 MiB
		// page drops the superpage's translation.
		inv.iotlb(3, domain, 0x4010_0000, 0)
		g.mustByte(sid, 0x4000_5000, 0x6)
	})
}

func TestContextCache(t *testing.T) {
	forEachInvalidator(t, vtd.Config{}, func(t *testing.T, g *guest, inv invalidator) {
		g.setRoot()
		pt1, pt2 := g.alloc(), g.alloc()
		g.setContext(sid, domain, 0, 2, pt1, false)
		g.enable()
		g.mapPage(pt1, 4, 0x1000, 0x10_0000, kib4, pRW)
		g.mapPage(pt2, 4, 0x1000, 0x10_1000, kib4, pRW)
		g.fill(0x10_0000, 1)
		g.fill(0x10_1000, 2)
		g.mustByte(sid, 0x1000, 1)

		// Move the device to domain+1 on pt2. Until the context cache is
		// invalidated, the old context (and its IOTLB entries) is used.
		g.setContext(sid, domain+1, 0, 2, pt2, false)
		g.mustByte(sid, 0x1000, 1)
		inv.context(3, domain, sid+1, 0) // another device: no effect
		g.mustByte(sid, 0x1000, 1)
		inv.context(2, domain+1, 0, 0) // the new domain is not cached yet
		g.mustByte(sid, 0x1000, 1)
		inv.context(3, domain, sid, 0)
		g.mustByte(sid, 0x1000, 2)

		// Domain-selective, then device-selective with a function mask.
		g.setContext(sid, domain, 0, 2, pt1, false)
		g.mustByte(sid, 0x1000, 2)
		inv.context(2, domain+1, 0, 0)
		g.mustByte(sid, 0x1000, 1)
		g.setContext(sid, domain+1, 0, 2, pt2, false)
		inv.context(3, domain, sid|3, 1) // FM 1 masks function bit 2 only: 0x1b != 0x18
		g.mustByte(sid, 0x1000, 1)
		inv.context(3, domain, sid|7, 3) // FM 3 masks all function bits
		g.mustByte(sid, 0x1000, 2)

		// Global.
		g.setContext(sid, domain, 0, 2, pt1, false)
		g.mustByte(sid, 0x1000, 2)
		inv.context(1, 0, 0, 0)
		g.mustByte(sid, 0x1000, 1)
	})
}

func TestRegisterInvalidationErrors(t *testing.T) {
	g := newGuest(t, vtd.Config{})
	g.setup()
	// Granularity 0 is invalid: reported as actual granularity 0, and
	// the command still completes (ICC/IVT clear).
	g.w64(rCCMD, 1<<63)
	if v := g.r64(rCCMD); v>>63 != 0 || v>>59&3 != 0 {
		t.Fatalf("CCMD after an invalid request = %#x", v)
	}
	g.w64(rIOTLB, 1<<63)
	if v := g.r64(rIOTLB); v>>63 != 0 || v>>57&3 != 0 {
		t.Fatalf("IOTLB after an invalid request = %#x", v)
	}
	// AM beyond MAMV: done domain-selective, which the guest reads back.
	g.w64(rIVA, vtd.MaxAddressMask+1)
	g.w64(rIOTLB, 1<<63|3<<60|domain<<32)
	if v := g.r64(rIOTLB); v>>57&3 != 2 {
		t.Fatalf("IOTLB after a too-large AM = %#x, want IAIG domain", v)
	}
	// Split 32-bit writes: the command acts on the high dword.
	g.w32(rIOTLB, 0)
	g.w32(rIOTLB+4, 1<<31|1<<28)
	if v := g.r64(rIOTLB); v>>63 != 0 || v>>57&3 != 1 {
		t.Fatalf("IOTLB after a split global flush = %#x", v)
	}
}

func TestQueuedInvalidation(t *testing.T) {
	g := newGuest(t, vtd.Config{})
	g.setup()
	q := newQueue(g)
	g.w32(rIEDATA, 0x66)
	g.w32(rIEADDR, 0xfee0_2000)
	g.w32(rIECTL, 0)

	// A wait descriptor with IF: ICS.IWC and the invalidation event.
	q.put(1<<4|5, 0)
	g.w64(rIQT, q.tail<<4)
	if g.r32(rICS) != 1 || len(g.msis) != 1 || g.msis[0] != (msi{0xfee0_2000, 0x66}) {
		t.Fatalf("after IF: ICS %#x, MSIs %+v", g.r32(rICS), g.msis)
	}
	// Another while IWC is still set is not a new condition.
	q.put(1<<4|5, 0)
	g.w64(rIQT, q.tail<<4)
	if len(g.msis) != 1 {
		t.Fatal("IF with IWC already set sent another message")
	}
	g.w32(rICS, 1)
	// Masked: IP, and the message on unmask.
	g.w32(rIECTL, 1<<31)
	q.put(1<<4|5, 0)
	g.w64(rIQT, q.tail<<4)
	if g.r32(rIECTL) != 1<<31|1<<30 || len(g.msis) != 1 {
		t.Fatalf("masked IF: IECTL %#x, MSIs %d", g.r32(rIECTL), len(g.msis))
	}
	g.w32(rIECTL, 0)
	if len(g.msis) != 2 || g.r32(rIECTL) != 0 {
		t.Fatalf("unmasking IECTL: %#x, MSIs %d", g.r32(rIECTL), len(g.msis))
	}
	g.w32(rICS, 1)

	// The queue wraps around.
	for i := 0; i < 300; i++ {
		q.iotlb(1, 0, 0, 0)
	}
}

// TestQueueError follows Linux's qi_check_fault: on IQE it overwrites the
// bad descriptor with its wait descriptor and clears IQE, and the queue
// resumes.
func TestQueueError(t *testing.T) {
	g := newGuest(t, vtd.Config{})
	g.setup()
	q := newQueue(g)
	g.w32(rFEDATA, 0x77)
	g.w32(rFECTL, 0)

	bad := q.tail
	q.put(3, 0) // device-TLB invalidation: not supported
	q.put(1<<5|5|42<<32, q.status)
	g.w64(rIQT, q.tail<<4)
	if g.r32(rFSTS)&(1<<4) == 0 {
		t.Fatal("IQE not set for an invalid descriptor")
	}
	if h := g.r64(rIQH); h != bad<<4 {
		t.Fatalf("IQH = %#x, want the bad descriptor %#x", h, bad<<4)
	}
	if v, _ := g.mem.LoadUint32(q.status); v != 0 {
		t.Fatal("a descriptor after the bad one was processed")
	}
	if len(g.msis) != 1 || g.msis[0].data != 0x77 {
		t.Fatalf("IQE fault event: %+v", g.msis)
	}
	g.memW64(q.base+bad*16, 1<<5|5|41<<32)
	g.memW64(q.base+bad*16+8, q.status)
	g.w32(rFSTS, 1<<4)
	if v, _ := g.mem.LoadUint32(q.status); v != 42 {
		t.Fatalf("after clearing IQE the queue did not resume: status %d", v)
	}
	if g.r64(rIQH) != g.r64(rIQT) {
		t.Fatal("queue not drained")
	}

	// Reserved bits make a descriptor invalid; so does a tail beyond the
	// queue.
	for _, d := range [][2]uint64{
		{2 | 1<<4 | 1<<8, 0},     // IOTLB with reserved bit 8
		{2 | 1<<4, 1 << 8},       // IOTLB with reserved bit 72
		{5 | 1<<5, q.status | 1}, // wait with a misaligned status address
		{1 | 1<<4, 1},            // context with a non-zero high quadword
		{1, 0},                   // context with granularity 0
		{0, 0},                   // type 0
		{4, 0},                   // interrupt entry cache: no IR
	} {
		g.w32(rFSTS, 1<<4)
		h := g.r64(rIQH)
		q.put(d[0], d[1])
		g.w64(rIQT, q.tail<<4)
		if g.r32(rFSTS)&(1<<4) == 0 || g.r64(rIQH) != h {
			t.Fatalf("descriptor %#x %#x: FSTS %#x IQH %#x", d[0], d[1], g.r32(rFSTS), g.r64(rIQH))
		}
		// Skip it, as a recovering driver would.
		g.memW64(q.base+h, 5)
		g.memW64(q.base+h+8, 0)
	}
	g.w32(rFSTS, 1<<4)
	g.w64(rIQT, 0x1000<<4) // beyond a 256-entry queue
	if g.r32(rFSTS)&(1<<4) == 0 {
		t.Fatal("a tail beyond the queue is not an error")
	}
}

// recorder is a Notifier that keeps what it is told, with the lookups the
// contract lets it make during the call.
type recorder struct {
	evs  []vtd.Invalidation
	maps []vtd.Mapping
}

func (r *recorder) Invalidated(ev vtd.Invalidation) {
	r.evs = append(r.evs, ev)
	if ev.Kind == vtd.InvalidateMap {
		for a := ev.IOVA; a < ev.IOVA+ev.Size; {
			m, err := ev.Lookup(a)
			if err != nil {
				a += kib4
				continue
			}
			r.maps = append(r.maps, m)
			a = m.IOVA + m.Size
		}
	}
}

func TestCachingModeNotifier(t *testing.T) {
	rec := &recorder{}
	g := newGuest(t, vtd.Config{CachingMode: true, Notifier: rec})
	g.setRoot()
	g.enable()
	// Linux in caching mode: make the context present, then a
	// device-selective context invalidation and a domain IOTLB flush.
	pt := g.alloc()
	g.setContext(sid, domain, 0, 2, pt, false)
	inv := regInvalidator{g}
	inv.context(3, 0, sid, 0)
	inv.iotlb(2, domain, 0, 0)
	// SRTP and TE each change translation as a whole; then the context
	// and the domain flush.
	kinds := []vtd.InvalidationKind{vtd.TranslationChanged, vtd.TranslationChanged, vtd.InvalidateContextDevice, vtd.InvalidateDomain}
	if len(rec.evs) != len(kinds) {
		t.Fatalf("events after the context setup: %+v", rec.evs)
	}
	for i, k := range kinds {
		if rec.evs[i].Kind != k {
			t.Fatalf("event %d after the context setup is %v, want %v", i, rec.evs[i].Kind, k)
		}
	}
	if ev := rec.evs[2]; ev.SourceID != sid || ev.FunctionMask != 0 {
		t.Fatalf("context event: %+v", ev)
	}
	if ev := rec.evs[3]; ev.Domain != domain {
		t.Fatalf("domain event: %+v", ev)
	}
	// Map two pages, then the map-time page-selective flush.
	g.mapPage(pt, 4, 0x8000, 0x30_0000, kib4, pR)
	g.mapPage(pt, 4, 0x9000, 0x31_0000, kib4, pRW)
	inv.iotlb(3, domain, 0x8000, 1)
	ev := rec.evs[len(rec.evs)-1]
	if ev.Kind != vtd.InvalidateMap || ev.IOVA != 0x8000 || ev.Size != 0x2000 {
		t.Fatalf("map-time event: %+v", ev)
	}
	want := []vtd.Mapping{
		{IOVA: 0x8000, GPA: 0x30_0000, Size: kib4, Read: true},
		{IOVA: 0x9000, GPA: 0x31_0000, Size: kib4, Read: true, Write: true},
	}
	if len(rec.maps) != 2 || rec.maps[0] != want[0] || rec.maps[1] != want[1] {
		t.Fatalf("mappings looked up: %+v", rec.maps)
	}
	// Unmap, then the unmap-time flush.
	g.memW64(pt+0, 0) // drop the whole level-4 entry: both pages go
	inv.iotlb(3, domain, 0x8000, 1)
	if ev := rec.evs[len(rec.evs)-1]; ev.Kind != vtd.InvalidateUnmap || ev.IOVA != 0x8000 || ev.Size != 0x2000 {
		t.Fatalf("unmap-time event: %+v", ev)
	}
	inv.iotlb(1, 0, 0, 0)
	if ev := rec.evs[len(rec.evs)-1]; ev.Kind != vtd.InvalidateAll {
		t.Fatalf("global event: %+v", ev)
	}
	// Queued invalidations notify too, before the wait completes.
	q := newQueue(g)
	n := len(rec.evs)
	q.iotlb(3, domain, 0x8000, 0)
	if len(rec.evs) != n+1 {
		t.Fatal("a queued invalidation was not notified")
	}
}
