// Package qos shares one disk among several clients (the VMs a storage
// daemon serves) through one mClock scheduler (package qos/mclock): each
// client has a reservation, a weight and a limit, and every request of
// every client waits in the scheduler until it is its turn, so that the
// reservations hold, the rest of the disk's capacity is split by weight
// and the limits hold, whatever the disk's capacity is at the moment.
//
// A Shared owns the scheduler and its dispatcher for one disk; Disk
// returns, for one client, a block.Backend over that disk whose requests
// go through the scheduler. The dispatcher keeps at most Depth requests
// on the disk at once (the disk's queue depth): the disk, not the
// scheduler, sets the pace, and the scheduler decides whose request
// takes each free slot.
//
// Ordering: a client's requests leave the scheduler in the order they
// came (one queue a client), and a client's Flush waits until every
// write, discard and write-zeroes of that client that started before it
// has completed, and holds back the ones that start after it until it
// is done; so a flush is never reordered ahead of a write it must cover,
// however the scheduler interleaves the clients.
package qos

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/filter"
	"github.com/viovmm/vio/qos/mclock"
)

// ErrClosed is returned by requests of a closed client view, and by a
// closed Shared; it matches block.ErrClosed.
var ErrClosed = fmt.Errorf("qos: %w", block.ErrClosed)

// DefaultDepth is the number of requests on the disk at once when Config
// gives none: enough to keep a file or an SSD busy, few enough that the
// scheduler, not the disk's queue, decides the order.
const DefaultDepth = 16

// Config configures a Shared.
type Config struct {
	// Depth bounds the requests on the disk at once; 0 is DefaultDepth.
	Depth int
	// Cost turns a request's size into cost units; the zero model costs
	// every request 1, so rates are IOPS.
	Cost mclock.CostModel
	// Sharing says what weights share (mclock.ShareSpare by default).
	Sharing mclock.Sharing
	// LimitTolerance is how late a limited client's request may leave
	// and still be made up later (mclock.Config.LimitTolerance); 0 is
	// DefaultLimitTolerance.
	LimitTolerance time.Duration
}

// DefaultLimitTolerance is the limit tolerance when Config gives none.
// A request its limit lets go waits for a free slot on the disk and for
// its turn among the others: on a disk of 100 IOPS and a depth of 16
// that is tens of milliseconds, and mclock's default of 10 ms lost so
// much of it that a client held at 20/s got 15/s. The price: over any
// window a client may get Limit × 0.1 s more than its limit, two
// requests at 20/s.
const DefaultLimitTolerance = 100 * time.Millisecond

// ticket is a request waiting in the scheduler. state goes from waiting
// to dispatched (the dispatcher) or to cancelled (its Disk, on Drain or
// Close), once.
type ticket struct {
	state atomic.Int32
	ready chan struct{} // closed when dispatched
}

const (
	waiting int32 = iota
	dispatched
	cancelled
)

// Shared is one disk shared by clients through one scheduler. Its
// methods are safe for concurrent use.
type Shared struct {
	child block.Backend
	disp  *mclock.Dispatcher[string, *ticket]
	stop  context.CancelFunc
	done  chan struct{}

	mu      sync.Mutex
	clients []string // in the order they were added
	closed  bool
}

// NewShared starts a scheduler in front of child. The caller keeps
// owning child: Close stops the scheduler and leaves child open.
func NewShared(child block.Backend, cfg Config) (*Shared, error) {
	if cfg.Depth == 0 {
		cfg.Depth = DefaultDepth
	}
	if cfg.LimitTolerance == 0 {
		cfg.LimitTolerance = DefaultLimitTolerance
	}
	sched, err := mclock.New[string, *ticket](mclock.Config{Cost: cfg.Cost, Sharing: cfg.Sharing, LimitTolerance: cfg.LimitTolerance})
	if err != nil {
		return nil, fmt.Errorf("qos: %w", err)
	}
	s := &Shared{child: child, done: make(chan struct{})}
	s.disp, err = mclock.NewDispatcher(sched, cfg.Depth, s.serve)
	if err != nil {
		return nil, fmt.Errorf("qos: %w", err)
	}
	ctx, stop := context.WithCancel(context.Background())
	s.stop = stop
	go func() {
		defer close(s.done)
		s.disp.Run(ctx)
	}()
	return s, nil
}

// serve runs on the dispatcher's goroutine: it lets the request's caller
// go, or gives the slot back at once when the caller gave up (drained).
func (s *Shared) serve(r mclock.Request[string, *ticket]) {
	t := r.Payload
	if t.state.CompareAndSwap(waiting, dispatched) {
		close(t.ready)
		return
	}
	s.disp.Done()
}

// SetClient adds a client or changes its parameters; a change applies at
// once, to the requests already waiting too.
func (s *Shared) SetClient(name string, p mclock.Params) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	err := s.disp.Do(func(sc *mclock.Scheduler[string, *ticket]) error { return sc.SetClient(name, p) })
	if err != nil {
		return err
	}
	if !slices.Contains(s.clients, name) {
		s.clients = append(s.clients, name)
	}
	return nil
}

// Clients returns the clients' names in the order they were added.
func (s *Shared) Clients() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.clients)
}

// Params returns a client's parameters.
func (s *Shared) Params(name string) (mclock.Params, error) {
	var p mclock.Params
	err := s.disp.Do(func(sc *mclock.Scheduler[string, *ticket]) (err error) {
		p, err = sc.Params(name)
		return err
	})
	return p, err
}

// Stats returns a client's counters: requests, the rate achieved, the
// time its limit held it back and how long its requests waited here.
func (s *Shared) Stats(name string) (mclock.Stats, error) {
	var st mclock.Stats
	err := s.disp.Do(func(sc *mclock.Scheduler[string, *ticket]) (err error) {
		st, err = sc.Stats(name)
		return err
	})
	return st, err
}

// Close stops the scheduler. Requests still waiting never leave it, so
// call Close after the front-ends have stopped (a Disk's Close or Drain
// releases its waiting requests with an error).
func (s *Shared) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.closed = true
	s.mu.Unlock()
	s.stop()
	<-s.done
	return nil
}

// Disk returns a back-end over the shared disk whose requests are
// scheduled as the client's, which must have been added with SetClient.
// Several Disks may be one client's (a VM's reconnections, or its
// several connections): they share its rates. Closing the Disk releases
// its waiting requests and leaves the shared disk open.
func (s *Shared) Disk(name string) (block.Backend, error) {
	if _, err := s.Params(name); err != nil {
		return nil, err
	}
	d := &Disk{Base: filter.Base{Child: s.child}, s: s, name: name, waiting: make(map[*ticket]struct{})}
	return filter.View(d, filter.CapsOf(s.child)), nil
}

// Disk is one client's view of a Shared disk.
type Disk struct {
	filter.Base
	s    *Shared
	name string

	// order makes Flush a barrier: writes hold it shared from before
	// they are queued until they complete, a flush holds it alone.
	order sync.RWMutex

	mu       sync.Mutex
	waiting  map[*ticket]struct{}
	draining int
	closed   bool
}

var _ filter.Interposer = (*Disk)(nil)

// admit queues a request of size bytes and returns once the scheduler
// dispatches it; the caller then does the I/O and calls s.disp.Done.
func (d *Disk) admit(size int64) error {
	t := &ticket{ready: make(chan struct{})}
	d.mu.Lock()
	switch {
	case d.closed:
		d.mu.Unlock()
		return ErrClosed
	case d.draining > 0:
		d.mu.Unlock()
		return block.ErrDrained
	}
	d.waiting[t] = struct{}{}
	d.mu.Unlock()
	if err := d.s.disp.Enqueue(d.name, size, t); err != nil {
		d.forget(t)
		return fmt.Errorf("qos: client %s: %w", d.name, err)
	}
	<-t.ready
	d.forget(t)
	if t.state.Load() == cancelled {
		d.mu.Lock()
		closed := d.closed
		d.mu.Unlock()
		if closed {
			return ErrClosed
		}
		return block.ErrDrained
	}
	return nil
}

func (d *Disk) forget(t *ticket) {
	d.mu.Lock()
	delete(d.waiting, t)
	d.mu.Unlock()
}

// cancelWaiting releases every waiting request that the dispatcher has
// not taken yet. Called with d.mu held.
func (d *Disk) cancelWaiting() {
	for t := range d.waiting {
		if t.state.CompareAndSwap(waiting, cancelled) {
			close(t.ready)
		}
	}
}

// do runs one request through the scheduler.
func (d *Disk) do(size int64, write bool, io func() error) error {
	if write {
		d.order.RLock()
		defer d.order.RUnlock()
	}
	if err := d.admit(size); err != nil {
		return err
	}
	defer d.s.disp.Done()
	return io()
}

func (d *Disk) ReadAt(p []byte, off int64) (n int, err error) {
	err = d.do(int64(len(p)), false, func() (e error) { n, e = d.Child.ReadAt(p, off); return e })
	return n, err
}

func (d *Disk) WriteAt(p []byte, off int64) (n int, err error) {
	err = d.do(int64(len(p)), true, func() (e error) { n, e = d.Child.WriteAt(p, off); return e })
	return n, err
}

func (d *Disk) ReadvAt(bufs [][]byte, off int64) (n int, err error) {
	err = d.do(filter.Len(bufs), false, func() (e error) { n, e = block.ReadvAt(d.Child, bufs, off); return e })
	return n, err
}

func (d *Disk) WritevAt(bufs [][]byte, off int64) (n int, err error) {
	err = d.do(filter.Len(bufs), true, func() (e error) { n, e = block.WritevAt(d.Child, bufs, off); return e })
	return n, err
}

// Discard and WriteZeroes are writes to the scheduler (ordered before a
// later flush) that move no data: they cost one request.
func (d *Disk) Discard(off, n int64) error {
	return d.do(0, true, func() error { return d.Base.Discard(off, n) })
}

func (d *Disk) WriteZeroes(off, n int64, unmap bool) error {
	return d.do(0, true, func() error { return d.Base.WriteZeroes(off, n, unmap) })
}

// Flush waits for the client's writes that started before it, then
// takes its turn in the scheduler like any request.
func (d *Disk) Flush() error {
	d.order.Lock()
	defer d.order.Unlock()
	return d.do(0, false, d.Child.Flush)
}

// Resize is a control operation, not I/O: it is not scheduled.
func (d *Disk) Resize(size int64) error {
	if d.isClosed() {
		return ErrClosed
	}
	return d.Base.Resize(size)
}

func (d *Disk) isClosed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closed
}

// Drain fails the client's waiting requests with block.ErrDrained, and
// while drained its new ones, so that a device reset waits only for the
// requests already on the disk (at most the Shared's depth). It does not
// reach the shared disk: draining a throttle there would fail the other
// clients' requests too.
func (d *Disk) Drain(on bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if on {
		d.draining++
		if d.draining == 1 {
			d.cancelWaiting()
		}
	} else if d.draining > 0 {
		d.draining--
	}
}

// Close fails the client's waiting requests with ErrClosed and flushes
// the shared disk (the contract of Close), which stays open: its owner
// closes it.
func (d *Disk) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return ErrClosed
	}
	d.closed = true
	d.cancelWaiting()
	d.mu.Unlock()
	d.order.Lock() // the client's writes in progress complete first
	defer d.order.Unlock()
	return d.Child.Flush()
}
