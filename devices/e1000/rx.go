package e1000

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"time"

	"github.com/viovmm/vio/netdev"
)

const (
	// rxBatch is the number of frames read from the back-end at once;
	// each needs a MaxPacketLen host buffer.
	rxBatch = 4
	// Frame length limits on the wire, with the FCS: 1518 (1522 with an
	// 802.1Q tag) without RCTL.LPE, 16384 with it.
	maxStdFrame  = 1518
	maxLongFrame = 16384
	minFrame     = 60 // without FCS; shorter frames are padded
	fcsLen       = 4
)

func (d *Device) rxLoop() {
	defer d.wg.Done()
	bufs := make([][]byte, rxBatch)
	for i := range bufs {
		bufs[i] = make([]byte, netdev.MaxPacketLen)
	}
	sizes := make([]int, rxBatch)
	out := make([]byte, 0, maxLongFrame)
	for {
		// Backpressure: read only once the guest can take a frame.
		if !d.waitRxReady() {
			return
		}
		n, err := d.be.ReadFrames(bufs, sizes)
		if err != nil {
			if d.stopped() {
				return
			}
			if errors.Is(err, netdev.ErrClosed) {
				<-d.stop
				return
			}
			if !errors.Is(err, os.ErrDeadlineExceeded) && !d.backoff() {
				return
			}
			continue
		}
		for i := range n {
			if !d.receive(bufs[i][:sizes[i]], &out) {
				return
			}
		}
	}
}

func (d *Device) stopped() bool {
	select {
	case <-d.stop:
		return true
	default:
		return false
	}
}

// backoff pauses after a back-end error so that a failing back-end does
// not spin a CPU; false if the device stops meanwhile.
func (d *Device) backoff() bool {
	t := time.NewTimer(10 * time.Millisecond)
	defer t.Stop()
	select {
	case <-d.stop:
		return false
	case <-t.C:
		return true
	}
}

// waitWake waits for a write of RDT, RCTL or the ring registers; false if
// the device stops.
func (d *Device) waitWake() bool {
	select {
	case <-d.stop:
		return false
	case <-d.rxWake:
		return true
	}
}

// rxRing is a snapshot of the receive ring registers.
type rxRing struct {
	base       uint64
	count      uint32
	head, tail uint32
	gen        uint64
}

func (d *Device) rxRingLocked() (rxRing, bool) {
	r := rxRing{
		base:  uint64(d.regs[regRDBAH/4])<<32 | uint64(d.regs[regRDBAL/4]),
		count: d.regs[regRDLEN/4] / descSize,
		head:  d.regs[regRDH/4], tail: d.regs[regRDT/4],
		gen: d.rxGen,
	}
	ok := d.regs[regRCTL/4]&rctlEN != 0 && r.count != 0 && r.head < r.count && r.tail < r.count
	return r, ok
}

// free is the number of descriptors the device owns: RDH up to RDT.
func (r rxRing) free() uint32 { return (r.tail + r.count - r.head) % r.count }

func (d *Device) waitRxReady() bool {
	for {
		d.mu.Lock()
		r, ok := d.rxRingLocked()
		d.mu.Unlock()
		if ok && r.free() > 0 {
			return true
		}
		if !d.waitWake() {
			return false
		}
	}
}

// rxBufSize decodes RCTL.BSIZE and BSEX.
func rxBufSize(rctl uint32) int {
	bs := rctl & rctlBSIZE >> rctlBSIZEh
	if rctl&rctlBSEX != 0 && bs != 0 {
		return 32768 >> bs
	}
	return 2048 >> bs
}

// receive delivers one packet from the back-end (header and frame) to
// the guest, waiting for descriptors if the ring has too few. It reports
// false if the device stops.
func (d *Device) receive(pkt []byte, out *[]byte) bool {
	if len(pkt) < netdev.HeaderSize+netdev.MinFrameLen {
		d.counters.rxErrors.Add(1)
		return true
	}
	h := netdev.DecodeHeader(pkt)
	frame := pkt[netdev.HeaderSize:]
	if h.Check(len(frame), netdev.OffloadCsum) != nil || h.GSOType != netdev.GSONone {
		// The back-end was told to deliver no offloads; a frame that
		// still needs segmentation cannot be received.
		d.counters.rxErrors.Add(1)
		return true
	}
	if h.Flags&netdev.FlagNeedsCsum != 0 {
		start := int(h.CsumStart)
		insertChecksum(frame, start, 0, start+int(h.CsumOffset), 0, false)
	}
	csumOK := h.Flags&(netdev.FlagNeedsCsum|netdev.FlagDataValid) != 0
	for {
		d.mu.Lock()
		r, ok := d.rxRingLocked()
		if !ok {
			d.mu.Unlock()
			if !d.waitWake() {
				return false
			}
			continue
		}
		if !d.acceptLocked(frame) {
			d.mu.Unlock()
			d.counters.rxFiltered.Add(1)
			return true
		}
		status, special, ok := d.buildLocked(frame, out, csumOK)
		if !ok {
			d.mu.Unlock()
			d.counters.rxErrors.Add(1)
			return true
		}
		bs := rxBufSize(d.regs[regRCTL/4])
		need := uint32((len(*out) + bs - 1) / bs)
		if need > r.count-1 {
			// The whole ring could never hold it.
			d.addStatLocked(statMPC, 1)
			d.mu.Unlock()
			d.counters.rxDrops.Add(1)
			return true
		}
		if r.free() < need {
			d.mu.Unlock()
			d.counters.rxWaits.Add(1)
			if !d.waitWake() {
				return false
			}
			continue
		}
		d.mu.Unlock()
		head, delivered := d.write(r, *out, bs, status, special)
		d.publishRx(r, head, delivered, frame, len(*out))
		return true
	}
}

// acceptLocked applies the receive filters to a frame's destination
// address and VLAN tag.
func (d *Device) acceptLocked(f []byte) bool {
	rctl := d.regs[regRCTL/4]
	if rctl&rctlVFE != 0 && d.taggedLocked(f) {
		vid := binary.BigEndian.Uint16(f[14:]) & 0xfff
		if d.regs[regVFTA/4+int(vid>>5)]>>(vid&31)&1 == 0 {
			return false
		}
	}
	dst := f[:6]
	mcast := dst[0]&1 != 0
	switch {
	case isBroadcast(dst):
		return rctl&(rctlBAM|rctlMPE) != 0
	case !mcast && rctl&rctlUPE != 0, mcast && rctl&rctlMPE != 0:
		return true
	}
	lo := binary.LittleEndian.Uint32(dst[0:4])
	hi := uint32(binary.LittleEndian.Uint16(dst[4:6]))
	for i := range 16 {
		ral, rah := d.regs[regRAL0/4+2*i], d.regs[regRAL0/4+2*i+1]
		if rah&(1<<31) != 0 && ral == lo && rah&0xffff == hi {
			return true
		}
	}
	if !mcast {
		return false
	}
	// The multicast table is indexed by 12 bits of the address, which
	// RCTL.MO picks.
	var hash uint32
	switch rctl & rctlMO >> rctlMOSh {
	case 0:
		hash = uint32(dst[4])>>4 | uint32(dst[5])<<4
	case 1:
		hash = uint32(dst[4])>>3 | uint32(dst[5])<<5
	case 2:
		hash = uint32(dst[4])>>2 | uint32(dst[5])<<6
	default:
		hash = uint32(dst[4]) | uint32(dst[5])<<8
	}
	hash &= 0xfff
	return d.regs[regMTA/4+int(hash>>5)]>>(hash&31)&1 != 0
}

// taggedLocked reports whether f carries an 802.1Q tag (VET's type; 0,
// which Linux's driver writes on this model, counts as 0x8100).
func (d *Device) taggedLocked(f []byte) bool {
	vet := uint16(d.regs[regVET/4])
	if vet == 0 {
		vet = 0x8100
	}
	return len(f) >= 18 && binary.BigEndian.Uint16(f[12:]) == vet
}

// buildLocked forms the bytes the guest receives: the frame with its
// VLAN tag stripped (CTRL.VME), padded to the Ethernet minimum, with the
// FCS unless RCTL.SECRC. It returns the descriptor status and special
// field, or false for a frame longer than the guest accepts.
func (d *Device) buildLocked(f []byte, out *[]byte, csumOK bool) (status uint8, special uint16, ok bool) {
	rctl := d.regs[regRCTL/4]
	tagged := d.taggedLocked(f)
	limit := maxStdFrame
	if tagged {
		limit += 4
	}
	if rctl&rctlLPE != 0 {
		limit = maxLongFrame
	}
	if len(f)+fcsLen > limit {
		d.addStatLocked(statROC, 1)
		return 0, 0, false
	}
	o := (*out)[:0]
	if tagged && d.regs[regCTRL/4]&ctrlVME != 0 {
		special = binary.BigEndian.Uint16(f[14:])
		status |= rxdVP
		o = append(append(o, f[:12]...), f[16:]...)
	} else {
		o = append(o, f...)
	}
	for len(o) < minFrame {
		o = append(o, 0)
	}
	if rctl&rctlSECRC == 0 {
		o = binary.LittleEndian.AppendUint32(o, crc32.ChecksumIEEE(o))
	}
	*out = o
	if csumOK && d.regs[regRXCSUM/4]&rxcsumTUOFL != 0 {
		status |= rxdTCPCS
	} else {
		status |= rxdIXSM
	}
	return status, special, true
}

// write copies data into the descriptors from r.head on, each taking up
// to bs bytes, and writes them back. A buffer outside guest memory ends
// the frame with the RX error bit; a descriptor outside it ends the
// frame unwritten. It returns the new head and whether the frame
// arrived whole.
func (d *Device) write(r rxRing, data []byte, bs int, status uint8, special uint16) (uint32, bool) {
	head := r.head
	for off := 0; off < len(data); {
		da := int64(r.base + uint64(head)*descSize)
		var addr [8]byte
		if _, err := d.mem.ReadAt(addr[:], da); err != nil {
			d.counters.rxDrops.Add(1)
			return head, false
		}
		n := min(bs, len(data)-off)
		last := off+n == len(data)
		var wb [8]byte
		st := uint8(rxdDD)
		if last {
			st |= rxdEOP | status
			binary.LittleEndian.PutUint16(wb[6:], special)
		}
		if _, err := d.mem.WriteAt(data[off:off+n], int64(binary.LittleEndian.Uint64(addr[:]))); err != nil {
			st |= rxdEOP
			wb[5] = rxdErrRX
			last = true
		}
		binary.LittleEndian.PutUint16(wb[0:], uint16(n))
		wb[4] = st
		// Length first, then status: a driver that sees DD sees the
		// length (x86 keeps stores in order).
		_, err1 := d.mem.WriteAt(wb[:4], da+8)
		_, err2 := d.mem.WriteAt(wb[4:], da+12)
		head = (head + 1) % r.count
		if err1 != nil || err2 != nil {
			d.counters.rxDrops.Add(1)
			return head, false
		}
		if last {
			return head, off+n == len(data) && wb[5] == 0
		}
		off += n
	}
	return head, true
}

// publishRx moves RDH and raises the receive interrupts for a frame that
// was written (n bytes as the guest got them).
func (d *Device) publishRx(r rxRing, head uint32, delivered bool, frame []byte, n int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.rxGen != r.gen || head == r.head {
		return
	}
	d.regs[regRDH/4] = head
	if delivered {
		d.counters.rxFrames.Add(1)
		d.counters.rxBytes.Add(uint64(len(frame)))
		d.addStatLocked(statGPRC, 1)
		d.addStatLocked(statTPR, 1)
		d.addStat64Locked(statGORCL, uint64(len(frame)+fcsLen))
		d.addStat64Locked(statTORL, uint64(len(frame)+fcsLen))
		d.addStatLocked(statPRC64+sizeBin(len(frame)+fcsLen), 1)
		switch {
		case isBroadcast(frame):
			d.addStatLocked(statBPRC, 1)
		case frame[0]&1 != 0:
			d.addStatLocked(statMPRC, 1)
		}
	} else {
		d.counters.rxErrors.Add(1)
	}
	// RXDMT0 when the free descriptors fall to RCTL.RDMTS's fraction
	// of the ring (1/2, 1/4, 1/8).
	tail := d.regs[regRDT/4]
	before := r.free()
	after := (tail + r.count - head) % r.count
	threshold := r.count >> (1 + d.regs[regRCTL/4]&rctlRDMTS>>rctlRDMTSh)
	if before > threshold && after <= threshold {
		d.raiseLocked(icrRXDMT0)
	}
	d.delayLocked(&d.rxDelay, d.regs[regRDTR/4], d.regs[regRADV/4], false)
}
