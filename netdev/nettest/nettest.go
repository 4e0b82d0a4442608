// Package nettest provides an in-memory netdev.Backend for tests: Pair
// returns the two ends of a virtual cable. A test hands one end to a NIC
// front-end and plays the network with the other.
package nettest

import (
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/viovmm/vio/netdev"
)

// Endpoint is one end of an in-memory link. Frames written to one end are
// copied into the other's receive queue, which holds up to the capacity
// given to Pair; frames beyond it are dropped (and counted), as a real
// link does when nobody reads.
type Endpoint struct {
	peer *Endpoint

	mu         sync.Mutex // guards everything below
	queue      [][]byte
	capacity   int
	dropped    int
	closed     bool
	deadline   time.Time
	wake       chan struct{} // closed and replaced when a reader should look again
	offloads   netdev.Offloads
	recvOffl   netdev.Offloads
	recvOfflOK bool
	writeErr   error
	reads      int
	disabled   bool
}

var (
	_ netdev.Backend     = (*Endpoint)(nil)
	_ netdev.Offloader   = (*Endpoint)(nil)
	_ netdev.QueueSwitch = (*Endpoint)(nil)
)

// AllOffloads is what an Endpoint reports by default.
const AllOffloads = netdev.OffloadCsum | netdev.OffloadTSO4 | netdev.OffloadTSO6 | netdev.OffloadTSOECN |
	netdev.OffloadUFO | netdev.OffloadUSO4 | netdev.OffloadUSO6

// Pair returns two connected endpoints whose receive queues hold up to
// capacity frames each.
func Pair(capacity int) (*Endpoint, *Endpoint) {
	a := &Endpoint{capacity: capacity, wake: make(chan struct{}), offloads: AllOffloads}
	b := &Endpoint{capacity: capacity, wake: make(chan struct{}), offloads: AllOffloads}
	a.peer, b.peer = b, a
	return a, b
}

// wakeLocked wakes a blocked ReadFrames.
func (e *Endpoint) wakeLocked() {
	close(e.wake)
	e.wake = make(chan struct{})
}

// ReadFrames implements netdev.Backend.
func (e *Endpoint) ReadFrames(bufs [][]byte, sizes []int) (int, error) {
	if len(bufs) == 0 || len(sizes) < len(bufs) {
		return 0, fmt.Errorf("nettest: %d buffers, %d sizes", len(bufs), len(sizes))
	}
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		e.mu.Lock()
		if e.closed {
			e.mu.Unlock()
			return 0, netdev.ErrClosed
		}
		if len(e.queue) > 0 {
			n := 0
			for n < len(bufs) && len(e.queue) > 0 {
				sizes[n] = copy(bufs[n], e.queue[0])
				e.queue[0] = nil
				e.queue = e.queue[1:]
				n++
			}
			e.reads++
			e.mu.Unlock()
			return n, nil
		}
		dl, wake := e.deadline, e.wake
		e.mu.Unlock()
		var expired <-chan time.Time
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return 0, os.ErrDeadlineExceeded
			}
			if timer == nil {
				timer = time.NewTimer(d)
			} else {
				timer.Reset(d)
			}
			expired = timer.C
		}
		select {
		case <-wake:
		case <-expired:
		}
	}
}

// WriteFrames implements netdev.Backend: the frames are copied to the
// peer's receive queue.
func (e *Endpoint) WriteFrames(frames [][][]byte) (int, error) {
	e.mu.Lock()
	closed, werr := e.closed, e.writeErr
	e.writeErr = nil
	e.mu.Unlock()
	if closed {
		return 0, netdev.ErrClosed
	}
	if werr != nil {
		return 0, werr
	}
	p := e.peer
	for i, f := range frames {
		var n int
		for _, b := range f {
			n += len(b)
		}
		if n < netdev.HeaderSize || n > netdev.MaxPacketLen {
			return i, fmt.Errorf("nettest: %w: packet of %d bytes", netdev.ErrHeader, n)
		}
		pkt := make([]byte, 0, n)
		for _, b := range f {
			pkt = append(pkt, b...)
		}
		p.mu.Lock()
		if p.closed || len(p.queue) >= p.capacity {
			p.dropped++
		} else {
			p.queue = append(p.queue, pkt)
			p.wakeLocked()
		}
		p.mu.Unlock()
	}
	return len(frames), nil
}

// SetReadDeadline implements netdev.Backend.
func (e *Endpoint) SetReadDeadline(t time.Time) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.deadline = t
	e.wakeLocked()
	return nil
}

// Close implements netdev.Backend.
func (e *Endpoint) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return netdev.ErrClosed
	}
	e.closed = true
	e.queue = nil
	e.wakeLocked()
	return nil
}

// Offloads implements netdev.Offloader.
func (e *Endpoint) Offloads() netdev.Offloads {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.offloads
}

// SetRecvOffloads implements netdev.Offloader. It only records o: the
// test writing to the peer decides what arrives.
func (e *Endpoint) SetRecvOffloads(o netdev.Offloads) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if o&^e.offloads != 0 {
		return fmt.Errorf("nettest: offloads %#x not supported (%#x)", o, e.offloads)
	}
	e.recvOffl, e.recvOfflOK = o, true
	return nil
}

// SetOffloads changes what Offloads reports (before the front-end
// starts).
func (e *Endpoint) SetOffloads(o netdev.Offloads) {
	e.mu.Lock()
	e.offloads = o
	e.mu.Unlock()
}

// RecvOffloads returns what the front-end last passed to
// SetRecvOffloads, and whether it called it at all.
func (e *Endpoint) RecvOffloads() (netdev.Offloads, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.recvOffl, e.recvOfflOK
}

// SetQueueEnabled implements netdev.QueueSwitch. It only records the
// state: frames keep flowing, and the test checks what the front-end did.
func (e *Endpoint) SetQueueEnabled(on bool) error {
	e.mu.Lock()
	e.disabled = !on
	e.mu.Unlock()
	return nil
}

// QueueEnabled reports the state last set by SetQueueEnabled (initially
// enabled).
func (e *Endpoint) QueueEnabled() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return !e.disabled
}

// FailNextWrite makes the next WriteFrames fail with err before sending
// anything.
func (e *Endpoint) FailNextWrite(err error) {
	e.mu.Lock()
	e.writeErr = err
	e.mu.Unlock()
}

// Queued returns the number of frames waiting in this endpoint's receive
// queue (written by the peer, not yet read).
func (e *Endpoint) Queued() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.queue)
}

// Dropped returns the number of frames the peer wrote that this endpoint's
// full (or closed) queue refused.
func (e *Endpoint) Dropped() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.dropped
}

// Reads returns the number of successful ReadFrames calls.
func (e *Endpoint) Reads() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.reads
}

// Send writes one packet (header and frame) from e to its peer.
func (e *Endpoint) Send(hdr netdev.Header, frame []byte) error {
	h := make([]byte, netdev.HeaderSize)
	hdr.Encode(h)
	_, err := e.WriteFrames([][][]byte{{h, frame}})
	return err
}

// Recv reads one packet, waiting up to timeout, and splits it into header
// and frame.
func (e *Endpoint) Recv(timeout time.Duration) (netdev.Header, []byte, error) {
	if err := e.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return netdev.Header{}, nil, err
	}
	defer e.SetReadDeadline(time.Time{})
	buf := make([]byte, netdev.MaxPacketLen)
	sizes := []int{0}
	if _, err := e.ReadFrames([][]byte{buf}, sizes); err != nil {
		return netdev.Header{}, nil, err
	}
	if sizes[0] < netdev.HeaderSize {
		return netdev.Header{}, nil, fmt.Errorf("nettest: %d-byte packet", sizes[0])
	}
	return netdev.DecodeHeader(buf), buf[netdev.HeaderSize:sizes[0]], nil
}
