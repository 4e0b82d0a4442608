package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/irq"
	"github.com/viovmm/vio/virtio"
)

// eventFD is an eventfd the back-end signals (a ring's call or err
// descriptor). The front-end may replace it at any time, also while the
// ring's device signals it from another goroutine: the lock keeps a
// descriptor from being closed, and its number reused, under a write.
type eventFD struct {
	mu sync.RWMutex
	fd int // -1: none
}

var _ irq.Trigger = (*eventFD)(nil)

func newEventFD() *eventFD { return &eventFD{fd: -1} }

// Trigger implements irq.Trigger: add 1 to the eventfd. A counter at its
// maximum (EAGAIN on a non-blocking eventfd) already signals.
func (e *eventFD) Trigger() error {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.fd < 0 {
		return nil
	}
	var one [8]byte
	binary.LittleEndian.PutUint64(one[:], 1)
	if _, err := unix.Write(e.fd, one[:]); err != nil && !errors.Is(err, unix.EAGAIN) {
		return fmt.Errorf("vhostuser: signalling eventfd: %w", err)
	}
	return nil
}

// ErrNotEventFD reports a kick, call or err descriptor that is not an
// eventfd.
var ErrNotEventFD = errors.New("vhostuser: descriptor is not an eventfd")

// prepareEventFD checks that fd is an eventfd and makes it non-blocking.
// Anything else could stall the back-end: a pipe whose reader never reads
// blocks a write (the signalling ring's goroutine) once full, and a read
// from a descriptor the runtime cannot poll cannot be interrupted, so its
// reader could not be stopped. Non-blocking also keeps a write from
// blocking on an eventfd whose counter the front-end filled up.
// (O_NONBLOCK is shared with the front-end's copy; front-ends open their
// eventfds non-blocking, and for an eventfd it only matters at a full
// counter.)
func prepareEventFD(fd int) error {
	target, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return fmt.Errorf("vhostuser: inspecting a descriptor: %w", err)
	}
	if target != "anon_inode:[eventfd]" {
		return fmt.Errorf("%w (it is %s)", ErrNotEventFD, target)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return fmt.Errorf("vhostuser: eventfd: %w", err)
	}
	return nil
}

// set replaces the descriptor (fd < 0: none) and closes the old one.
func (e *eventFD) set(fd int) {
	e.mu.Lock()
	old := e.fd
	e.fd = fd
	e.mu.Unlock()
	if old >= 0 {
		unix.Close(old)
	}
}

// kicker reads a ring's kick eventfd on its own goroutine and passes each
// kick to the queue being served, if any. It lives as long as the
// descriptor: a ring that stops and starts again (SET_VRING_ENABLE, a new
// memory table) keeps it, and a kick that comes while no queue is served
// is dropped, since a queue looks at its ring when it starts anyway.
type kicker struct {
	f    *os.File
	q    atomic.Pointer[virtio.Queue]
	done chan struct{}
}

// newKicker takes ownership of fd, an eventfd made non-blocking
// (prepareEventFD), so that the runtime's poller waits on it and Close
// wakes the reader.
func newKicker(fd int) *kicker {
	k := &kicker{f: os.NewFile(uintptr(fd), "vhost-user-kick"), done: make(chan struct{})}
	go k.run()
	return k
}

func (k *kicker) run() {
	defer close(k.done)
	var b [8]byte
	for {
		n, err := k.f.Read(b[:])
		if err != nil {
			// Closed by the back-end, or not an eventfd after all (a
			// pipe at EOF, say): either way no more kicks.
			return
		}
		if n != len(b) {
			continue
		}
		if q := k.q.Load(); q != nil {
			q.Kick()
		}
	}
}

// close stops the reader and closes the descriptor.
func (k *kicker) close() {
	k.f.Close()
	<-k.done
}

// ring is one vring's state as the front-end described it.
type ring struct {
	index   int
	num     uint16 // 0 until SET_VRING_NUM
	addr    VringAddr
	hasAddr bool
	base    uint16 // the avail index the ring (re)starts from
	enabled bool   // SET_VRING_ENABLE
	kick    *kicker
	call    *eventFD
	err     *eventFD

	// While the ring is served.
	q   *virtio.Queue
	svc virtio.ServedQueue
}

func newRing(i int) *ring { return &ring{index: i, call: newEventFD(), err: newEventFD()} }

func (r *ring) running() bool { return r.svc != nil }

// stop stops serving the ring (draining it unless abort) and records the
// index it resumes from.
func (r *ring) stop(abort bool) {
	if r.svc == nil {
		return
	}
	if abort {
		r.svc.Abort()
	} else {
		r.svc.Stop()
	}
	if r.kick != nil {
		r.kick.q.Store(nil)
	}
	r.base = r.q.NextAvail()
	r.q, r.svc = nil, nil
}

// closeFDs stops the ring's kick reader and closes its descriptors; the
// ring must be stopped.
func (r *ring) closeFDs() {
	if r.kick != nil {
		r.kick.close()
		r.kick = nil
	}
	r.call.set(-1)
	r.err.set(-1)
}
