// Package coalesce decides when a device that has completed requests
// interrupts the guest: at once, or a little later together with the
// completions that follow. It is virtual interrupt coalescing after vIC
// (Ahmad, Gulati, Mashtizadeh, USENIX ATC 2011): the delivery ratio comes
// from the number of commands in flight (CIF). With few commands in flight
// every completion interrupts at once, so a guest waiting on one request
// (QD1) never waits for a timer; with many in flight the device has work
// queued anyway, so completions can ride on one interrupt without leaving
// it idle, and the guest takes one exit per batch instead of one per
// request. A timer bounds how long any completion waits.
//
// A Coalescer is not safe for concurrent use: it belongs to the goroutine
// that pushes a queue's used entries.
package coalesce

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Mode selects the policy.
type Mode int

const (
	// Off interrupts for every batch of completions, as before.
	Off Mode = iota
	// Adaptive coalesces by commands in flight (vIC).
	Adaptive
	// Fixed interrupts once per Config.Count completions (or MaxDelay).
	Fixed
)

// Defaults.
const (
	// DefaultMaxDelay bounds the wait of a completion for its interrupt.
	// It is well below a disk's service time and above the gap between
	// completions at depth on fast storage.
	DefaultMaxDelay = 500 * time.Microsecond
	// DefaultMinInFlight is the depth below which Adaptive never delays.
	DefaultMinInFlight = 4
	// perInterrupt is the share of the commands in flight Adaptive lets
	// complete before it interrupts: with 1/4, three quarters of the
	// queue stay on the device while the guest has not heard yet.
	perInterrupt = 4
	// maxDelayLimit bounds a configured MaxDelay: a longer wait would be
	// a stall, not coalescing.
	maxDelayLimit = 100 * time.Millisecond
)

// Config is a coalescing policy.
type Config struct {
	Mode Mode
	// Count is Fixed's completions per interrupt (2 or more).
	Count int
	// MaxDelay bounds how long a completion waits (default
	// DefaultMaxDelay).
	MaxDelay time.Duration
	// MinInFlight is the depth below which Adaptive interrupts at once
	// (default DefaultMinInFlight).
	MinInFlight int
}

// ErrConfig reports a policy that cannot be used.
var ErrConfig = errors.New("bad interrupt coalescing policy")

// Parse reads a policy as users write it: "off", "adaptive", or a number
// of completions per interrupt; each may be followed by ":" and the longest
// delay ("adaptive:200us", "8:1ms").
func Parse(s string) (Config, error) {
	mode, delay, hasDelay := strings.Cut(s, ":")
	var c Config
	switch mode {
	case "", "off":
		c.Mode = Off
	case "adaptive", "on":
		c.Mode = Adaptive
	default:
		n, err := strconv.Atoi(mode)
		if err != nil || n < 2 || n > 1024 {
			return Config{}, fmt.Errorf("%w: %q is not off, adaptive or a number of completions per interrupt from 2 to 1024", ErrConfig, s)
		}
		c.Mode, c.Count = Fixed, n
	}
	if hasDelay && c.Mode == Off {
		return Config{}, fmt.Errorf("%w: %q: off takes no delay", ErrConfig, s)
	}
	if hasDelay {
		d, err := time.ParseDuration(delay)
		if err != nil || d <= 0 || d > maxDelayLimit {
			return Config{}, fmt.Errorf("%w: %q: the delay after ':' must be a duration from 1us to %v, such as 500us", ErrConfig, s, maxDelayLimit)
		}
		c.MaxDelay = d
	}
	return c, c.Validate()
}

// Validate checks a policy built in code.
func (c Config) Validate() error {
	switch {
	case c.Mode < Off || c.Mode > Fixed:
		return fmt.Errorf("%w: unknown mode %d", ErrConfig, c.Mode)
	case c.Mode == Fixed && (c.Count < 2 || c.Count > 1024):
		return fmt.Errorf("%w: %d completions per interrupt (want 2 to 1024)", ErrConfig, c.Count)
	case c.MaxDelay < 0 || c.MaxDelay > maxDelayLimit:
		return fmt.Errorf("%w: delay %v (want up to %v)", ErrConfig, c.MaxDelay, maxDelayLimit)
	case c.MinInFlight < 0:
		return fmt.Errorf("%w: negative depth %d", ErrConfig, c.MinInFlight)
	}
	return nil
}

// String is the policy in Parse's form.
func (c Config) String() string {
	var s string
	switch c.Mode {
	case Off:
		return "off"
	case Adaptive:
		s = "adaptive"
	default:
		s = strconv.Itoa(c.Count)
	}
	if c.MaxDelay > 0 {
		s += ":" + c.MaxDelay.String()
	}
	return s
}

// Stats count what coalescing did.
type Stats struct {
	// Interrupts the Coalescer asked for; Coalesced the completions that
	// waited for a later batch's interrupt instead of causing their own
	// (completions pushed together always share one).
	Interrupts, Coalesced uint64
	// Delay is the total time completions waited for their interrupt.
	Delay time.Duration
}

// Coalescer applies a policy to one queue.
type Coalescer struct {
	cfg       Config
	pending   int // completions pushed, not yet interrupted for
	last      int // of which the latest Completed pushed
	pushedSum time.Duration
	first     time.Time // when the oldest pending completion was pushed
	stats     Stats
}

// New returns a Coalescer for c, which must be valid.
func New(c Config) *Coalescer {
	if c.MaxDelay == 0 {
		c.MaxDelay = DefaultMaxDelay
	}
	if c.MinInFlight == 0 {
		c.MinInFlight = DefaultMinInFlight
	}
	return &Coalescer{cfg: c}
}

// Completed records n completions pushed to the used ring at now, with
// inFlight commands still outstanding on the device. It reports whether to
// interrupt now; if not, the caller interrupts at Deadline at the latest
// (or earlier, when a later Completed says so) and then calls Interrupted.
func (c *Coalescer) Completed(n, inFlight int, now time.Time) bool {
	if n <= 0 {
		return false
	}
	if c.pending == 0 {
		c.first = now
	}
	c.pending += n
	c.last = n
	c.pushedSum += time.Duration(n) * now.Sub(c.first)
	var want int
	switch c.cfg.Mode {
	case Off:
		return true
	case Fixed:
		want = c.cfg.Count
	case Adaptive:
		if inFlight < c.cfg.MinInFlight {
			return true
		}
		want = max(2, (inFlight+c.pending)/perInterrupt)
	}
	if inFlight == 0 {
		// Nothing more will complete: waiting would only add latency.
		return true
	}
	return c.pending >= want
}

// Pending reports whether completions wait for an interrupt.
func (c *Coalescer) Pending() bool { return c.pending > 0 }

// Deadline is when the oldest pending completion must be interrupted for.
func (c *Coalescer) Deadline() time.Time { return c.first.Add(c.cfg.MaxDelay) }

// Interrupted records that the guest was interrupted at now for every
// pending completion, and returns what that interrupt adds to Stats (for
// callers that keep their counters elsewhere).
func (c *Coalescer) Interrupted(now time.Time) Stats {
	if c.pending == 0 {
		return Stats{}
	}
	// Each completion waited from its push to now: pending × (now −
	// first) less how long after first each was pushed.
	d := Stats{
		Interrupts: 1,
		Coalesced:  uint64(c.pending - c.last),
		Delay:      time.Duration(c.pending)*now.Sub(c.first) - c.pushedSum,
	}
	c.stats.Interrupts += d.Interrupts
	c.stats.Coalesced += d.Coalesced
	c.stats.Delay += d.Delay
	c.pending, c.pushedSum = 0, 0
	return d
}

// Stats returns the counters so far.
func (c *Coalescer) Stats() Stats { return c.stats }
