// Package latency is a lock-free histogram of durations with fixed
// buckets, cheap enough for a device's request path (two atomic adds per
// observation). Readers take snapshots whenever they like; the metrics
// endpoint turns them into Prometheus histograms.
package latency

import (
	"sync/atomic"
	"time"
)

// Bounds are the buckets' upper bounds (inclusive), from what a request
// served from the host's page cache takes to what a stalled disk does.
// A last, unbounded bucket holds the rest.
var Bounds = [...]time.Duration{
	5 * time.Microsecond, 10 * time.Microsecond, 25 * time.Microsecond, 50 * time.Microsecond,
	100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond,
	10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second,
}

// Histogram counts observations by bucket. The zero value is empty and
// ready; it must not be copied after first use.
type Histogram struct {
	counts [len(Bounds) + 1]atomic.Uint64
	sum    atomic.Uint64 // nanoseconds
}

// Observe records one duration (a negative one counts as zero).
func (h *Histogram) Observe(d time.Duration) {
	d = max(d, 0)
	i := 0
	// A binary search would save a few compares; the linear scan stops
	// early for the fast requests that dominate.
	for i < len(Bounds) && d > Bounds[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sum.Add(uint64(d))
}

// Snapshot is a histogram's state at one moment: Counts[i] observations
// fell in bucket i (not cumulative; the last is above every bound).
type Snapshot struct {
	Counts [len(Bounds) + 1]uint64
	Sum    time.Duration
}

// Count is the number of observations.
func (s Snapshot) Count() uint64 {
	var n uint64
	for _, c := range s.Counts {
		n += c
	}
	return n
}

// Snapshot reads the histogram. Concurrent observations may be half
// counted (in a bucket and not yet in the sum): the error is one request.
func (h *Histogram) Snapshot() Snapshot {
	var s Snapshot
	for i := range h.counts {
		s.Counts[i] = h.counts[i].Load()
	}
	s.Sum = time.Duration(h.sum.Load())
	return s
}
