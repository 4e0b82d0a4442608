package mclock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Dispatcher runs a Scheduler on one goroutine for callers that do not
// have a loop of their own: it hands a request to Serve whenever fewer
// than Outstanding are in flight (the device's queue depth, so the
// device, not the dispatcher's queue, sets the pace) and, when only
// limits hold requests back, sleeps on a timer until the time the
// scheduler names. It never polls.
//
// The scheduler must run on the wall clock (Config.Now nil or time.Now),
// since the dispatcher's timer does.
type Dispatcher[C comparable, T any] struct {
	serve       func(Request[C, T])
	outstanding int
	wake        chan struct{} // a token: something changed

	mu       sync.Mutex // guards the scheduler and inflight
	s        *Scheduler[C, T]
	inflight int
}

// NewDispatcher returns a dispatcher over s. serve is called on the
// dispatcher's goroutine, one request at a time, and should only start
// the I/O: each request it is given must be followed, when it completes,
// by one call to Done (which serve may make itself).
func NewDispatcher[C comparable, T any](s *Scheduler[C, T], outstanding int, serve func(Request[C, T])) (*Dispatcher[C, T], error) {
	if outstanding < 1 {
		return nil, fmt.Errorf("%w: %d outstanding requests would never dispatch; give the device's queue depth, at least 1", ErrInvalid, outstanding)
	}
	if serve == nil {
		return nil, errors.New("mclock: a dispatcher needs a serve function")
	}
	return &Dispatcher[C, T]{s: s, serve: serve, outstanding: outstanding, wake: make(chan struct{}, 1)}, nil
}

func (d *Dispatcher[C, T]) poke() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// Enqueue is Scheduler.Enqueue, safe for concurrent use.
func (d *Dispatcher[C, T]) Enqueue(id C, size int64, payload T) error {
	return d.EnqueueDistributed(id, size, payload, Distributed{})
}

// EnqueueDistributed is Scheduler.EnqueueDistributed, safe for
// concurrent use.
func (d *Dispatcher[C, T]) EnqueueDistributed(id C, size int64, payload T, dist Distributed) error {
	d.mu.Lock()
	err := d.s.EnqueueDistributed(id, size, payload, dist)
	d.mu.Unlock()
	if err == nil {
		d.poke()
	}
	return err
}

// Done reports that a request given to serve has completed.
func (d *Dispatcher[C, T]) Done() {
	d.mu.Lock()
	if d.inflight > 0 {
		d.inflight--
	}
	d.mu.Unlock()
	d.poke()
}

// Do runs fn on the scheduler under the dispatcher's lock (to change
// parameters, add or remove clients, read statistics) and wakes the
// dispatcher, since a change may let a request go.
func (d *Dispatcher[C, T]) Do(fn func(*Scheduler[C, T]) error) error {
	d.mu.Lock()
	err := fn(d.s)
	d.mu.Unlock()
	d.poke()
	return err
}

// Run dispatches until ctx is done, then returns ctx's error. Requests
// still queued stay in the scheduler.
func (d *Dispatcher[C, T]) Run(ctx context.Context) error {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var batch []Request[C, T]
	for {
		batch = batch[:0]
		var next time.Time
		d.mu.Lock()
		for d.inflight < d.outstanding {
			req, ok, n := d.s.Dequeue()
			if !ok {
				next = n
				break
			}
			d.inflight++
			batch = append(batch, req)
		}
		full := d.inflight >= d.outstanding
		d.mu.Unlock()
		for i := range batch {
			d.serve(batch[i])
			batch[i] = Request[C, T]{} // drop the payload reference
		}
		var tick <-chan time.Time
		if !full && !next.IsZero() {
			timer.Reset(time.Until(next))
			tick = timer.C
		}
		select {
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-d.wake:
		case <-tick:
		}
		timer.Stop()
	}
}
