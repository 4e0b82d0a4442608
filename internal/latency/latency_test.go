package latency

import (
	"sync"
	"testing"
	"time"
)

func TestBuckets(t *testing.T) {
	var h Histogram
	h.Observe(-time.Second)         // bucket 0
	h.Observe(5 * time.Microsecond) // bucket 0: bounds are inclusive
	h.Observe(6 * time.Microsecond) // bucket 1
	h.Observe(time.Millisecond)     // bucket 7
	h.Observe(time.Minute)          // the last bucket
	s := h.Snapshot()
	want := map[int]uint64{0: 2, 1: 1, 7: 1, len(Bounds): 1}
	for i, c := range s.Counts {
		if c != want[i] {
			t.Errorf("bucket %d: %d, want %d", i, c, want[i])
		}
	}
	if s.Count() != 5 {
		t.Errorf("count %d", s.Count())
	}
	if wantSum := 5*time.Microsecond + 6*time.Microsecond + time.Millisecond + time.Minute; s.Sum != wantSum {
		t.Errorf("sum %v, want %v", s.Sum, wantSum)
	}
	for i := 1; i < len(Bounds); i++ {
		if Bounds[i] <= Bounds[i-1] {
			t.Fatalf("bounds not increasing at %d", i)
		}
	}
}

func TestConcurrentObservers(t *testing.T) {
	var h Histogram
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1000 {
				h.Observe(time.Duration(g*1000+i) * time.Microsecond)
			}
		}()
	}
	wg.Wait()
	if n := h.Snapshot().Count(); n != 8000 {
		t.Fatalf("count %d, want 8000", n)
	}
}

func BenchmarkObserve(b *testing.B) {
	var h Histogram
	for i := 0; b.Loop(); i++ {
		h.Observe(time.Duration(i&1023) * time.Microsecond)
	}
}
