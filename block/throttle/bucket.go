package throttle

import (
	"fmt"
	"math"
	"time"
)

// Bucket configures one token bucket, with Firecracker's (and Cloud
// Hypervisor's) meaning: the bucket holds up to Size tokens and starts
// full; it refills at Size tokens per RefillTime, continuously; a request
// takes its tokens from it. OneTimeBurst tokens come on top, once: they are
// spent before the bucket's own and never come back.
//
// A request that needs more tokens than the bucket holds is not refused: it
// waits until the bucket is full, takes everything and leaves the bucket in
// debt, so the requests after it wait for the refill. Over time the rate is
// Size/RefillTime whatever the request sizes.
//
// The zero Bucket (Size 0) is no limit.
type Bucket struct {
	Size         int64
	OneTimeBurst int64
	RefillTime   time.Duration
}

// Limited reports whether b limits anything.
func (b Bucket) Limited() bool { return b.Size > 0 }

// Rate returns the sustained rate in tokens per second (0: no limit).
func (b Bucket) Rate() float64 {
	if !b.Limited() {
		return 0
	}
	return float64(b.Size) / b.RefillTime.Seconds()
}

func (b Bucket) validate(what string) error {
	switch {
	case b.Size < 0 || b.OneTimeBurst < 0:
		return fmt.Errorf("%s: size and one_time_burst must not be negative", what)
	case b.Size == 0 && b.OneTimeBurst != 0:
		return fmt.Errorf("%s: one_time_burst without a size: give the bucket a size (or drop the burst)", what)
	case b.Size > 0 && b.RefillTime <= 0:
		return fmt.Errorf("%s: a bucket with a size needs a refill_time above zero (milliseconds to refill it)", what)
	case b.RefillTime > 0 && b.Size == 0:
		return fmt.Errorf("%s: refill_time without a size: give the bucket a size", what)
	}
	return nil
}

// Limits are a throttle's two buckets: bytes and requests. A request
// costs its data length in bytes (0 for flush, discard and write zeroes,
// which move no data) and one op.
type Limits struct {
	Bandwidth Bucket // bytes
	Ops       Bucket // requests
}

// Validate checks the limits, with one sentence for what is wrong.
func (l Limits) Validate() error {
	if err := l.Bandwidth.validate("bandwidth bucket"); err != nil {
		return err
	}
	return l.Ops.validate("ops bucket")
}

// epsilon absorbs floating-point rounding: a request missing less than a
// millionth of a token goes.
const epsilon = 1e-6

// bucket is a Bucket's running state. Tokens are float64 so that refills
// over any interval are exact enough (53 bits) without overflow; budget may
// be negative (the debt of an oversized request).
type bucket struct {
	cfg    Bucket
	rate   float64 // tokens per nanosecond
	budget float64
	burst  float64 // what is left of OneTimeBurst
	last   time.Time
}

func newBucket(cfg Bucket, now time.Time) bucket {
	b := bucket{cfg: cfg, last: now}
	if cfg.Limited() {
		b.rate = float64(cfg.Size) / float64(cfg.RefillTime.Nanoseconds())
		b.budget = float64(cfg.Size)
		b.burst = float64(cfg.OneTimeBurst)
	}
	return b
}

// reconfigure switches to cfg keeping what the old state allows: no more
// tokens than the new size holds, no more burst than the new burst.
func (b *bucket) reconfigure(cfg Bucket, now time.Time) {
	old := *b
	*b = newBucket(cfg, now)
	if cfg.Limited() && old.cfg.Limited() {
		b.budget = min(old.budget, b.budget)
		b.burst = min(old.burst, b.burst)
	}
}

func (b *bucket) refill(now time.Time) {
	if !b.cfg.Limited() {
		return
	}
	if dt := now.Sub(b.last); dt > 0 {
		b.budget = min(b.budget+float64(dt.Nanoseconds())*b.rate, float64(b.cfg.Size))
		b.last = now
	}
}

// missing returns how many tokens must still come before a request of n
// tokens may go: it goes when the bucket holds n, or is full for a request
// larger than the bucket.
func (b *bucket) missing(n int64) float64 {
	if !b.cfg.Limited() {
		return 0
	}
	want := float64(min(n, b.cfg.Size))
	if m := want - (b.budget + b.burst); m > epsilon {
		return m
	}
	return 0
}

// wait returns how long the refill takes to bring m missing tokens.
func (b *bucket) wait(m float64) time.Duration {
	if m <= 0 {
		return 0
	}
	ns := math.Ceil(m / b.rate)
	if ns > math.MaxInt64/2 {
		return math.MaxInt64 / 2
	}
	return time.Duration(ns)
}

// take spends n tokens, the one-time burst first.
func (b *bucket) take(n int64) {
	if !b.cfg.Limited() {
		return
	}
	t := float64(n)
	fromBurst := min(t, b.burst)
	b.burst -= fromBurst
	b.budget -= t - fromBurst
}
