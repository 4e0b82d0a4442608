package net

import (
	"encoding/binary"

	"github.com/viovmm/vio/state"
	"github.com/viovmm/vio/virtio"
)

// Control queue commands (spec 5.1.6.5): class, command.
const (
	ctrlClassMAC      = 1
	ctrlMACAddrSet    = 1
	ctrlClassAnnounce = 3
	ctrlAnnounceAck   = 0
	ctrlClassMQ       = 4
	ctrlMQPairsSet    = 0

	ctrlOK  = 0
	ctrlErr = 1

	// ctrlMaxData bounds the command data copied out of guest memory;
	// no supported command has more than a MAC address.
	ctrlMaxData = 64
)

// ctrlServer serves the control queue.
type ctrlServer struct {
	d        *Device
	q        *virtio.Queue
	stop     chan struct{}
	gate     *state.Gate
	features uint64
	maxPairs int
}

// serve polls at start, as txServer.serve does. A command is executed
// and answered in one step, so between two commands the queue is quiet.
func (s *ctrlServer) serve() {
	for {
		for more := true; more; {
			s.q.DisableNotifications()
			pushed, pause := false, false
			for !pause {
				select {
				case <-s.stop: // Reset must not wait for a busy guest
					return
				case <-s.gate.Requested():
					pause = true
					continue
				default:
				}
				c, err := s.q.Next()
				if err != nil {
					return
				}
				if c == nil {
					break
				}
				if s.q.Push(c.Head, s.handle(c)) != nil {
					return
				}
				pushed = true
			}
			if pushed {
				_ = s.q.Signal()
			}
			if pause {
				if !s.gate.Park(s.stop) {
					return
				}
				continue
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

// handle executes one command and writes its ack into the first
// writable byte; it returns the used length.
func (s *ctrlServer) handle(c *virtio.Chain) uint32 {
	s.d.stats.ctrlCommands.Add(1)
	if c.Writable.Len() == 0 {
		s.d.stats.ctrlErrors.Add(1)
		return 0 // nowhere for the ack
	}
	ack := byte(ctrlErr)
	if s.exec(c.Readable) {
		ack = ctrlOK
	} else {
		s.d.stats.ctrlErrors.Add(1)
	}
	c.Writable.WriteAt([]byte{ack}, 0)
	return 1
}

func (s *ctrlServer) exec(out virtio.Buffers) bool {
	var hdr [2]byte
	if n, _ := out.ReadAt(hdr[:], 0); n < 2 {
		return false
	}
	var buf [ctrlMaxData]byte
	dlen := min(out.Len()-2, ctrlMaxData)
	data := buf[:dlen]
	out.ReadAt(data, 2)
	d := s.d
	switch {
	case hdr[0] == ctrlClassMQ && hdr[1] == ctrlMQPairsSet && s.features&FeatureMQ != 0:
		if len(data) < 2 {
			return false
		}
		n := int(binary.LittleEndian.Uint16(data))
		if n < 1 || n > s.maxPairs {
			return false
		}
		d.setPairs(n, false)
		return true
	case hdr[0] == ctrlClassMAC && hdr[1] == ctrlMACAddrSet && s.features&FeatureCtrlMAC != 0:
		if len(data) < 6 || data[0]&1 != 0 {
			return false // a multicast address cannot be the NIC's own
		}
		d.setMAC([6]byte(data[:6]))
		return true
	case hdr[0] == ctrlClassAnnounce && hdr[1] == ctrlAnnounceAck && s.features&FeatureAnnounce != 0:
		d.announce.Store(false)
		return true
	}
	return false
}
