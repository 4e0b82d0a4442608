// Package e1000test has test doubles for devices/e1000: a Clock whose time
// moves only when the test says so.
package e1000test

import (
	"sort"
	"sync"
	"time"

	"github.com/viovmm/vio/devices/e1000"
)

// Clock is a manual e1000.Clock. Timers fire, on the goroutine calling
// Advance, when Advance moves the time to or past their deadline.
type Clock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*timer
}

var _ e1000.Clock = (*Clock)(nil)

// NewClock returns a clock at an arbitrary fixed time.
func NewClock() *Clock { return &Clock{now: time.Unix(1_000_000, 0)} }

type timer struct {
	c       *Clock
	when    time.Time
	f       func()
	stopped bool
}

// Now implements e1000.Clock.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// AfterFunc implements e1000.Clock.
func (c *Clock) AfterFunc(d time.Duration, f func()) e1000.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &timer{c: c, when: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return t
}

// Stop implements e1000.Timer.
func (t *timer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := !t.stopped
	t.stopped = true
	for i, x := range t.c.timers {
		if x == t {
			t.c.timers = append(t.c.timers[:i], t.c.timers[i+1:]...)
			return was
		}
	}
	return false
}

// Pending returns the number of timers not yet fired or stopped.
func (c *Clock) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// Advance moves the time forward by d, firing due timers in deadline
// order, each with the clock's time set to its deadline.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	end := c.now.Add(d)
	for {
		sort.SliceStable(c.timers, func(i, j int) bool { return c.timers[i].when.Before(c.timers[j].when) })
		if len(c.timers) == 0 || c.timers[0].when.After(end) {
			break
		}
		t := c.timers[0]
		c.timers = c.timers[1:]
		t.stopped = true
		if t.when.After(c.now) {
			c.now = t.when
		}
		c.mu.Unlock()
		t.f()
		c.mu.Lock()
	}
	c.now = end
	c.mu.Unlock()
}
