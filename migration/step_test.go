package migration

import (
	"testing"
	"time"
)

func TestNextStep(t *testing.T) {
	o := Options{Downtime: 300 * time.Millisecond, MaxIterations: 5, Timeout: time.Minute}
	const mb = 1e6
	for _, tc := range []struct {
		done    int
		dirty   uint64
		bw      float64
		elapsed time.Duration
		o       Options
		want    step
		why     string
	}{
		// 100 MB/s moves 30 MB in 300 ms: 7324 pages fit, 7325 do not.
		{1, 7324, 100 * mb, time.Second, o, stepStopAndCopy, "converged"},
		{1, 7325, 100 * mb, time.Second, o, stepIterate, ""},
		{4, 7325, 100 * mb, time.Second, o, stepIterate, ""},
		{5, 7325, 100 * mb, time.Second, o, stepStopAndCopy, "iteration cap"},
		{2, 0, 0, time.Second, o, stepStopAndCopy, "converged"},
		{2, 1, 0, time.Second, o, stepIterate, ""}, // nothing measured yet
		{2, 1 << 20, 100 * mb, time.Minute, o, stepCancel, "timeout"},
		{2, 1 << 20, 100 * mb, time.Minute, Options{Downtime: o.Downtime, MaxIterations: 5, Timeout: time.Minute, OnTimeout: Ignore}, stepStopAndCopy, "timeout"},
		// Converged wins over the timeout: nothing is lost by finishing.
		{2, 10, 100 * mb, time.Hour, o, stepStopAndCopy, "converged"},
	} {
		got, why := nextStep(tc.done, tc.dirty, tc.bw, tc.elapsed, tc.o)
		if got != tc.want || why != tc.why {
			t.Errorf("nextStep(%d, %d pages, %.0f B/s, %v) = %v %q, want %v %q", tc.done, tc.dirty, tc.bw, tc.elapsed, got, why, tc.want, tc.why)
		}
	}
}

func TestAllPages(t *testing.T) {
	for _, tc := range []struct {
		pages uint64
		words int
		last  uint64
	}{{1, 1, 1}, {64, 1, ^uint64(0)}, {65, 2, 1}, {130, 3, 3}} {
		b := allPages(tc.pages)
		if len(b) != tc.words || b[len(b)-1] != tc.last {
			t.Errorf("allPages(%d) = %x", tc.pages, b)
		}
		if n := countPages([][]uint64{b}); n != tc.pages {
			t.Errorf("allPages(%d) has %d bits", tc.pages, n)
		}
	}
}
