// Package tokenbucket is a policing token bucket: a request that finds
// too few tokens is refused at once rather than delayed. Network ports
// use it (a frame that would exceed the rate is dropped, as a switch's
// policer does); block/throttle's buckets delay requests instead and keep
// their own state, with the same Size/RefillTime meaning as Config.
package tokenbucket

import (
	"fmt"
	"sync"
	"time"
)

// Config is a bucket of Size tokens that refills at Size tokens per
// RefillTime, continuously, and starts full. The zero Config is no limit.
type Config struct {
	Size       int64
	RefillTime time.Duration
}

// Limited reports whether c limits anything.
func (c Config) Limited() bool { return c.Size > 0 }

// Validate checks c, with one sentence for what is wrong.
func (c Config) Validate() error {
	switch {
	case c.Size < 0:
		return fmt.Errorf("token bucket size %d is negative", c.Size)
	case c.Size > 0 && c.RefillTime <= 0:
		return fmt.Errorf("a token bucket of %d tokens needs a refill time above zero", c.Size)
	}
	return nil
}

// PerSecond returns a bucket for rate tokens a second that allows bursts
// of burst tokens (at least one second's worth divided by ten, so a
// policer on a fast link does not refuse every other frame).
func PerSecond(rate, burst int64) Config {
	if rate <= 0 {
		return Config{}
	}
	if burst < rate/10 {
		burst = max(rate/10, 1)
	}
	// Size tokens refill in Size/rate seconds.
	return Config{Size: burst, RefillTime: time.Duration(float64(burst) / float64(rate) * float64(time.Second))}
}

// Bucket is a running bucket, safe for concurrent use.
type Bucket struct {
	mu     sync.Mutex // guards the fields below
	cfg    Config
	rate   float64 // tokens per nanosecond
	tokens float64
	last   time.Time
}

// New returns a full bucket with configuration c (which must be valid).
func New(c Config, now time.Time) *Bucket {
	b := &Bucket{}
	b.Reset(c, now)
	return b
}

// Reset reconfigures the bucket and fills it.
func (b *Bucket) Reset(c Config, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.cfg, b.last = c, now
	b.rate, b.tokens = 0, 0
	if c.Limited() {
		b.rate = float64(c.Size) / float64(c.RefillTime.Nanoseconds())
		b.tokens = float64(c.Size)
	}
}

// Allow takes n tokens and reports true if the bucket holds them at now;
// otherwise it takes nothing and reports false. A request larger than the
// bucket is allowed only when the bucket is full, and empties it: the
// long-run rate holds whatever the request sizes. Times that go backwards
// refill nothing.
func (b *Bucket) Allow(n int64, now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.cfg.Limited() {
		return true
	}
	if dt := now.Sub(b.last); dt > 0 {
		b.tokens = min(b.tokens+float64(dt.Nanoseconds())*b.rate, float64(b.cfg.Size))
		b.last = now
	}
	want := float64(min(n, b.cfg.Size))
	if b.tokens+1e-6 < want {
		return false
	}
	b.tokens = max(b.tokens-float64(n), 0)
	return true
}
