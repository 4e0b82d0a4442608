package net

import (
	"encoding/binary"
	"errors"
	"os"
	"time"

	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/state"
	"github.com/viovmm/vio/virtio"
)

// rxServer moves frames from the back-end into the guest's receive
// buffers.
type rxServer struct {
	d         *Device
	pc        *pairCounters
	pair      int // the queue pair served
	be        netdev.Backend
	q         *virtio.Queue
	stop      chan struct{}
	gate      *state.Gate
	allowed   netdev.Offloads // what the guest negotiated to receive
	guestCsum bool
	mergeable bool
	maxChains int // a frame never takes more chains than the queue holds

	// Frames read from the back-end and not yet delivered: first
	// restored (given by a snapshot, older than anything read here), then
	// bufs[next:count].
	restored    [][]byte
	bufs        [][]byte
	sizes       []int
	next, count int

	held   *virtio.Chain // a receive chain taken from the ring, not yet used
	chains []*virtio.Chain
	lens   []uint32
	pushed bool // used entries pushed since the last Signal
}

// step is how a part of the receive path ended.
type step int

const (
	stepOK    step = iota
	stepPause      // a pause was requested: come to rest and park
	stepStop       // the device stops or the queue broke
)

// push returns a chain to the driver.
func (s *rxServer) push(head uint16, n uint32) bool {
	s.pushed = true
	return s.q.Push(head, n) == nil
}

// signal interrupts the driver, if it wants one, for what was pushed; an
// interrupt for nothing would only cost the guest an exit.
func (s *rxServer) signal() {
	if s.pushed {
		s.pushed = false
		_ = s.q.Signal()
	}
}

func newRxServer(d *Device, pc *pairCounters, be netdev.Backend, bufs [][]byte, q *virtio.Queue, stop chan struct{}, gate *state.Gate, features uint64) *rxServer {
	return &rxServer{
		d: d, pc: pc, be: be, q: q, stop: stop, gate: gate,
		allowed:   rxOffloads(features),
		guestCsum: features&FeatureGuestCsum != 0,
		mergeable: features&FeatureMrgRxbuf != 0,
		maxChains: int(q.Config().Size),
		bufs:      bufs,
		sizes:     make([]int, rxBatch),
	}
}

func (s *rxServer) stopped() bool {
	select {
	case <-s.stop:
		return true
	default:
		return false
	}
}

func (s *rxServer) pauseRequested() bool {
	select {
	case <-s.gate.Requested():
		return true
	default:
		return false
	}
}

// pending returns the frames read and not delivered, oldest first. They
// alias the server's buffers: call it only while the server is parked.
func (s *rxServer) pending() [][]byte {
	p := append([][]byte(nil), s.restored...)
	for i := s.next; i < s.count; i++ {
		p = append(p, s.bufs[i][:s.sizes[i]])
	}
	return p
}

func (s *rxServer) serve() {
	defer func() {
		// Frames read but never delivered are lost with the reset.
		s.d.stats.rxDropped.Add(uint64(len(s.restored) + s.count - s.next))
	}()
	for {
		if s.pauseRequested() {
			if !s.rest() {
				return
			}
			continue
		}
		var st step
		switch {
		case s.pair >= int(s.d.pairs.Load()): // an atomic load per frame; pair 0 is always in use
			// The driver does not use this pair (yet): deliver nothing
			// until it does. Frames already read wait in the host
			// buffers; a multi-queue TAP steers no new ones here.
			st = s.idle()
		case len(s.restored) > 0:
			if st = s.deliver(s.restored[0]); st == stepOK {
				s.restored[0] = nil
				s.restored = s.restored[1:]
			}
		case s.next < s.count:
			if st = s.deliver(s.bufs[s.next][:s.sizes[s.next]]); st == stepOK {
				s.next++
			}
		default:
			st = s.read()
		}
		switch st {
		case stepStop:
			return
		case stepPause:
			// Rest now, even if the pause was cancelled meanwhile: the
			// chains taken for a packet not placed must go back.
			if !s.rest() {
				return
			}
			continue
		}
		if len(s.restored) == 0 && s.next == s.count {
			s.signal() // once per batch
		}
	}
}

// idle waits until the pair count changes.
func (s *rxServer) idle() step {
	n, changed := s.d.pairsInUse()
	if s.pair < n {
		return stepOK // it changed since the caller looked
	}
	select {
	case <-s.stop:
		return stepStop
	case <-s.gate.Requested():
		return stepPause
	case <-changed:
		return stepOK
	}
}

// read fills the host buffers from the back-end once the guest has
// posted a buffer (backpressure: frames wait in the back-end, not here).
func (s *rxServer) read() step {
	if st := s.waitChain(); st != stepOK {
		return st
	}
	n, err := s.be.ReadFrames(s.bufs, s.sizes)
	if err == nil {
		s.next, s.count = 0, n
		return stepOK
	}
	switch {
	case s.stopped():
		return stepStop
	case errors.Is(err, netdev.ErrClosed):
		// The back-end is gone; wait for the reset (or a pause).
		select {
		case <-s.stop:
			return stepStop
		case <-s.gate.Requested():
			return stepPause
		}
	case errors.Is(err, os.ErrDeadlineExceeded):
		return stepOK // Pause (or Reset) interrupted the read
	}
	if !s.backoff() {
		return stepStop
	}
	return stepOK
}

// rest brings the server to a quiet point and parks it until Resume: the
// chains it holds go back to the ring untouched (Queue.Unget), newest
// first, or, where that is impossible because entries were pushed after
// them, are returned with length 0. Frames read from the back-end stay in
// the host buffers: a partly placed one is placed again from its start
// after Resume. It reports false if the device stops.
func (s *rxServer) rest() bool {
	if s.held != nil {
		s.chains = append(s.chains, s.held)
		s.held = nil
	}
	for i := len(s.chains) - 1; i >= 0; i-- {
		c := s.chains[i]
		if !s.q.Unget(c) {
			s.d.stats.rxUnused.Add(1)
			if !s.push(c.Head, 0) {
				clear(s.chains)
				s.chains = s.chains[:0]
				return false
			}
		}
	}
	clear(s.chains)
	s.chains = s.chains[:0]
	s.signal()
	return s.gate.Park(s.stop)
}

// backoff pauses after a back-end error, so that a back-end failing
// persistently does not spin a CPU. It reports false if the device stops.
func (s *rxServer) backoff() bool {
	t := time.NewTimer(10 * time.Millisecond)
	defer t.Stop()
	select {
	case <-s.stop:
		return false
	case <-t.C:
		return true
	}
}

// waitChain makes sure a receive chain is held, waiting for the guest to
// post one if needed. A pause request ends the wait (and takes no
// further chain).
func (s *rxServer) waitChain() step {
	for s.held == nil {
		if s.pauseRequested() {
			return stepPause
		}
		c, err := s.q.Next()
		if err != nil {
			return stepStop
		}
		if c != nil {
			if c.Writable.Len() < netdev.HeaderSize {
				// Too small for even a header: useless, give it back.
				s.d.stats.rxErrors.Add(1)
				if !s.push(c.Head, 0) {
					return stepStop
				}
				continue
			}
			s.held = c
			return stepOK
		}
		// The ring is empty: let the driver see what was completed (it
		// refills when it processes them), then wait for its kick.
		s.signal()
		more, err := s.q.EnableNotifications()
		if err != nil {
			return stepStop
		}
		if more {
			continue
		}
		s.d.stats.rxWaits.Add(1)
		select {
		case <-s.stop:
			return stepStop
		case <-s.gate.Requested():
			return stepPause
		case <-s.q.Kicks():
			s.d.stats.notifications.Add(1)
			s.q.DisableNotifications()
		}
	}
	return stepOK
}

// countRx counts a frame given to the guest, in the device's and the
// pair's counters.
func (s *rxServer) countRx(frameLen int) {
	s.d.stats.rxFrames.Add(1)
	s.d.stats.rxBytes.Add(uint64(frameLen))
	s.pc.rxFrames.Add(1)
	s.pc.rxBytes.Add(uint64(frameLen))
}

// deliver places one packet (header and frame, as the back-end gave it)
// in the guest's buffers. A packet the guest cannot take is dropped and
// counted (stepOK). On stepPause nothing of the packet was published: the
// chains taken for it are in s.chains, for rest to hand back, and the
// packet is delivered again later.
func (s *rxServer) deliver(pkt []byte) step {
	if len(pkt) < netdev.HeaderSize {
		s.d.stats.rxErrors.Add(1)
		return stepOK
	}
	h := netdev.DecodeHeader(pkt)
	frameLen := len(pkt) - netdev.HeaderSize
	if h.Check(frameLen, s.allowed) != nil {
		s.d.stats.rxErrors.Add(1)
		return stepOK
	}
	if s.guestCsum {
		h.Flags &= netdev.FlagNeedsCsum | netdev.FlagDataValid
	} else {
		h.Flags = 0 // DATA_VALID means nothing to a guest without GUEST_CSUM
	}
	h.NumBuffers = 1
	// The host buffer is ours: rewrite the header in place (idempotent,
	// so a packet delivered again after a pause gets the same header).
	h.Encode(pkt)

	if !s.mergeable {
		if st := s.waitChain(); st != stepOK {
			return st
		}
		c := s.held
		if c.Writable.Len() < int64(len(pkt)) {
			// Too large for the guest's buffer; keep the buffer for the
			// next frame.
			s.d.stats.rxErrors.Add(1)
			return stepOK
		}
		c.Writable.WriteAt(pkt, 0)
		s.held = nil
		// Count before publishing: whoever sees the frame sees it counted.
		s.countRx(frameLen)
		if !s.push(c.Head, uint32(len(pkt))) {
			return stepStop
		}
		return stepOK
	}

	// Mergeable buffers: as many chains as the packet needs, the header
	// in the first with num_buffers saying how many.
	s.chains, s.lens = s.chains[:0], s.lens[:0]
	for off := 0; off < len(pkt); {
		if len(s.chains) == s.maxChains {
			// The guest's buffers are so small that the frame would need
			// more than the whole ring: it can never fit.
			s.d.stats.rxErrors.Add(1)
			for _, c := range s.chains {
				if !s.push(c.Head, 0) {
					return stepStop
				}
			}
			clear(s.chains)
			s.chains = s.chains[:0]
			return stepOK
		}
		if st := s.waitChain(); st != stepOK {
			return st
		}
		c := s.held
		s.held = nil
		n := min(int(c.Writable.Len()), len(pkt)-off)
		c.Writable.WriteAt(pkt[off:off+n], 0)
		s.chains = append(s.chains, c)
		s.lens = append(s.lens, uint32(n))
		off += n
	}
	if k := len(s.chains); k > 1 {
		var nb [2]byte
		binary.LittleEndian.PutUint16(nb[:], uint16(k))
		s.chains[0].Writable.WriteAt(nb[:], 10)
		s.d.stats.rxMerged.Add(1)
	}
	s.countRx(frameLen)
	for i, c := range s.chains {
		if !s.push(c.Head, s.lens[i]) {
			return stepStop
		}
	}
	clear(s.chains)
	s.chains = s.chains[:0]
	return stepOK
}
