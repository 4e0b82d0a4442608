package net

import (
	"encoding/binary"
	"errors"
	"os"
	"time"

	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/virtio"
)

// rxServer moves frames from the back-end into the guest's receive
// buffers.
type rxServer struct {
	d         *Device
	be        netdev.Backend
	q         *virtio.Queue
	stop      chan struct{}
	allowed   netdev.Offloads // what the guest negotiated to receive
	guestCsum bool
	mergeable bool
	maxChains int // a frame never takes more chains than the queue holds

	// Frames read from the back-end and not yet delivered: bufs[next:count].
	bufs        [][]byte
	sizes       []int
	next, count int

	held   *virtio.Chain // a receive chain taken from the ring, not yet used
	chains []*virtio.Chain
	lens   []uint32
	pushed bool // used entries pushed since the last Signal
}

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

func newRxServer(d *Device, be netdev.Backend, bufs [][]byte, q *virtio.Queue, stop chan struct{}, features uint64) *rxServer {
	return &rxServer{
		d: d, be: be, q: q, stop: stop,
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

func (s *rxServer) serve() {
	defer func() {
		// Frames read but never delivered are lost with the reset.
		s.d.stats.rxDropped.Add(uint64(s.count - s.next))
	}()
	for {
		if s.next == s.count {
			// Backpressure: read from the back-end only once the guest
			// has a buffer to take what comes.
			if !s.waitChain() {
				return
			}
			n, err := s.be.ReadFrames(s.bufs, s.sizes)
			if err != nil {
				if s.stopped() {
					return
				}
				if errors.Is(err, netdev.ErrClosed) {
					<-s.stop // the back-end is gone; wait for the reset
					return
				}
				if !errors.Is(err, os.ErrDeadlineExceeded) && !s.backoff() {
					return
				}
				continue
			}
			s.next, s.count = 0, n
		}
		for s.next < s.count {
			pkt := s.bufs[s.next][:s.sizes[s.next]]
			if !s.deliver(pkt) {
				return
			}
			s.next++
		}
		s.signal()
	}
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
// post one if needed. It reports false if the device stops or the queue
// breaks.
func (s *rxServer) waitChain() bool {
	for s.held == nil {
		c, err := s.q.Next()
		if err != nil {
			return false
		}
		if c != nil {
			if c.Writable.Len() < netdev.HeaderSize {
				// Too small for even a header: useless, give it back.
				s.d.stats.rxErrors.Add(1)
				if !s.push(c.Head, 0) {
					return false
				}
				continue
			}
			s.held = c
			return true
		}
		// The ring is empty: let the driver see what was completed (it
		// refills when it processes them), then wait for its kick.
		s.signal()
		more, err := s.q.EnableNotifications()
		if err != nil {
			return false
		}
		if more {
			continue
		}
		s.d.stats.rxWaits.Add(1)
		select {
		case <-s.stop:
			return false
		case <-s.q.Kicks():
			s.d.stats.notifications.Add(1)
			s.q.DisableNotifications()
		}
	}
	return true
}

// deliver places one packet (header and frame, as the back-end gave it)
// in the guest's buffers. A packet the guest cannot take is dropped and
// counted. It reports false if the device stops or the queue breaks.
func (s *rxServer) deliver(pkt []byte) bool {
	if len(pkt) < netdev.HeaderSize {
		s.d.stats.rxErrors.Add(1)
		return true
	}
	h := netdev.DecodeHeader(pkt)
	frameLen := len(pkt) - netdev.HeaderSize
	if h.Check(frameLen, s.allowed) != nil {
		s.d.stats.rxErrors.Add(1)
		return true
	}
	if s.guestCsum {
		h.Flags &= netdev.FlagNeedsCsum | netdev.FlagDataValid
	} else {
		h.Flags = 0 // DATA_VALID means nothing to a guest without GUEST_CSUM
	}
	h.NumBuffers = 1
	h.Encode(pkt) // the host buffer is ours: rewrite the header in place

	if !s.mergeable {
		if !s.waitChain() {
			return false
		}
		c := s.held
		if c.Writable.Len() < int64(len(pkt)) {
			// Too large for the guest's buffer; keep the buffer for the
			// next frame.
			s.d.stats.rxErrors.Add(1)
			return true
		}
		c.Writable.WriteAt(pkt, 0)
		s.held = nil
		// Count before publishing: whoever sees the frame sees it counted.
		s.d.stats.rxFrames.Add(1)
		s.d.stats.rxBytes.Add(uint64(frameLen))
		return s.push(c.Head, uint32(len(pkt)))
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
					return false
				}
			}
			return true
		}
		if !s.waitChain() {
			return false
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
	s.d.stats.rxFrames.Add(1)
	s.d.stats.rxBytes.Add(uint64(frameLen))
	for i, c := range s.chains {
		if !s.push(c.Head, s.lens[i]) {
			return false
		}
	}
	clear(s.chains)
	return true
}
