package net

import (
	"errors"
	"sync"

	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/state"
	"github.com/viovmm/vio/virtio"
)

// txServer moves the guest's frames to the back-end.
type txServer struct {
	d       *Device
	pc      *pairCounters
	be      netdev.Backend
	wmu     *sync.Mutex // held while writing to be (Device.wmu)
	q       *virtio.Queue
	stop    chan struct{}
	gate    *state.Gate
	allowed netdev.Offloads

	// One batch: the header copies, the gather lists handed to the
	// back-end and the heads to return. Reused, so a batch allocates
	// nothing.
	hdrs   [txBatch][netdev.HeaderSize]byte
	frames [txBatch][][]byte
	heads  [txBatch]uint16
	lens   [txBatch]int
	n      int
	// The good frames of a batch, as passed to WriteFrames.
	batch [txBatch][][]byte
	blens [txBatch]int
}

// serve polls at start: a device restored from a snapshot may find
// frames the driver made available (and kicked for) before the save.
func (s *txServer) serve() {
	for {
		for more := true; more; {
			s.q.DisableNotifications()
			pause := false
			for !pause {
				select {
				case <-s.stop: // Reset must not wait for a busy guest
					return
				case <-s.gate.Requested():
					pause = true // finish what was taken, take nothing more
					continue
				default:
				}
				c, err := s.q.Next()
				if err != nil {
					return // broken queue: the transport set DEVICE_NEEDS_RESET
				}
				if c == nil {
					break
				}
				s.add(c)
				if s.n == txBatch {
					if s.flush() != nil {
						return
					}
				}
			}
			if s.flush() != nil {
				return
			}
			if pause {
				// Every frame taken is on the back-end and its used entry
				// written: a quiet point.
				if !s.gate.Park(s.stop) {
					return
				}
				continue // poll what was made available meanwhile
			}
			var err error
			if more, err = s.q.EnableNotifications(); err != nil {
				return
			}
		}
		select {
		case <-s.stop:
			return
		case <-s.gate.Requested():
			if !s.gate.Park(s.stop) {
				return
			}
		case <-s.q.Kicks():
			s.d.stats.notifications.Add(1)
		}
	}
}

// add validates a chain and queues its frame, or returns it at once if it
// is bad.
func (s *txServer) add(c *virtio.Chain) {
	i := s.n
	frameLen, err := parseTx(c.Readable, &s.hdrs[i], s.allowed)
	if err != nil {
		s.d.stats.txErrors.Add(1)
		s.heads[i], s.lens[i] = c.Head, -1
		s.n++
		return
	}
	g := append(s.frames[i][:0], s.hdrs[i][:])
	s.frames[i] = span(g, c.Readable, netdev.HeaderSize, int64(frameLen))
	s.heads[i], s.lens[i] = c.Head, frameLen
	s.n++
}

// parseTx copies and checks a transmit chain's header and returns the
// frame's length. The frame follows the header in the readable buffers;
// writable buffers, which a transmit chain should not have, are ignored.
func parseTx(out virtio.Buffers, hdr *[netdev.HeaderSize]byte, allowed netdev.Offloads) (int, error) {
	total := out.Len()
	if total < netdev.HeaderSize {
		return 0, netdev.ErrHeader
	}
	out.ReadAt(hdr[:], 0)
	frameLen := total - netdev.HeaderSize
	if frameLen > netdev.MaxFrameLen {
		return 0, netdev.ErrHeader
	}
	h := netdev.DecodeHeader(hdr[:])
	if err := h.Check(int(frameLen), allowed); err != nil {
		return 0, err
	}
	// num_buffers means nothing on transmit; the back-end gets zero.
	hdr[10], hdr[11] = 0, 0
	return int(frameLen), nil
}

// flush hands the batch to the back-end and returns every chain with
// length 0 (transmit buffers are only read), then interrupts once. Only a
// broken queue is an error.
func (s *txServer) flush() error {
	if s.n == 0 {
		return nil
	}
	// Gather the good frames; bad ones (lens -1) are already counted.
	batch, lens := s.batch[:], s.blens[:]
	k := 0
	for i := range s.n {
		if s.lens[i] >= 0 {
			batch[k], lens[k] = s.frames[i], s.lens[i]
			k++
		}
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	for sent := 0; sent < k; {
		n, err := s.be.WriteFrames(batch[sent:k])
		var bytes uint64
		for _, l := range lens[sent : sent+n] {
			bytes += uint64(l)
		}
		s.d.stats.txFrames.Add(uint64(n))
		s.d.stats.txBytes.Add(bytes)
		s.pc.txFrames.Add(uint64(n))
		s.pc.txBytes.Add(bytes)
		sent += n
		if err == nil {
			continue
		}
		if errors.Is(err, netdev.ErrClosed) {
			// Nobody will ever take these: drop them rather than stall
			// the guest.
			s.d.stats.txDropped.Add(uint64(k - sent))
			break
		}
		s.d.stats.txDropped.Add(1) // frames[sent] alone failed
		sent++
	}
	for i := range s.n {
		// The gather lists alias guest memory: forget them before the
		// buffers go back to the driver.
		clear(s.frames[i])
		if err := s.q.Push(s.heads[i], 0); err != nil {
			s.n = 0
			return err
		}
	}
	s.n = 0
	_ = s.q.Signal()
	return nil
}

// span appends to dst the sub-slices of bufs covering n bytes from off of
// their concatenation. It copies no data: the result aliases bufs.
func span(dst [][]byte, bufs virtio.Buffers, off, n int64) [][]byte {
	for _, b := range bufs {
		if n <= 0 {
			break
		}
		if off >= int64(len(b)) {
			off -= int64(len(b))
			continue
		}
		b = b[off:]
		off = 0
		if int64(len(b)) > n {
			b = b[:n]
		}
		dst = append(dst, b)
		n -= int64(len(b))
	}
	return dst
}
