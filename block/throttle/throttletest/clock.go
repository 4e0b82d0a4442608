// Package throttletest provides a fake throttle.Clock whose time moves
// only when a test says so.
package throttletest

import (
	"sort"
	"sync"
	"time"

	"github.com/viovmm/vio/block/throttle"
)

// Clock is a fake clock. Timers fire during Advance, in order of their
// deadlines, each callback run synchronously (not in its own goroutine, as
// time.AfterFunc would) so that a test knows every effect of Advance has
// happened when it returns.
type Clock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*timer
	seq    int
}

var _ throttle.Clock = (*Clock)(nil)

type timer struct {
	c       *Clock
	at      time.Time
	seq     int
	f       func()
	stopped bool
}

// New returns a clock set to an arbitrary fixed moment.
func New() *Clock { return &Clock{now: time.Unix(1_000_000, 0)} }

func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *Clock) AfterFunc(d time.Duration, f func()) throttle.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	t := &timer{c: c, at: c.now.Add(d), seq: c.seq, f: f}
	c.timers = append(c.timers, t)
	return t
}

func (t *timer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := !t.stopped
	t.stopped = true
	return was
}

// Pending returns the number of timers not yet fired or stopped.
func (c *Clock) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, t := range c.timers {
		if !t.stopped {
			n++
		}
	}
	return n
}

// Advance moves time forward by d, firing each timer whose deadline is
// reached at its deadline (time stands at the deadline while it runs).
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	end := c.now.Add(d)
	for {
		sort.Slice(c.timers, func(i, j int) bool {
			a, b := c.timers[i], c.timers[j]
			if !a.at.Equal(b.at) {
				return a.at.Before(b.at)
			}
			return a.seq < b.seq
		})
		var next *timer
		for i, t := range c.timers {
			if t.stopped {
				continue
			}
			if t.at.After(end) {
				break
			}
			next = t
			c.timers = append(c.timers[:i], c.timers[i+1:]...)
			break
		}
		if next == nil {
			break
		}
		next.stopped = true
		if next.at.After(c.now) {
			c.now = next.at
		}
		c.mu.Unlock()
		next.f()
		c.mu.Lock()
	}
	c.now = end
	live := c.timers[:0]
	for _, t := range c.timers {
		if !t.stopped {
			live = append(live, t)
		}
	}
	c.timers = live
	c.mu.Unlock()
}
