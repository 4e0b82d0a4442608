// Package handoff lets a NIC's host side change hands between two
// processes while the guest's NIC stays the same: at a live migration's
// switchover the source closes its TAP descriptors and the destination
// attaches the TAP, as block/handoff does for disk images.
//
// A single-queue TAP takes one descriptor only (a second TUNSETIFF fails
// with EBUSY), and a multi-queue TAP would steer some of the guest's flows
// to the other process's queues, which nobody reads: so the two sides
// never hold the TAP at once, one closes it before the other opens it.
//
// A NIC stands between a front-end (virtio-net) and the back-ends an
// Opener returns, one per queue pair. The front-end is built once, on
// Queues, on facts of the host side (the number of queues, the offloads
// it offers the guest); the back-ends under them may be closed (Detach)
// and opened again (Attach) any number of times and must keep those
// facts. What the front-end asked of its back-ends (the receive offloads
// its guest negotiated, which queues are enabled, the read deadline) is
// remembered and applied to each back-end an Attach opens, before any
// frame moves: a destination whose restored front-end set them while
// nothing was attached gets them on the TAP it attaches.
//
// While nothing is attached, reads and writes wait for an Attach, as a
// disk's requests wait for its image: frames the restored guest had
// queued for sending go out once the TAP is there. A read deadline ends
// the wait (os.ErrDeadlineExceeded), a write's too: a front-end sets one
// in the past to stop its goroutines (virtio-net's Pause and Reset), and
// a write it interrupts is dropped, as a frame on a link that is down.
// Close ends both with netdev.ErrClosed.
package handoff

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/viovmm/vio/netdev"
)

// Opener attaches to the host side: one back-end per queue pair, in
// order. Each call returns new back-ends on the same interface.
type Opener func() ([]netdev.Backend, error)

// Facts are what a front-end learned from its back-ends when it was built
// and keeps relying on while the guest runs.
type Facts struct {
	// Queues is the number of queue pairs.
	Queues int
	// Offloads is what every back-end accepts and can deliver
	// (netdev.Offloader), and what the front-end was told: 0 for
	// back-ends without offloads.
	Offloads netdev.Offloads
}

// FactsOf returns the facts of open back-ends: their number and the
// offloads all of them have.
func FactsOf(bes []netdev.Backend) Facts {
	f := Facts{Queues: len(bes), Offloads: ^netdev.Offloads(0)}
	for _, be := range bes {
		o, ok := be.(netdev.Offloader)
		if !ok {
			f.Offloads = 0
			break
		}
		f.Offloads &= o.Offloads()
	}
	if len(bes) == 0 {
		f.Offloads = 0
	}
	return f
}

// check refuses back-ends that would break what the front-end promised
// the guest: another number of queues, or fewer offloads (the guest may
// send frames that need them).
func (f Facts) check(bes []netdev.Backend) error {
	if len(bes) != f.Queues {
		return fmt.Errorf("the host side has %d queues, the guest's NIC %d", len(bes), f.Queues)
	}
	if f.Offloads == 0 {
		return nil
	}
	for i, be := range bes {
		o, ok := be.(netdev.Offloader)
		var have netdev.Offloads
		if ok {
			have = o.Offloads()
		}
		if missing := f.Offloads &^ have; missing != 0 {
			return fmt.Errorf("queue %d of the host side lacks offloads %#x the guest's NIC offers", i, missing)
		}
	}
	return nil
}

// ErrDetached is wrapped by the deadline error of a read or write that
// waited for a host side and met its deadline.
var ErrDetached = errors.New("no host side attached")

// NIC is one NIC whose host side can be detached and attached again.
type NIC struct {
	open   Opener
	facts  Facts
	queues []*Queue

	mu     sync.Mutex // serialises Attach and Detach
	active bool
	inner  []netdev.Backend // while active
}

// New returns a NIC on the open back-ends bes, which open can open again,
// with their facts. It owns bes.
func New(bes []netdev.Backend, open Opener) (*NIC, error) {
	if len(bes) == 0 {
		return nil, errors.New("handoff: a NIC with no queues")
	}
	n := newNIC(FactsOf(bes), open)
	for i, q := range n.queues {
		q.be = bes[i]
	}
	n.active, n.inner = true, append([]netdev.Backend(nil), bes...)
	return n, nil
}

// NewDetached returns a NIC with nothing attached yet, for a front-end
// built on facts learned elsewhere: its reads and writes wait until
// Attach opens the host side with open.
func NewDetached(f Facts, open Opener) (*NIC, error) {
	if f.Queues < 1 {
		return nil, fmt.Errorf("handoff: a NIC with %d queues", f.Queues)
	}
	return newNIC(f, open), nil
}

func newNIC(f Facts, open Opener) *NIC {
	n := &NIC{open: open, facts: f}
	for range f.Queues {
		n.queues = append(n.queues, &Queue{offl: f.Offloads, enabled: true, changed: make(chan struct{})})
	}
	return n
}

// Queues returns the back-ends to build the front-end on, one per queue
// pair. Each must be closed once, by whoever owns the front-end, after it
// is reset for good.
func (n *NIC) Queues() []netdev.Backend {
	bes := make([]netdev.Backend, len(n.queues))
	for i, q := range n.queues {
		bes[i] = q
	}
	return bes
}

// Facts returns the facts the NIC keeps.
func (n *NIC) Facts() Facts { return n.facts }

// Active reports whether the host side is attached.
func (n *NIC) Active() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.active
}

// Inner returns the attached back-ends (nil while detached), for checks
// on the host side (is a TAP persistent?). Frames must not go through
// them, and they may be closed by the next Detach.
func (n *NIC) Inner() []netdev.Backend {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]netdev.Backend(nil), n.inner...)
}

// closed reports whether every queue is closed: the front-end is gone.
func (n *NIC) closed() bool {
	for _, q := range n.queues {
		q.mu.Lock()
		c := q.closed
		q.mu.Unlock()
		if !c {
			return false
		}
	}
	return true
}

// Detach closes the host side, once no read or write is on it (a read
// waiting for frames on it is interrupted, and waits for the next Attach
// instead). Call it with the front-end paused, as a migration's source
// does: nothing is then in flight, and frames the host sends from now
// on are the kernel's to drop. Detaching a detached NIC does nothing; a
// NIC whose queues are all closed returns netdev.ErrClosed.
func (n *NIC) Detach() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed() {
		return netdev.ErrClosed
	}
	if !n.active {
		return nil
	}
	var first error
	for _, q := range n.queues {
		if err := q.detach(); err != nil && first == nil {
			first = err
		}
	}
	n.active, n.inner = false, nil
	if first != nil {
		return fmt.Errorf("closing the host side: %w", first)
	}
	return nil
}

// Attach opens the host side (again), applies to each back-end what the
// front-end asked of its queue, and lets the waiting reads and writes
// through. The back-ends must have the NIC's facts; if not, or if they
// cannot be opened or set up, the NIC stays detached. Attaching an
// attached NIC does nothing; a NIC whose queues are all closed returns
// netdev.ErrClosed.
func (n *NIC) Attach() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed() {
		return netdev.ErrClosed
	}
	if n.active {
		return nil
	}
	bes, err := n.open()
	if err != nil {
		return err
	}
	closeAll := func() {
		for _, be := range bes {
			be.Close()
		}
	}
	if err := n.facts.check(bes); err != nil {
		closeAll()
		return err
	}
	// Every queue is locked while the back-ends are set up and go live:
	// a setting the front-end changes meanwhile waits and then reaches
	// the new back-end, and a failure leaves nothing attached.
	for _, q := range n.queues {
		q.mu.Lock()
	}
	unlock := func() {
		for _, q := range n.queues {
			q.mu.Unlock()
		}
	}
	for i, q := range n.queues {
		if err := q.setUpLocked(bes[i]); err != nil {
			unlock()
			closeAll()
			return fmt.Errorf("queue %d: %w", i, err)
		}
	}
	for i, q := range n.queues {
		q.attachLocked(bes[i])
	}
	unlock()
	n.active, n.inner = true, bes
	return nil
}

// Queue is one queue pair's back-end as the front-end sees it.
type Queue struct {
	offl netdev.Offloads // the facts' offloads

	mu sync.Mutex
	be netdev.Backend // nil while detached
	// users counts reads, writes and settings on be; leaving is set
	// while Detach waits for them to end (new ones wait for the next
	// Attach).
	users   int
	leaving bool
	// changed is closed, and replaced, when be, leaving, users (to 0
	// while leaving), the deadline or closed change.
	changed chan struct{}
	// What the front-end asked of the queue: applied to each back-end
	// Attach opens.
	deadline time.Time
	recv     netdev.Offloads
	enabled  bool
	closed   bool
}

var (
	_ netdev.Backend     = (*Queue)(nil)
	_ netdev.Offloader   = (*Queue)(nil)
	_ netdev.QueueSwitch = (*Queue)(nil)
)

func (q *Queue) wakeLocked() {
	close(q.changed)
	q.changed = make(chan struct{})
}

// acquire returns the attached back-end, counted as a user (release
// ends that), waiting while there is none until Attach, Close or the
// read deadline.
func (q *Queue) acquire() (netdev.Backend, error) {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return nil, netdev.ErrClosed
		}
		if q.be != nil && !q.leaving {
			q.users++
			be := q.be
			q.mu.Unlock()
			return be, nil
		}
		dl, changed := q.deadline, q.changed
		q.mu.Unlock()
		var expired <-chan time.Time
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return nil, fmt.Errorf("handoff: %w: %w", ErrDetached, os.ErrDeadlineExceeded)
			}
			if timer == nil {
				timer = time.NewTimer(d)
			} else {
				timer.Reset(d)
			}
			expired = timer.C
		}
		select {
		case <-changed:
		case <-expired:
		}
	}
}

// using returns the attached back-end counted as a user, or nil (without
// waiting) if there is none.
func (q *Queue) using() netdev.Backend {
	if q.be == nil || q.leaving || q.closed {
		return nil
	}
	q.users++
	return q.be
}

func (q *Queue) release() {
	q.mu.Lock()
	q.users--
	if q.users == 0 && q.leaving {
		q.wakeLocked()
	}
	q.mu.Unlock()
}

// ReadFrames implements netdev.Backend: it reads from the attached host
// side, waiting for one while there is none. A read Detach interrupts
// waits for the next host side.
func (q *Queue) ReadFrames(bufs [][]byte, sizes []int) (int, error) {
	for {
		be, err := q.acquire()
		if err != nil {
			return 0, err
		}
		n, err := be.ReadFrames(bufs, sizes)
		q.release()
		if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) || !q.interrupted(be) {
			return n, err
		}
	}
}

// interrupted reports whether a read on be ended by a deadline was Detach's
// doing rather than the front-end's.
func (q *Queue) interrupted(be netdev.Backend) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return (q.leaving || q.be != be) && (q.deadline.IsZero() || time.Now().Before(q.deadline))
}

// WriteFrames implements netdev.Backend: it writes to the attached host
// side, waiting for one while there is none; if the read deadline ends
// the wait, frames[0] fails with it.
func (q *Queue) WriteFrames(frames [][][]byte) (int, error) {
	be, err := q.acquire()
	if err != nil {
		return 0, err
	}
	defer q.release()
	return be.WriteFrames(frames)
}

// SetReadDeadline implements netdev.Backend: it bounds the attached host
// side's reads, and the waits for one.
func (q *Queue) SetReadDeadline(t time.Time) error {
	q.mu.Lock()
	q.deadline = t
	q.wakeLocked()
	be := q.using()
	q.mu.Unlock()
	if be == nil {
		return nil
	}
	defer q.release()
	return be.SetReadDeadline(t)
}

// Offloads implements netdev.Offloader: the facts' offloads, attached or
// not.
func (q *Queue) Offloads() netdev.Offloads { return q.offl }

// SetRecvOffloads implements netdev.Offloader: the attached host side
// delivers o from now on, and so does every one Attach opens later.
func (q *Queue) SetRecvOffloads(o netdev.Offloads) error {
	if o&^q.offl != 0 {
		return fmt.Errorf("handoff: offloads %#x not supported", o&^q.offl)
	}
	q.mu.Lock()
	q.recv = o
	be := q.using()
	q.mu.Unlock()
	if be == nil {
		return nil
	}
	defer q.release()
	return setRecv(be, o)
}

func setRecv(be netdev.Backend, o netdev.Offloads) error {
	if of, ok := be.(netdev.Offloader); ok {
		return of.SetRecvOffloads(o)
	}
	if o != 0 {
		return fmt.Errorf("handoff: the host side has no offloads (%#x asked)", o)
	}
	return nil
}

// SetQueueEnabled implements netdev.QueueSwitch: the attached host side's
// queue is switched now, and every one Attach opens later.
func (q *Queue) SetQueueEnabled(on bool) error {
	q.mu.Lock()
	q.enabled = on
	be := q.using()
	q.mu.Unlock()
	if be == nil {
		return nil
	}
	defer q.release()
	return setEnabled(be, on)
}

func setEnabled(be netdev.Backend, on bool) error {
	if s, ok := be.(netdev.QueueSwitch); ok {
		return s.SetQueueEnabled(on)
	}
	return nil
}

// setUpLocked applies to be, which no one uses yet, what the front-end
// asked of the queue; q.mu is held. A closed queue skips it: attachLocked
// closes be.
func (q *Queue) setUpLocked(be netdev.Backend) error {
	if q.closed {
		return nil
	}
	if err := setRecv(be, q.recv); err != nil {
		return fmt.Errorf("receive offloads %#x: %w", q.recv, err)
	}
	if err := setEnabled(be, q.enabled); err != nil {
		return err
	}
	return be.SetReadDeadline(q.deadline)
}

// attachLocked makes be, set up, the queue's host side, and wakes the
// reads and writes waiting for one; q.mu is held. A queue closed
// meanwhile closes be instead.
func (q *Queue) attachLocked(be netdev.Backend) {
	if q.closed {
		be.Close()
		return
	}
	q.be = be
	q.wakeLocked()
}

// detach closes the host side once its users are gone, interrupting a
// read that waits on it.
func (q *Queue) detach() error {
	q.mu.Lock()
	be := q.be
	if be == nil || q.closed {
		q.mu.Unlock()
		return nil
	}
	q.leaving = true
	q.wakeLocked()
	q.mu.Unlock()
	// A read blocked on the host side comes out with a deadline error,
	// and ReadFrames waits for the next Attach instead. The front-end's
	// own deadline settings are only recorded from now on, so none
	// undoes this.
	kick := func() { be.SetReadDeadline(time.Unix(1, 0)) }
	kick()
	q.mu.Lock()
	for q.users > 0 && q.be == be {
		changed := q.changed
		q.mu.Unlock()
		select {
		case <-changed:
		case <-time.After(50 * time.Millisecond):
			// A deadline the front-end set just before Detach began
			// may have undone the kick: a front-end that is not
			// paused, which Detach does not ask for but survives.
			kick()
		}
		q.mu.Lock()
	}
	if q.be != be { // Close closed it meanwhile
		q.mu.Unlock()
		return nil
	}
	q.be, q.leaving = nil, false
	q.wakeLocked()
	q.mu.Unlock()
	return be.Close()
}

// Close implements netdev.Backend: it closes the attached host side, if
// any, and fails the reads and writes waiting for one with
// netdev.ErrClosed.
func (q *Queue) Close() error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return netdev.ErrClosed
	}
	be := q.be
	q.be, q.closed, q.leaving = nil, true, false
	q.wakeLocked()
	q.mu.Unlock()
	if be != nil {
		return be.Close()
	}
	return nil
}
