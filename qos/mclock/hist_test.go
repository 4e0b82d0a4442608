package mclock

import (
	"math"
	"testing"
)

// TestHistogramBuckets: every value lands in a bucket whose middle is
// within 1/16 of it, bucket indexes grow with the value and stay in the
// array, up to the largest uint64.
func TestHistogramBuckets(t *testing.T) {
	prev := -1
	check := func(v uint64) {
		i := histIndex(v)
		if i < 0 || i >= histBuckets {
			t.Fatalf("%d lands in bucket %d of %d", v, i, histBuckets)
		}
		if i < prev {
			t.Fatalf("%d lands in bucket %d, below the bucket of a smaller value (%d)", v, i, prev)
		}
		prev = i
		if mid := histMid(i); math.Abs(float64(mid)-float64(v)) > float64(v)/16 {
			t.Fatalf("%d lands in a bucket whose middle is %d", v, mid)
		}
	}
	for v := uint64(0); v < 100000; v++ {
		check(v)
	}
	for v := uint64(100000); v < math.MaxUint64/2; v += v/4 + 1 {
		check(v)
	}
	check(math.MaxUint64)

	var h histogram
	for v := uint64(1); v <= 1000; v++ {
		h.record(v * 1000)
	}
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999, 1} {
		exact := math.Ceil(q*1000) * 1000
		if got := float64(h.quantile(q)); math.Abs(got-exact) > exact/16 {
			t.Errorf("quantile %v: %v, exact %v", q, got, exact)
		}
	}
	if (&histogram{}).quantile(0.5) != 0 {
		t.Error("an empty histogram has a median")
	}
}
