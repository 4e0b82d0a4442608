package vfiomap_test

import (
	"testing"

	"github.com/viovmm/vio/iommu/vfiomap"
)

// BenchmarkStrictIO is one I/O of a guest in strict mode with the host
// following it: map a 2-page buffer and invalidate, unmap it and
// invalidate, with 1000 other buffers mapped. It includes the guest's
// register writes and table updates and the container double's books,
// not the host's ioctls.
func BenchmarkStrictIO(b *testing.B) {
	g := newGuest(b, vfiomap.Config{})
	g.setRoot()
	g.translation(true)
	g.attach(1)
	for i := range uint64(1000) {
		g.dmaMap(1, 0x1000_0000+2*i*kib4, 0x10_0000+2*i*kib4, 1, pRW)
	}
	b.ResetTimer()
	for range b.N {
		g.dmaMap(1, 0x4000, 0x80_0000, 2, pRW)
		g.dmaUnmap(1, 0x4000, 2)
	}
	b.StopTimer()
	if s := g.f.Stats(); s.Mappings != 1000 || s.Errors != 0 {
		b.Fatalf("stats: %+v", s)
	}
}
