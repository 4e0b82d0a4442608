package e1000

import (
	"encoding/binary"
	"errors"

	"github.com/viovmm/vio/netdev"
)

// Transmit bounds.
const (
	// maxTxPacket bounds the bytes of one packet gathered from
	// descriptors: a 64 KiB TSO payload and its headers.
	maxTxPacket = 64<<10 + 256
	// maxTxDescs bounds the descriptors of one packet.
	maxTxDescs = 256
	// minMSS is the smallest TSO segment size served: smaller ones
	// would turn one packet into thousands of frames.
	minMSS = 64
	// txBatch bounds the frames per WriteFrames; txArena the bytes
	// they occupy.
	txBatch = 64
	txArena = 256 << 10
)

// txContext is what a context descriptor sets up for the data
// descriptors after it.
type txContext struct {
	ipcss, ipcso   int
	ipcse          int
	tucss, tucso   int
	tucse          int
	tucmd          uint8
	hdrLen, mss    int
	payLen         int
	valid, tsoDesc bool
}

// txWorker is the transmit goroutine's state. Only txLoop touches it.
type txWorker struct {
	d   *Device
	gen uint64
	ctx txContext

	// The packet being gathered.
	pkt      []byte
	descs    int
	started  bool
	dropping bool
	tse      bool
	popts    uint8
	legacyIC bool
	css, cso int

	// seg is the scratch buffer a TSO segment is built in.
	seg []byte

	// Frames ready for the back-end, in arena.
	arena  []byte
	frames [][][]byte
	lens   []int
}

var zeroHeader [netdev.HeaderSize]byte

func (d *Device) txLoop() {
	defer d.wg.Done()
	w := newTxWorker(d)
	for {
		if _, err := d.txKick.Wait(); err != nil {
			return // Close closed the eventfd
		}
		select {
		case <-d.stop:
			return
		default:
		}
		for w.pass() {
			select {
			case <-d.stop:
				return
			default:
			}
		}
	}
}

func newTxWorker(d *Device) *txWorker {
	return &txWorker{
		d:      d,
		pkt:    make([]byte, 0, maxTxPacket),
		arena:  make([]byte, 0, txArena),
		frames: make([][][]byte, 0, txBatch),
		lens:   make([]int, 0, txBatch),
		seg:    make([]byte, 0, 16<<10),
	}
}

// txRing is a snapshot of the transmit ring registers.
type txRing struct {
	base             uint64
	count            uint32
	head, tail       uint32
	gen              uint64
	pktDelay, absDly uint32
}

// pass walks the ring from TDH towards TDT, at most one ring's length of
// descriptors, then publishes the new head and the interrupts. It reports
// whether descriptors remain.
func (w *txWorker) pass() bool {
	d := w.d
	d.mu.Lock()
	r := txRing{
		base:  uint64(d.regs[regTDBAH/4])<<32 | uint64(d.regs[regTDBAL/4]),
		count: d.regs[regTDLEN/4] / descSize,
		head:  d.regs[regTDH/4], tail: d.regs[regTDT/4],
		gen:      d.txGen,
		pktDelay: d.regs[regTIDV/4], absDly: d.regs[regTADV/4],
	}
	enabled := d.regs[regTCTL/4]&tctlEN != 0
	d.mu.Unlock()
	if r.gen != w.gen {
		// A reset or a reprogrammed ring: forget the partial packet and
		// the context, as the hardware's reset does.
		w.gen = r.gen
		w.ctx = txContext{}
		w.resetPacket()
	}
	if !enabled || r.count == 0 || r.head >= r.count || r.tail >= r.count || r.head == r.tail {
		return false
	}
	head := r.head
	var report, immediate bool
	for n := uint32(0); head != r.tail && n < r.count; n++ {
		addr := r.base + uint64(head)*descSize
		rs, ide, ok := w.descriptor(addr)
		if !ok {
			// The descriptor itself is outside guest memory: skip it.
			d.counters.txErrors.Add(1)
		}
		report = report || rs
		immediate = immediate || rs && !ide
		head = (head + 1) % r.count
	}
	w.flush()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.txGen != r.gen {
		return false
	}
	d.regs[regTDH/4] = head
	if report {
		d.delayLocked(&d.txDelay, r.pktDelay, r.absDly, immediate)
	}
	tail := d.regs[regTDT/4]
	if head == tail {
		d.raiseLocked(icrTXQE)
	}
	return head != tail && tail < r.count
}

func (w *txWorker) resetPacket() {
	w.pkt = w.pkt[:0]
	w.descs = 0
	w.started, w.dropping, w.tse, w.legacyIC = false, false, false, false
	w.popts = 0
}

// descriptor handles one descriptor at addr. It reports the RS and IDE
// bits, and false if the descriptor could not be read.
func (w *txWorker) descriptor(addr uint64) (rs, ide, ok bool) {
	var desc [descSize]byte
	if _, err := w.d.mem.ReadAt(desc[:], int64(addr)); err != nil {
		return false, false, false
	}
	le := binary.LittleEndian
	lower, upper := le.Uint32(desc[8:]), le.Uint32(desc[12:])
	cmd := uint8(lower >> 24)
	rs, ide = cmd&txdRS != 0, cmd&txdIDE != 0
	defer func() {
		if rs {
			// Write back "descriptor done" in the status byte.
			_, _ = w.d.mem.WriteAt([]byte{desc[12] | txdStatusDD}, int64(addr+12))
		}
	}()
	if cmd&txdDEXT == 0 {
		// Legacy: address, 16-bit length, CSO, CMD, status, CSS, special.
		if !w.started {
			w.started = true
			w.legacyIC = cmd&txdIC != 0
			w.cso, w.css = int(lower>>16&0xff), int(upper>>8&0xff)
		}
		w.gather(le.Uint64(desc[0:]), lower&0xffff)
		if cmd&txdEOP != 0 {
			w.finish(false, cmd&txdVLE != 0, uint16(upper>>16))
		}
		return rs, ide, true
	}
	switch lower >> 20 & 0xf {
	case dtypContext:
		w.ctx = txContext{
			ipcss: int(desc[0]), ipcso: int(desc[1]), ipcse: int(le.Uint16(desc[2:])),
			tucss: int(desc[4]), tucso: int(desc[5]), tucse: int(le.Uint16(desc[6:])),
			payLen: int(lower & 0xfffff), tucmd: cmd,
			hdrLen: int(desc[13]), mss: int(le.Uint16(desc[14:])),
			valid: true, tsoDesc: cmd&txdTSE != 0,
		}
	case dtypData:
		if !w.started {
			w.started = true
			w.tse = cmd&txdTSE != 0
			w.popts = uint8(upper >> 8)
		}
		w.gather(le.Uint64(desc[0:]), lower&0xfffff)
		if cmd&txdEOP != 0 {
			w.finish(true, cmd&txdVLE != 0, uint16(upper>>16))
		}
	default:
		// A reserved descriptor type: nothing to send from it.
		w.d.counters.txErrors.Add(1)
	}
	return rs, ide, true
}

// gather appends one buffer to the packet, or marks the packet for
// dropping if it is too long, has too many descriptors or lies outside
// guest memory.
func (w *txWorker) gather(addr uint64, n uint32) {
	w.descs++
	if w.dropping {
		return
	}
	if w.descs > maxTxDescs || len(w.pkt)+int(n) > maxTxPacket {
		w.dropping = true
		return
	}
	if n == 0 {
		return
	}
	l := len(w.pkt)
	w.pkt = w.pkt[:l+int(n)]
	if _, err := w.d.mem.ReadAt(w.pkt[l:], int64(addr)); err != nil {
		w.dropping = true
	}
}

// finish sends the gathered packet: checksums and segmentation as the
// descriptors asked, then the VLAN tag.
func (w *txWorker) finish(extended, vle bool, vlan uint16) {
	defer w.resetPacket()
	if w.dropping || len(w.pkt) < netdev.MinFrameLen {
		w.d.counters.txErrors.Add(1)
		return
	}
	w.d.mu.Lock()
	vme := w.d.regs[regCTRL/4]&ctrlVME != 0
	vet := uint16(w.d.regs[regVET/4])
	w.d.mu.Unlock()
	if !vle || !vme {
		vet = 0 // no tag
	} else if vet == 0 {
		// Linux's driver clears VET on this model; a tag still means
		// 802.1Q.
		vet = 0x8100
	}
	pkt := w.pkt
	c := &w.ctx
	switch {
	case extended && w.tse:
		if !w.segment(vet, vlan) {
			w.d.counters.txErrors.Add(1)
			w.d.mu.Lock()
			w.d.addStatLocked(statTSCTFC, 1)
			w.d.mu.Unlock()
		}
		return
	case extended:
		if w.popts&poptsIXSM != 0 && c.valid {
			insertChecksum(pkt, c.ipcss, c.ipcse, c.ipcso, 0, false)
		}
		if w.popts&poptsTXSM != 0 && c.valid {
			insertChecksum(pkt, c.tucss, c.tucse, c.tucso, 0, c.tucmd&tucmdTCP == 0)
		}
	case w.legacyIC:
		insertChecksum(pkt, w.css, 0, w.cso, 0, false)
	}
	w.emit(pkt, vet, vlan)
}

// segment cuts a TSO packet into frames of at most MSS bytes of payload
// after the context's headers, fixing up each one's IP length, IPv4 ID,
// TCP sequence number and flags (or UDP length) and checksums. It
// reports false for a context it cannot honour.
func (w *txWorker) segment(vet, vlan uint16) bool {
	c := &w.ctx
	pkt := w.pkt
	ipv4, tcp := c.tucmd&tucmdIP != 0, c.tucmd&tucmdTCP != 0
	l4min := 8
	if tcp {
		l4min = 20
	}
	iphdr := 40
	if ipv4 {
		iphdr = 20
	}
	if !c.valid || c.hdrLen == 0 || c.hdrLen >= len(pkt) || c.mss < minMSS ||
		c.ipcss+iphdr > c.hdrLen || c.tucss+l4min > c.hdrLen || c.tucso+2 > c.hdrLen ||
		w.popts&poptsIXSM != 0 && c.ipcso+2 > c.hdrLen {
		return false
	}
	w.d.counters.txTSO.Add(1)
	w.d.mu.Lock()
	w.d.addStatLocked(statTSCTC, 1)
	w.d.mu.Unlock()
	hdr := pkt[:c.hdrLen]
	payload := pkt[c.hdrLen:]
	be := binary.BigEndian
	ipID := be.Uint16(hdr[c.ipcss+4:])
	seq := be.Uint32(hdr[c.tucss+4:])
	buf := w.seg
	for i, off := 0, 0; off < len(payload); i++ {
		n := min(c.mss, len(payload)-off)
		last := off+n == len(payload)
		buf = append(append(buf[:0], hdr...), payload[off:off+n]...)
		if ipv4 {
			be.PutUint16(buf[c.ipcss+2:], uint16(len(buf)-c.ipcss))
			be.PutUint16(buf[c.ipcss+4:], ipID+uint16(i))
		} else {
			be.PutUint16(buf[c.ipcss+4:], uint16(len(buf)-c.ipcss-40))
		}
		l4len := len(buf) - c.tucss
		if tcp {
			be.PutUint32(buf[c.tucss+4:], seq+uint32(off))
			if !last {
				buf[c.tucss+13] &^= 0x09 // FIN and PSH only on the last segment
			}
		} else {
			be.PutUint16(buf[c.tucss+4:], uint16(l4len))
		}
		if w.popts&poptsIXSM != 0 {
			end := c.ipcse
			if end == 0 || end >= c.hdrLen {
				end = c.tucss - 1
			}
			insertChecksum(buf, c.ipcss, end, c.ipcso, 0, false)
		}
		if w.popts&poptsTXSM != 0 {
			// The driver left the pseudo-header sum without the length
			// in the field; each segment's length is added here.
			insertChecksum(buf, c.tucss, 0, c.tucso, uint64(l4len), !tcp)
		}
		w.emit(buf, vet, vlan)
		off += n
	}
	w.seg = buf[:0]
	return true
}

// emit queues one frame for the back-end, inserting an 802.1Q tag when
// tpid is not 0.
func (w *txWorker) emit(frame []byte, tpid, tci uint16) {
	n := len(frame)
	if tpid != 0 {
		n += 4
	}
	if n > netdev.MaxFrameLen {
		w.d.counters.txErrors.Add(1)
		return
	}
	if len(w.frames) == txBatch || len(w.arena)+n > cap(w.arena) {
		w.flush()
	}
	l := len(w.arena)
	out := w.arena[l : l+n]
	w.arena = w.arena[:l+n]
	if tpid != 0 {
		copy(out, frame[:12])
		binary.BigEndian.PutUint16(out[12:], tpid)
		binary.BigEndian.PutUint16(out[14:], tci)
		copy(out[16:], frame[12:])
	} else {
		copy(out, frame)
	}
	w.frames = append(w.frames, [][]byte{zeroHeader[:], out})
	w.lens = append(w.lens, n)
}

// flush hands the queued frames to the back-end and counts them.
func (w *txWorker) flush() {
	if len(w.frames) == 0 {
		return
	}
	d := w.d
	for sent := 0; sent < len(w.frames); {
		n, err := d.be.WriteFrames(w.frames[sent:])
		d.mu.Lock()
		for i := sent; i < sent+n; i++ {
			d.countTxLocked(w.frames[i][1], w.lens[i])
		}
		d.mu.Unlock()
		sent += n
		if err == nil {
			continue
		}
		if errors.Is(err, netdev.ErrClosed) {
			d.counters.txErrors.Add(uint64(len(w.frames) - sent))
			break
		}
		d.counters.txErrors.Add(1) // frames[sent] alone failed
		sent++
	}
	clear(w.frames)
	w.frames, w.lens, w.arena = w.frames[:0], w.lens[:0], w.arena[:0]
}

// countTxLocked updates the statistics registers and vio's counters for
// one transmitted frame of n bytes (FCS not included).
func (d *Device) countTxLocked(frame []byte, n int) {
	d.counters.txFrames.Add(1)
	d.counters.txBytes.Add(uint64(n))
	d.addStatLocked(statGPTC, 1)
	d.addStatLocked(statTPT, 1)
	d.addStat64Locked(statGOTCL, uint64(n+4))
	d.addStat64Locked(statTOTL, uint64(n+4))
	d.addStatLocked(statPTC64+sizeBin(n+4), 1)
	switch {
	case isBroadcast(frame):
		d.addStatLocked(statBPTC, 1)
	case frame[0]&1 != 0:
		d.addStatLocked(statMPTC, 1)
	}
}

func isBroadcast(f []byte) bool {
	return f[0]&f[1]&f[2]&f[3]&f[4]&f[5] == 0xff
}
