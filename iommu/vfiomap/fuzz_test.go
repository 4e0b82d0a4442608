package vfiomap_test

import (
	"testing"

	"github.com/viovmm/vio/iommu/vfiomap"
)

// FuzzFollower drives a guest through a random sequence of what a guest
// does to a device behind the vIOMMU: map and unmap 4 KiB pages and 2 MiB
// superpages (inside RAM or not, invalidated as caching mode requires),
// change tables without invalidating, flush domains or everything, attach
// the device to a domain, give it a pass-through context, detach it, turn
// translation off and on, and write garbage into its tables. After every
// step the container must map exactly what the device may reach (once the
// guest has invalidated what it changed), never more than the guest's RAM,
// and no host call may fail. Once garbage is in the tables the guest's
// model no longer says what is mapped; the unit's own translation does,
// and after each full replay every host mapping is checked against it.
func FuzzFollower(f *testing.F) {
	f.Add([]byte{6, 1, 0, 0, 0, 0, 5, 7, 2, 1, 2, 1, 3, 1, 0, 1, 5, 7, 0, 0})
	f.Add([]byte{6, 2, 0, 0, 0, 2, 1, 1, 20, 0, 3, 1, 9, 9, 3, 4, 1, 0, 0, 0, 8, 0, 0, 0, 0, 8, 0, 0, 0, 0})
	f.Add([]byte{7, 0, 0, 0, 0, 6, 1, 0, 0, 0, 0, 1, 5, 3, 1, 1, 1, 5, 3, 0, 9, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		g := newGuest(t, vfiomap.Config{})
		g.setRoot()
		g.translation(true)
		te, ctx, did := true, "none", uint16(0)
		dirty := map[uint16]bool{}
		garbage := false
		for len(ops) >= 5 && len(ops) <= 5*64 {
			op, a, b, c, d := ops[0]%11, uint64(ops[1]), uint64(ops[2]), uint64(ops[3]), uint64(ops[4])
			ops = ops[5:]
			dom := uint16(1 + a%2)
			iova := (b%64)*kib4 + (c>>6)*(1<<32) // some high in the 48-bit space
			var gpa uint64
			switch c % 4 {
			case 0, 1:
				gpa = (d % 64) * kib4 * 97 % low // low RAM
			case 2:
				gpa = highBase + (d%64)*kib4*13%highSize
			case 3:
				gpa = low - 2*kib4 + d*kib4 // over the end of low RAM
			}
			gpa &^= kib4 - 1
			switch op {
			case 0:
				g.dmaMap(dom, iova, gpa, 1+d%4, 1+c%3)
			case 1:
				g.dmaUnmap(dom, iova, 1+d%4)
			case 2:
				sp := uint64(1<<30) + (b%4)*mib2
				g.leaf(dom, sp, (d%20)*mib2, mib2, uint64(c%4))
				g.psi(dom, sp, 512)
			case 3:
				g.leaf(dom, iova, gpa, kib4, 1+c%3) // no invalidation
				dirty[dom] = true
			case 4:
				g.iotlb(2, dom, 0, 0)
				delete(dirty, dom)
			case 5:
				g.iotlb(1, 0, 0, 0)
				clear(dirty)
			case 6:
				g.attach(dom)
				ctx, did = "dom", dom
				delete(dirty, dom)
			case 7:
				g.setContext(sid, dom, 2, 0, true)
				g.ccmd(3, 0, sid, 0)
				ctx = "pt"
			case 8:
				te = !te
				g.translation(te)
				if te && ctx == "dom" {
					delete(dirty, did) // the replay at TE on reads the tables
				}
			case 9:
				g.setContext(sid, 0, 0, 0, false)
				g.ccmd(3, 0, sid, 0)
				ctx = "none"
			case 10:
				// Garbage in some table page (or a context), then a
				// global flush.
				n := (g.next - tables) / 8
				at := tables + (a<<16|b<<8|c)%n*8
				v := d * 0x0101_0101_0101_0101 & (1<<52 - 1) // reserved bits, mostly
				if a&1 != 0 {
					// An entry at a page of RAM, maybe one of the tables
					// (aliasing), maybe a superpage, maybe misaligned.
					v = (b<<8|c)%(low/kib4)*kib4 | (b&1)*(tables+(c%16)*kib4) | d&0x83
				}
				g.memW64(at, v)
				g.iotlb(1, 0, 0, 0)
				clear(dirty)
				garbage = true
			}
			s := g.f.Stats()
			if s.Errors != 0 || s.Truncated != 0 {
				t.Fatalf("op %d: host calls failed or a walk was cut short: %+v (%v)", op, s, g.f.Err())
			}
			if s.Bytes != g.c.Bytes() || s.Bytes > g.mem.Size() {
				t.Fatalf("op %d: follower counts %d bytes, host maps %d (RAM %d)", op, s.Bytes, g.c.Bytes(), g.mem.Size())
			}
			switch {
			case garbage:
				// Only once no domain has changes it never invalidated:
				// until then the host may keep either translation, as
				// hardware may (one input flushed domain 1 while domain
				// 2, the device's, still held an uninvalidated leaf).
				if (op == 4 || op == 5 || op == 10) && len(dirty) == 0 {
					g.mustMatchUnit(t)
				}
			case !te || ctx == "pt":
				g.mustHost("identity", g.identityPages())
			case ctx == "none":
				g.mustHost("blocked", none())
			case !dirty[did]:
				g.mustDomain("translated", did)
			}
		}
	})
}

// mustMatchUnit checks every host page against the unit's own translation
// for the device (right after a global or domain flush, so the unit reads
// its tables): the same guest page, read allowed exactly where the host
// allows it, write likewise.
func (g *guest) mustMatchUnit(t *testing.T) {
	t.Helper()
	view := g.u.DMA(sid)
	for iova, p := range g.host() {
		s, rerr := view.Slice(iova, kib4)
		w, werr := view.SliceForWrite(iova, kib4)
		if (rerr == nil) != (p.Rights&1 != 0) || (werr == nil) != (p.Rights&2 != 0) {
			t.Fatalf("host maps %#x with rights %d; the unit: read %v, write %v", iova, p.Rights, rerr, werr)
		}
		for _, b := range [][]byte{s, w} {
			if b != nil && !g.isGPA(b, p.GPA) {
				t.Fatalf("host maps %#x to %#x, the unit elsewhere", iova, p.GPA)
			}
		}
	}
}

// isGPA reports whether b starts at guest physical address gpa. (The
// slices a view hands out are capped at their length, so unlike
// vfiomaptest this cannot find the address from the capacity.)
func (g *guest) isGPA(b []byte, gpa uint64) bool {
	for _, r := range g.mem.Regions() {
		if gpa >= r.GPA && gpa-r.GPA < r.Size() {
			return &r.Data[gpa-r.GPA] == &b[0]
		}
	}
	return false
}
