package mclock

import (
	"math"
	"math/bits"
	"time"
)

// Stats is a snapshot of one client's counters.
type Stats struct {
	Params Params
	Queued int

	// Requests and Cost served, and how they split between the phases.
	Requests, ReservationRequests, WeightRequests uint64
	Cost, ReservationCost, WeightCost             float64
	// Rejected counts requests refused because the queue was full.
	Rejected uint64

	// Since is when the client was added; AvgRate is Cost over the time
	// since then, Rate the cost served in the last whole RateWindow, per
	// second.
	Since   time.Time
	AvgRate float64
	Rate    float64

	// Throttled is the time the client had a request ready that only its
	// limit held back.
	Throttled time.Duration

	// Latency is the time requests spent queued here (enqueue to
	// dispatch).
	Latency Latency
}

// Latency summarises queueing times. Percentiles come from a log-linear
// histogram with 8 buckets per power of two, so each is within 1/16 of
// the true value; Max is exact.
type Latency struct {
	Count               uint64
	P50, P90, P99, P999 time.Duration
	Max                 time.Duration
}

// histBuckets covers 0 to 2^64 ns: 16 exact buckets for 0..15 ns, then 8
// a power of two.
const (
	histSubBits = 3
	histExact   = 1 << (histSubBits + 1)
	histBuckets = histExact + (64-histSubBits-1)*(1<<histSubBits)
)

// histogram is a fixed-size (about 4 KiB) latency histogram: its memory
// does not grow with the number of requests.
type histogram struct {
	counts [histBuckets]uint64
	n      uint64
	max    uint64
}

func histIndex(v uint64) int {
	if v < histExact {
		return int(v)
	}
	shift := bits.Len64(v) - (histSubBits + 1)
	mant := v >> uint(shift) // in [8, 16)
	return histExact + (shift-1)*(1<<histSubBits) + int(mant-(1<<histSubBits))
}

// histMid returns the middle of bucket i's range.
func histMid(i int) uint64 {
	if i < histExact {
		return uint64(i)
	}
	i -= histExact
	shift := uint(i>>histSubBits) + 1
	mant := uint64(i&(1<<histSubBits-1)) + 1<<histSubBits
	lo := mant << shift
	return lo + (uint64(1)<<shift)/2
}

func (h *histogram) record(ns uint64) {
	h.counts[histIndex(ns)]++
	h.n++
	h.max = max(h.max, ns)
}

// quantile returns the value below which a fraction q of the samples lie.
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = max(rank, 1)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return time.Duration(min(histMid(i), h.max, math.MaxInt64))
		}
	}
	return time.Duration(min(h.max, math.MaxInt64))
}

func (h *histogram) summary() Latency {
	return Latency{
		Count: h.n,
		P50:   h.quantile(0.50),
		P90:   h.quantile(0.90),
		P99:   h.quantile(0.99),
		P999:  h.quantile(0.999),
		Max:   time.Duration(min(h.max, math.MaxInt64)),
	}
}

// counters is what a client accumulates.
type counters struct {
	requests, resvRequests, weightRequests uint64
	cost, resvCost, weightCost             float64
	rejected                               uint64
	since                                  float64 // ns since epoch
	throttled                              float64 // ns
	winStart, winCost, lastRate            float64
	hist                                   histogram
}

// roll moves the rate window up to now (ns).
func (c *counters) roll(now, window float64) {
	if now < c.winStart+window {
		return
	}
	k := math.Floor((now - c.winStart) / window)
	if k == 1 {
		c.lastRate = c.winCost / (window / 1e9)
	} else {
		c.lastRate = 0 // the last whole window saw nothing
	}
	c.winStart += k * window
	c.winCost = 0
}
