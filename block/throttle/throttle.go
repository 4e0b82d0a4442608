// Package throttle is a rate-limiting interposer: token buckets for bytes
// per second and requests per second (see Bucket for the semantics, which
// are Firecracker's), shared by the disks of a Group.
//
// Requests wait in arrival order: a request that has to wait queues behind
// the ones already waiting even if it would fit, so a stream of small
// requests cannot starve a large one. Nothing polls or sleeps: the head of
// the queue arms one timer for the moment the buckets will hold what it
// needs, and its expiry admits every request that then fits.
package throttle

import (
	"fmt"
	"sync"
	"time"

	"github.com/viovmm/vio/block"
)

// Clock is the time source of a Group: time.Now and time.AfterFunc in
// production, a fake in tests (package throttletest).
type Clock interface {
	Now() time.Time
	// AfterFunc calls f in its own goroutine once d has passed.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a pending AfterFunc; Stop cancels it if it has not fired.
type Timer interface {
	Stop() bool
}

// RealClock is the system's clock.
type RealClock struct{}

func (RealClock) Now() time.Time { return time.Now() }
func (RealClock) AfterFunc(d time.Duration, f func()) Timer {
	return time.AfterFunc(d, f)
}

// Group is a pair of buckets shared by one or more disks: their requests
// together are limited, in one queue. A disk throttled on its own has a
// group of its own. All methods are safe for concurrent use.
type Group struct {
	name  string
	clock Clock

	mu     sync.Mutex
	limits Limits
	bw     bucket
	ops    bucket
	queue  []*waiter // FIFO; queue[0] owns the timer
	timer  Timer
	gen    uint64 // invalidates the callbacks of stopped timers
	stats  Stats
	// onQueue, if set (by tests), is called with the queue length each
	// time a request starts waiting, with mu held.
	onQueue func(n int)
}

// Stats count a group's requests since it was made.
type Stats struct {
	Admitted uint64 // requests that went on to the back-end
	Waited   uint64 // of those, requests that had to wait
	Drained  uint64 // requests failed by Drain or Close while waiting
	Queued   int    // requests waiting now
}

type waiter struct {
	d     *Disk
	bytes int64
	done  chan error // buffered: the group never blocks on a waiter
}

// NewGroup returns a group with limits l. name is only for messages.
func NewGroup(name string, l Limits, clock Clock) (*Group, error) {
	if err := l.Validate(); err != nil {
		return nil, fmt.Errorf("throttle group %q: %w", name, err)
	}
	if clock == nil {
		clock = RealClock{}
	}
	now := clock.Now()
	return &Group{name: name, clock: clock, limits: l, bw: newBucket(l.Bandwidth, now), ops: newBucket(l.Ops, now)}, nil
}

// Name returns the group's name.
func (g *Group) Name() string { return g.name }

// Limits returns the current limits.
func (g *Group) Limits() Limits {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.limits
}

// SetLimits changes the limits at run time. Waiting requests stay queued,
// in order, and are admitted under the new limits; the tokens in each
// bucket are kept, up to the new size, and so is what is left of the
// one-time burst, up to the new burst.
func (g *Group) SetLimits(l Limits) error {
	if err := l.Validate(); err != nil {
		return fmt.Errorf("throttle group %q: %w", g.name, err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.clock.Now()
	g.bw.refill(now)
	g.ops.refill(now)
	g.bw.reconfigure(l.Bandwidth, now)
	g.ops.reconfigure(l.Ops, now)
	g.limits = l
	g.admit(now)
	return nil
}

// Stats returns the group's counters.
func (g *Group) Stats() Stats {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.stats
	s.Queued = len(g.queue)
	return s
}

func (g *Group) fits(bytes int64) bool {
	return g.bw.missing(bytes) == 0 && g.ops.missing(1) == 0
}

func (g *Group) take(bytes int64) {
	g.bw.take(bytes)
	g.ops.take(1)
	g.stats.Admitted++
}

// acquire returns when a request of bytes from d may go, or with an error
// when d is drained or closed while it waits.
func (g *Group) acquire(d *Disk, bytes int64) error {
	g.mu.Lock()
	if d.closed {
		g.mu.Unlock()
		return ErrClosed
	}
	now := g.clock.Now()
	g.bw.refill(now)
	g.ops.refill(now)
	if len(g.queue) == 0 && g.fits(bytes) {
		g.take(bytes)
		g.mu.Unlock()
		return nil
	}
	if d.draining > 0 {
		g.stats.Drained++
		g.mu.Unlock()
		return ErrDrained
	}
	w := &waiter{d: d, bytes: bytes, done: make(chan error, 1)}
	g.queue = append(g.queue, w)
	if len(g.queue) == 1 {
		g.arm(now)
	}
	if g.onQueue != nil {
		g.onQueue(len(g.queue))
	}
	g.mu.Unlock()
	return <-w.done
}

// admit lets every request at the head of the queue go that fits now, and
// arms the timer for the next one. Called with mu held, buckets refilled.
func (g *Group) admit(now time.Time) {
	n := 0
	for _, w := range g.queue {
		if !g.fits(w.bytes) {
			break
		}
		g.take(w.bytes)
		g.stats.Waited++
		w.done <- nil
		n++
	}
	if n > 0 {
		clear(g.queue[:n])
		g.queue = g.queue[n:]
	}
	g.arm(now)
}

// arm sets the one timer for the head of the queue (or none when the queue
// is empty). Called with mu held.
func (g *Group) arm(now time.Time) {
	if g.timer != nil {
		g.timer.Stop()
		g.timer = nil
	}
	g.gen++
	if len(g.queue) == 0 {
		return
	}
	head := g.queue[0]
	d := max(g.bw.wait(g.bw.missing(head.bytes)), g.ops.wait(g.ops.missing(1)))
	gen := g.gen
	g.timer = g.clock.AfterFunc(d, func() { g.tick(gen) })
}

func (g *Group) tick(gen uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if gen != g.gen {
		return // a stopped timer that fired anyway
	}
	g.timer = nil
	now := g.clock.Now()
	g.bw.refill(now)
	g.ops.refill(now)
	g.admit(now)
}

// fail removes d's waiters from the queue with err. Called with mu held.
func (g *Group) fail(d *Disk, err error) {
	kept := g.queue[:0]
	for _, w := range g.queue {
		if w.d == d {
			w.done <- err
			g.stats.Drained++
			continue
		}
		kept = append(kept, w)
	}
	clear(g.queue[len(kept):])
	g.queue = kept
	// The head may have changed, or the new head may fit already.
	now := g.clock.Now()
	g.bw.refill(now)
	g.ops.refill(now)
	g.admit(now)
}

// Errors a throttled request can end with besides its back-end's.
var (
	// ErrDrained ends a request that was waiting (or would have had to
	// wait) while its disk was drained.
	ErrDrained = block.ErrDrained
	// ErrClosed ends a request that was waiting when its disk was closed,
	// and every request after.
	ErrClosed = block.ErrClosed
)
