package vtd

import (
	"math/rand/v2"
	"testing"
)

// scanDrop is dropRange's reference: every entry visited.
func scanDrop(t *iotlb, did uint16, start, last uint64) {
	for k := range t.m {
		if k.did == did && k.page <= last && start <= k.page+(1<<pageShift(int(k.level))-1) {
			t.del(k)
		}
	}
}

// filledIOTLB caches 4 KiB, 2 MiB and 1 GiB pages of two domains around
// base, some at the top of the address space.
func filledIOTLB(r *rand.Rand, base uint64) *iotlb {
	t := newIOTLB(1 << 16)
	for range 600 {
		level := 1 + r.IntN(3)
		if r.IntN(4) != 0 {
			level = 1
		}
		sh := pageShift(level)
		page := (base + r.Uint64N(64<<20)) >> sh << sh
		if r.IntN(8) == 0 {
			page = (^uint64(0) - r.Uint64N(8<<20)) >> sh << sh
		}
		t.put(iotlbKey{uint16(1 + r.IntN(2)), uint8(level), page}, iotlbEntry{gpa: page})
	}
	return t
}

// TestDropRangeProbes: the key-by-key path for small ranges drops exactly
// what a visit of every entry drops, superpages and the last pages of the
// address space included.
func TestDropRangeProbes(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		base := uint64(0x4000_0000)
		if i%3 == 0 {
			base = ^uint64(0) - 64<<20
		}
		a, b := filledIOTLB(rand.New(rand.NewPCG(uint64(i), 7)), base), filledIOTLB(rand.New(rand.NewPCG(uint64(i), 7)), base)
		am := uint(r.IntN(8))
		size := uint64(1) << (12 + am)
		start := (base + r.Uint64N(64<<20)) &^ (size - 1)
		if i%7 == 0 {
			start = ^uint64(0) &^ (size - 1) // the very last range
		}
		did := uint16(1 + r.IntN(2))
		a.dropRange(did, start, start+size-1)
		scanDrop(b, did, start, start+size-1)
		if len(a.m) != len(b.m) || a.levels != b.levels {
			t.Fatalf("case %d (start %#x, am %d): %d entries left, levels %v; want %d, %v", i, start, am, len(a.m), a.levels, len(b.m), b.levels)
		}
		for k := range b.m {
			if _, ok := a.m[k]; !ok {
				t.Fatalf("case %d: %+v dropped, should stay", i, k)
			}
		}
	}
}

// BenchmarkPageInvalidate is a strict-mode guest's invalidation of one
// 4 KiB page with a full IOTLB (4096 entries).
func BenchmarkPageInvalidate(b *testing.B) {
	t := newIOTLB(4096)
	for i := range uint64(4096) {
		t.put(iotlbKey{1, 1, i << 12}, iotlbEntry{gpa: i << 12})
	}
	b.Run("probe", func(b *testing.B) {
		i := uint64(0)
		for b.Loop() {
			p := i % 4096 << 12
			t.dropRange(1, p, p+0xfff)
			t.put(iotlbKey{1, 1, p}, iotlbEntry{gpa: p})
			i++
		}
	})
	b.Run("scan", func(b *testing.B) {
		i := uint64(0)
		for b.Loop() {
			p := i % 4096 << 12
			scanDrop(t, 1, p, p+0xfff)
			t.put(iotlbKey{1, 1, p}, iotlbEntry{gpa: p})
			i++
		}
	})
}
