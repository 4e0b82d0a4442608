// Package ringpoll decides how long a device goroutine polls a virtqueue's
// available ring after a batch, with the driver's notifications still
// disabled, before it enables them again and sleeps.
//
// Why poll: a guest that gets a completion often submits its next request
// within microseconds. A device that is asleep then needs a notification,
// which is a VM exit for the guest and a thread wake-up for the host; a
// device still looking at the ring sees the request without either. Polling
// costs a host CPU for as long as it lasts, so it must pay: the adaptive
// policy (after KVM's halt polling) grows the window while new work comes
// soon after the device gave up, and drops it to nothing as soon as work
// comes later than the longest window, so an idle guest costs at most one
// window per idle period.
//
// A Window is not safe for concurrent use: it belongs to the goroutine
// that serves the queue.
package ringpoll

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
	// Off never polls: the device sleeps right after each batch.
	Off Mode = iota
	// Adaptive polls for a window that follows how soon work comes.
	Adaptive
	// Fixed always polls for Config.Window.
	Fixed
)

const (
	// DefaultMax is Adaptive's longest window: above the few tens of
	// microseconds a guest takes from a completion to its next request,
	// and short next to a disk's service time.
	DefaultMax = 64 * time.Microsecond
	// MaxWindow bounds any window: a longer poll is a busy loop, not a
	// poll.
	MaxWindow = time.Millisecond
	// start is the window Adaptive grows to from nothing.
	start = 4 * time.Microsecond
)

// Config is a polling policy.
type Config struct {
	Mode Mode
	// Window is Fixed's poll time, or Adaptive's longest window (default
	// DefaultMax).
	Window time.Duration
}

// ErrConfig reports a policy that cannot be used.
var ErrConfig = errors.New("bad ring polling policy")

// Parse reads a policy as users write it: "off", "adaptive" (optionally
// ":MAX", the longest window, such as "adaptive:100us"), or a fixed poll
// time in microseconds ("50", or as a duration, "50us").
func Parse(s string) (Config, error) {
	mode, bound, hasBound := strings.Cut(s, ":")
	var c Config
	switch mode {
	case "", "off":
		if hasBound {
			return Config{}, fmt.Errorf("%w: %q: off takes no time", ErrConfig, s)
		}
		return c, nil
	case "adaptive", "on":
		c.Mode = Adaptive
		if hasBound {
			d, ok := micros(bound)
			if !ok {
				return Config{}, fmt.Errorf("%w: %q: the longest window after ':' must be a time from 1us to %v, such as 100us", ErrConfig, s, MaxWindow)
			}
			c.Window = d
		}
	default:
		d, ok := micros(s)
		if !ok {
			return Config{}, fmt.Errorf("%w: %q is not off, adaptive or a poll time in microseconds from 1 to %d (such as 50)", ErrConfig, s, MaxWindow/time.Microsecond)
		}
		c.Mode, c.Window = Fixed, d
	}
	return c, c.Validate()
}

// micros reads a whole number of microseconds or a duration, within
// (0, MaxWindow].
func micros(s string) (time.Duration, bool) {
	var d time.Duration
	if n, err := strconv.Atoi(s); err == nil {
		if n < 1 || n > int(MaxWindow/time.Microsecond) {
			return 0, false
		}
		d = time.Duration(n) * time.Microsecond
	} else if d, err = time.ParseDuration(s); err != nil {
		return 0, false
	}
	return d, d > 0 && d <= MaxWindow
}

// Validate checks a policy built in code.
func (c Config) Validate() error {
	switch {
	case c.Mode < Off || c.Mode > Fixed:
		return fmt.Errorf("%w: unknown mode %d", ErrConfig, c.Mode)
	case c.Mode == Fixed && c.Window <= 0:
		return fmt.Errorf("%w: a fixed poll needs a time", ErrConfig)
	case c.Window < 0 || c.Window > MaxWindow:
		return fmt.Errorf("%w: window %v (want up to %v)", ErrConfig, c.Window, MaxWindow)
	}
	return nil
}

// String is the policy in Parse's form.
func (c Config) String() string {
	switch c.Mode {
	case Off:
		return "off"
	case Fixed:
		return c.Window.String()
	}
	if c.Window > 0 {
		return "adaptive:" + c.Window.String()
	}
	return "adaptive"
}

// Window is one queue's policy in action.
type Window struct {
	mode     Mode
	max, cur time.Duration
}

// New returns a Window for c, which must be valid.
func New(c Config) *Window {
	w := &Window{mode: c.Mode, max: c.Window}
	switch c.Mode {
	case Adaptive:
		if w.max == 0 {
			w.max = DefaultMax
		}
	case Fixed:
		w.cur = c.Window
	}
	return w
}

// Next is how long to poll after the batch that just ended; 0 means do
// not poll.
func (w *Window) Next() time.Duration { return w.cur }

// Woke tells an adaptive Window that new work came d after the end of the
// batch that polling (if any) followed, too late for the poll. Work that
// comes within the longest window grows it; work that comes later says
// the guest is not keeping the device busy, and polling stops until it
// does again.
func (w *Window) Woke(d time.Duration) {
	if w.mode != Adaptive || d <= w.cur {
		return
	}
	if d > w.max {
		w.cur = 0
		return
	}
	w.cur = min(w.max, max(start, 2*w.cur))
}
