package vtd_test

import (
	"errors"
	"sync"
	"testing"

	"github.com/viovmm/vio/iommu/vtd"
	"github.com/viovmm/vio/memory"
)

// TestConcurrentUse runs device threads translating while a vCPU remaps
// and invalidates (run it with -race). Every read sees one of the two
// pages the IOVA was ever mapped to, or a fault while it was unmapped.
func TestConcurrentUse(t *testing.T) {
	g := newGuest(t, vtd.Config{IOTLBSize: 16})
	pt := g.setup()
	g.fill(0x10_0000, 1)
	g.fill(0x10_1000, 2)
	leaf := g.mapPage(pt, 4, 0x4000, 0x10_0000, kib4, pRW)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	stop := make(chan struct{})
	for d := 0; d < 4; d++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v := g.u.DMA(sid)
			p := make([]byte, 1)
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, err := v.ReadAt(p, 0x4000)
				if err != nil && !errors.Is(err, memory.ErrNotMapped) || err == nil && p[0] != 1 && p[0] != 2 {
					errs <- err
					return
				}
				v.Generation()
			}
		}()
	}
	for i := 0; i < 300; i++ {
		switch i % 3 {
		case 0:
			g.memW64(leaf, 0x10_1000|pRW)
		case 1:
			g.memW64(leaf, 0)
		case 2:
			g.memW64(leaf, 0x10_0000|pRW)
		}
		g.invalidatePage(domain, 0x4000, 0)
		g.w32(rFRCD+12, 1<<31) // keep a fault record free
		g.w32(rFSTS, 1)
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("device thread: %v", err)
	}
}

// BenchmarkReadIOTLBHit is the translated fast path: a 64-byte read whose
// translation is cached, against the identity (no IOMMU) read.
func BenchmarkReadIOTLBHit(b *testing.B) {
	g := newGuest(b, vtd.Config{})
	pt := g.setup()
	g.mapPage(pt, 4, 0x4000, 0x10_0000, kib4, pRW)
	v := g.u.DMA(sid)
	p := make([]byte, 64)
	b.Run("vtd", func(b *testing.B) {
		for b.Loop() {
			if _, err := v.ReadAt(p, 0x4000); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("identity", func(b *testing.B) {
		for b.Loop() {
			if _, err := g.mem.ReadAt(p, 0x10_0000); err != nil {
				b.Fatal(err)
			}
		}
	})
}
