package ide

import (
	"encoding/binary"

	"github.com/viovmm/vio/block"
)

// The ATAPI CD-ROM: the ATA commands a packet device answers, and the MMC
// command set carried by PACKET, on a read-only medium of 2048-byte blocks.

const cdBlock = 2048

// Sense keys.
const (
	senseNone           = 0x0
	senseNotReady       = 0x2
	senseMediumError    = 0x3
	senseIllegalRequest = 0x5
	senseUnitAttention  = 0x6
	senseDataProtect    = 0x7
	senseAbortedCommand = 0xb
)

// Additional sense codes.
const (
	ascInvalidOpcode    = 0x20
	ascLBAOutOfRange    = 0x21
	ascInvalidField     = 0x24
	ascWriteProtected   = 0x27
	ascMediumChanged    = 0x28
	ascSavingNotSupp    = 0x39
	ascMediumNotPresent = 0x3a
	ascRemovalPrevented = 0x53
)

// Interrupt reason (sector count register) bits.
const (
	irCoD = 0x01
	irIO  = 0x02
)

// Media event codes of GET EVENT STATUS NOTIFICATION.
const (
	evNone    = 0
	evNew     = 2
	evRemoval = 3
)

// cdrom is the state of an ATAPI drive; guarded by the controller's mutex.
type cdrom struct {
	be       block.Backend // nil: no medium
	ejected  block.Backend // taken out by the guest; a load puts it back
	blocks   int64
	locked   bool
	trayOpen bool
	ua       bool // a unit attention (medium changed) is pending
	event    byte // media event not yet reported
	sense    [3]byte

	dma bool  // the current PACKET asked for DMA
	bcl int64 // its byte count limit
	x   reply // its data, for PIO
}

// reply is an ATAPI command's data: bytes, or a range of the medium.
type reply struct {
	data  []byte
	be    block.Backend
	off   int64
	total int64
	done  int64
}

func (cd *cdrom) insert(be block.Backend, notify bool) {
	cd.be, cd.ejected = be, nil
	cd.blocks = be.Size() / cdBlock
	cd.trayOpen = false
	if notify {
		cd.event = evNew
		cd.ua = true
	}
}

func (cd *cdrom) remove() block.Backend {
	be := cd.be
	cd.be, cd.blocks = nil, 0
	cd.event = evRemoval
	return be
}

// atapiCommand executes an ATA command written to a packet device.
func (d *drive) atapiCommand(cmd byte) {
	switch cmd {
	case cmdPacket:
		if d.feature[0]&0x02 != 0 { // overlapped: not supported
			d.fail(errABRT)
			return
		}
		d.cd.dma = d.feature[0]&0x01 != 0
		d.cd.bcl = int64(d.lbam[0]) | int64(d.lbah[0])<<8
		d.op = opPacket
		d.buf = make([]byte, 12)
		d.pos = 0
		d.nsect[0] = irCoD
		d.status = stDRDY | stDSC | stDRQ
	case cmdIdentifyPacket:
		d.buf = d.identifyPacket()
		d.op = opIdentify
		d.status = stDRDY | stDSC | stDRQ
		d.ch.raise()
	case cmdIdentify:
		// A packet device aborts IDENTIFY DEVICE and leaves its
		// signature, which is how the host tells it apart.
		d.signature()
		d.fail(errABRT)
	case cmdDeviceReset:
		d.reset()
	case cmdDiagnose:
		d.signature()
		d.err = 0x01
		d.complete()
	case cmdSetFeatures:
		if !d.setFeatures() {
			d.fail(errABRT)
			return
		}
		d.complete()
	case cmdCheckPower:
		d.nsect[0] = 0xff
		d.complete()
	case cmdIdleImm, cmdStandbyImm, cmdIdle, cmdStandby, cmdSleep:
		d.complete()
	default:
		d.fail(errABRT)
	}
}

// identifyPacket builds IDENTIFY PACKET DEVICE data: a removable CD-ROM
// with 12-byte packets and DRQ within 50 µs of PACKET (no interrupt for
// the command packet).
func (d *drive) identifyPacket() []byte {
	var w [256]uint16
	w[0] = 2<<14 | 5<<8 | 1<<7 | 2<<5
	putString(w[10:20], d.serial)
	putString(w[23:27], "1.0")
	putString(w[27:47], d.model)
	w[49] = 1<<11 | 1<<9 | 1<<8
	w[53] = 0x7
	w[63] = 0x07
	if m := d.dmaMode; m >= 0x20 && m <= 0x22 {
		w[63] |= 1 << (8 + m - 0x20)
	}
	w[64] = 0x03
	w[65], w[66], w[67], w[68] = 120, 120, 120, 120
	w[80] = 0xf0
	w[82] = 1 << 4 // PACKET feature set
	w[83] = 1 << 14
	w[84] = 1 << 14
	w[85] = 1 << 4
	w[87] = 1 << 14
	w[88] = 0x3f
	if m := d.dmaMode; m >= 0x40 && m <= 0x45 {
		w[88] |= 1 << (8 + m - 0x40)
	}
	w[93] = 1<<14 | 1<<13 | 1
	return identifyBytes(&w)
}

// packet executes a 12-byte command packet.
func (d *drive) packet(cdb []byte) {
	cd := d.cd
	r, key, asc, ascq := cd.exec(cdb)
	if key != senseNone {
		d.atapiFail(key, asc, ascq)
		return
	}
	if r.data != nil {
		r.total = int64(len(r.data))
	}
	if r.total == 0 {
		d.atapiDone()
		return
	}
	if cd.dma {
		d.status = stDRDY | stDSC | stBSY
		d.ch.submit(&job{drive: d, atapi: true, be: r.be, off: r.off, n: r.total, data: r.data})
		return
	}
	cd.x = r
	d.atapiNextChunk()
}

// atapiNextChunk offers the next PIO chunk of a reply, at most the byte
// count limit the host gave, or ends the command.
func (d *drive) atapiNextChunk() {
	x := &d.cd.x
	if x.done >= x.total {
		d.cd.x = reply{}
		d.atapiDone()
		return
	}
	limit := d.cd.bcl
	if limit == 0 || limit == 0xffff {
		limit = 0xfffe
	}
	n := min(x.total-x.done, limit)
	if n < x.total-x.done {
		// Only the last chunk may be odd; a limit below one word
		// still moves one.
		n = max(n&^1, 2)
	}
	if cap(d.buf) >= int(n) {
		d.buf = d.buf[:n]
	} else {
		d.buf = make([]byte, n)
	}
	if x.data != nil {
		copy(d.buf, x.data[x.done:])
	} else {
		if _, err := x.be.ReadAt(d.buf, x.off+x.done); err != nil {
			d.cd.x = reply{}
			d.atapiFail(senseMediumError, 0x11, 0)
			return
		}
		d.ch.c.stats.ReadBytes += uint64(n)
	}
	x.done += n
	d.pos = 0
	d.op = opATAPIIn
	d.lbam[0], d.lbah[0] = byte(n), byte(n>>8)
	d.nsect[0] = irIO
	d.status = stDRDY | stDSC | stDRQ
	d.ch.raise()
}

// atapiDone ends a packet command successfully.
func (d *drive) atapiDone() {
	d.op, d.buf = opNone, nil
	d.nsect[0] = irIO | irCoD
	d.status = stDRDY | stDSC
	d.ch.raise()
}

// atapiFail ends a packet command with CHECK CONDITION and the sense data
// that REQUEST SENSE will return.
func (d *drive) atapiFail(key, asc, ascq byte) {
	d.cd.sense = [3]byte{key, asc, ascq}
	d.op, d.buf = opNone, nil
	d.nsect[0] = irIO | irCoD
	d.err = key << 4
	if key == senseIllegalRequest || key == senseAbortedCommand {
		d.err |= errABRT
	}
	d.status = stDRDY | stDSC | stERR
	d.ch.c.stats.Errors++
	d.ch.raise()
}

func be16(b []byte) int64 { return int64(binary.BigEndian.Uint16(b)) }
func be32(b []byte) int64 { return int64(binary.BigEndian.Uint32(b)) }

// exec runs an MMC command. It returns the reply, or a sense key and
// additional sense code for CHECK CONDITION.
func (cd *cdrom) exec(cdb []byte) (r reply, key, asc, ascq byte) {
	op := cdb[0]
	if op != 0x03 {
		cd.sense = [3]byte{}
	}
	switch op {
	case 0x12, 0x03, 0x46, 0x4a: // answer even with a unit attention pending
	default:
		if cd.ua {
			cd.ua = false
			return r, senseUnitAttention, ascMediumChanged, 0
		}
	}
	notReady := func() (reply, byte, byte, byte) {
		q := byte(1)
		if cd.trayOpen {
			q = 2
		}
		return reply{}, senseNotReady, ascMediumNotPresent, q
	}
	invalidField := func() (reply, byte, byte, byte) {
		return reply{}, senseIllegalRequest, ascInvalidField, 0
	}
	data := func(b []byte, alloc int64) (reply, byte, byte, byte) {
		if int64(len(b)) > alloc {
			b = b[:alloc]
		}
		return reply{data: b}, senseNone, 0, 0
	}
	switch op {
	case 0x00: // TEST UNIT READY
		if cd.be == nil {
			return notReady()
		}
		return r, 0, 0, 0
	case 0x03: // REQUEST SENSE
		s := cd.sense
		if cd.ua {
			cd.ua = false
			s = [3]byte{senseUnitAttention, ascMediumChanged, 0}
		}
		cd.sense = [3]byte{}
		b := make([]byte, 18)
		b[0] = 0x70
		b[2] = s[0]
		b[7] = 10
		b[12], b[13] = s[1], s[2]
		return data(b, int64(cdb[4]))
	case 0x12: // INQUIRY
		if cdb[1]&1 != 0 {
			return invalidField()
		}
		b := make([]byte, 36)
		b[0] = 0x05 // CD/DVD device
		b[1] = 0x80 // removable
		b[2] = 0x05
		b[3] = 0x32 // ATAPI-style response data format
		b[4] = 31
		copy(b[8:], "VIO     ")
		copy(b[16:], "VIO DVD-ROM     ")
		copy(b[32:], "1.0 ")
		return data(b, be16(cdb[3:5]))
	case 0x1b: // START STOP UNIT
		loej, start := cdb[4]&2 != 0, cdb[4]&1 != 0
		switch {
		case loej && !start:
			if cd.locked {
				return r, senseIllegalRequest, ascRemovalPrevented, 2
			}
			if cd.be != nil {
				cd.ejected = cd.remove()
			}
			cd.trayOpen = true
		case loej && start:
			cd.trayOpen = false
			if cd.be == nil && cd.ejected != nil {
				cd.insert(cd.ejected, true)
			}
		}
		return r, 0, 0, 0
	case 0x1e: // PREVENT ALLOW MEDIUM REMOVAL
		cd.locked = cdb[4]&1 != 0
		return r, 0, 0, 0
	case 0x25: // READ CAPACITY
		if cd.be == nil {
			return notReady()
		}
		b := make([]byte, 8)
		binary.BigEndian.PutUint32(b, uint32(max(cd.blocks-1, 0)))
		binary.BigEndian.PutUint32(b[4:], cdBlock)
		return data(b, 8)
	case 0x28, 0xa8: // READ(10), READ(12)
		if cd.be == nil {
			return notReady()
		}
		lba := be32(cdb[2:6])
		n := be16(cdb[7:9])
		if op == 0xa8 {
			n = be32(cdb[6:10])
		}
		if lba > cd.blocks || n > cd.blocks-lba {
			return r, senseIllegalRequest, ascLBAOutOfRange, 0
		}
		return reply{be: cd.be, off: lba * cdBlock, total: n * cdBlock}, 0, 0, 0
	case 0x2b, 0xbb, 0x35: // SEEK(10), SET CD SPEED, SYNCHRONIZE CACHE
		if op == 0x2b && cd.be == nil {
			return notReady()
		}
		return r, 0, 0, 0
	case 0x43: // READ TOC/PMA/ATIP
		if cd.be == nil {
			return notReady()
		}
		b, ok := cd.toc(cdb)
		if !ok {
			return invalidField()
		}
		return data(b, be16(cdb[7:9]))
	case 0x46: // GET CONFIGURATION
		b, ok := cd.configuration(cdb)
		if !ok {
			return invalidField()
		}
		return data(b, be16(cdb[7:9]))
	case 0x4a: // GET EVENT STATUS NOTIFICATION
		if cdb[1]&1 == 0 { // only polled operation
			return invalidField()
		}
		return data(cd.events(cdb[4]), be16(cdb[7:9]))
	case 0x51: // READ DISC INFORMATION
		if cd.be == nil {
			return notReady()
		}
		b := make([]byte, 34)
		b[1] = 32
		b[2] = 0x0e // complete disc, complete last session
		b[3], b[4], b[5], b[6] = 1, 1, 1, 1
		return data(b, be16(cdb[7:9]))
	case 0x5a: // MODE SENSE(10)
		b, key, asc := cd.modeSense(cdb)
		if key != senseNone {
			return r, key, asc, 0
		}
		return data(b, be16(cdb[7:9]))
	case 0xbd: // MECHANISM STATUS
		b := make([]byte, 8)
		if cd.trayOpen {
			b[1] = 0x10
		}
		return data(b, be16(cdb[8:10]))
	case 0x0a, 0x2a, 0xaa, 0x2e, 0x04, 0x53, 0x5b, 0xa1, 0x3b, 0x55:
		// WRITE(6/10/12), WRITE AND VERIFY, FORMAT UNIT, RESERVE
		// TRACK, CLOSE TRACK, BLANK, WRITE BUFFER, MODE SELECT: the
		// medium is read-only.
		return r, senseDataProtect, ascWriteProtected, 0
	}
	return r, senseIllegalRequest, ascInvalidOpcode, 0
}

// msf converts a block address to minutes/seconds/frames (2 s lead-in).
func msf(lba int64) (m, s, f byte) {
	lba += 150
	return byte(lba / (75 * 60)), byte(lba / 75 % 60), byte(lba % 75)
}

func putAddr(b []byte, lba int64, useMSF bool) {
	if useMSF {
		m, s, f := msf(lba)
		b[0], b[1], b[2], b[3] = 0, m, s, f
		return
	}
	binary.BigEndian.PutUint32(b, uint32(lba))
}

// toc answers READ TOC formats 0 (TOC), 1 (session info) and 2 (raw TOC)
// for a single-session disc with one data track.
func (cd *cdrom) toc(cdb []byte) ([]byte, bool) {
	useMSF := cdb[1]&2 != 0
	format := cdb[2] & 0xf
	if format == 0 {
		format = cdb[9] >> 6 // the older place for it
	}
	track := cdb[6]
	var b []byte
	switch format {
	case 0:
		if track > 1 && track != 0xaa {
			return nil, false
		}
		b = []byte{0, 0, 1, 1}
		if track <= 1 {
			e := make([]byte, 8)
			e[1], e[2] = 0x14, 1
			putAddr(e[4:], 0, useMSF)
			b = append(b, e...)
		}
		e := make([]byte, 8)
		e[1], e[2] = 0x14, 0xaa
		putAddr(e[4:], cd.blocks, useMSF)
		b = append(b, e...)
	case 1:
		b = make([]byte, 12)
		b[2], b[3] = 1, 1
		b[5], b[6] = 0x14, 1
		putAddr(b[8:], 0, useMSF)
	case 2:
		b = []byte{0, 0, 1, 1}
		m, s, f := msf(cd.blocks)
		for _, e := range [][3]byte{{0xa0, 1, 0}, {0xa1, 1, 0}, {0xa2, m, s}, {1, 0, 2}} {
			d := make([]byte, 11)
			d[0], d[1], d[3] = 1, 0x14, e[0]
			d[8], d[9] = e[1], e[2]
			if e[0] == 0xa2 {
				d[10] = f
			}
			b = append(b, d...)
		}
	default:
		return nil, false
	}
	binary.BigEndian.PutUint16(b, uint16(len(b)-2))
	return b, true
}

// profile is the current MMC profile: none, CD-ROM or DVD-ROM by size.
func (cd *cdrom) profile() uint16 {
	switch {
	case cd.be == nil:
		return 0
	case cd.blocks <= 360000: // up to an 80-minute CD
		return 0x0008
	}
	return 0x0010
}

// configuration answers GET CONFIGURATION.
func (cd *cdrom) configuration(cdb []byte) ([]byte, bool) {
	rt := cdb[1] & 3
	start := uint16(be16(cdb[2:4]))
	if rt == 3 {
		return nil, false
	}
	prof := cd.profile()
	type feature struct {
		code    uint16
		flags   byte // version<<2 | persistent<<1 | current
		body    []byte
		current bool
	}
	cur := func(b bool) byte {
		if b {
			return 1
		}
		return 0
	}
	blocking := byte(1)
	if prof == 0x0010 {
		blocking = 16
	}
	lock := byte(0x29) // tray, eject, lock
	if cd.locked {
		lock |= 0x04
	}
	fs := []feature{
		{0x0000, 0x03, []byte{0x00, 0x10, cur(prof == 0x10), 0, 0x00, 0x08, cur(prof == 0x08), 0}, true},
		{0x0001, 0x0b, []byte{0, 0, 0, 2, 0, 0, 0, 0}, true}, // core, ATAPI
		{0x0003, 0x03, []byte{lock, 0, 0, 0}, true},
		{0x0010, cur(prof != 0), []byte{0, 0, 0x08, 0, 0, blocking, 0, 0}, prof != 0},
		{0x001e, 0x08 | cur(prof == 0x08), []byte{0, 0, 0, 0}, prof == 0x08},
	}
	b := make([]byte, 8)
	binary.BigEndian.PutUint16(b[6:], prof)
	for _, f := range fs {
		if f.code < start || rt == 1 && !f.current || rt == 2 && f.code != start {
			continue
		}
		h := []byte{byte(f.code >> 8), byte(f.code), f.flags, byte(len(f.body))}
		b = append(append(b, h...), f.body...)
	}
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	return b, true
}

// events answers GET EVENT STATUS NOTIFICATION for the media class, the
// only one supported; a media event is reported once.
func (cd *cdrom) events(classes byte) []byte {
	if classes&0x10 == 0 {
		return []byte{0, 2, 0x80, 0x10} // no event available
	}
	b := []byte{0, 6, 0x04, 0x10, cd.event, 0, 0, 0}
	if cd.be != nil {
		b[5] |= 0x02
	}
	if cd.trayOpen {
		b[5] |= 0x01
	}
	cd.event = evNone
	return b
}

// modeSense answers MODE SENSE(10) for the error recovery (01h), CD (0Dh)
// and capabilities (2Ah) pages, or all of them (3Fh).
func (cd *cdrom) modeSense(cdb []byte) ([]byte, byte, byte) {
	pc := cdb[2] >> 6
	page := cdb[2] & 0x3f
	if pc == 3 {
		return nil, senseIllegalRequest, ascSavingNotSupp
	}
	changeable := pc == 1
	pages := map[byte][]byte{
		0x01: {0x01, 6, 0, 5, 0, 0, 0, 0},
		0x0d: {0x0d, 6, 0, 0, 0, 60, 0, 75},
	}
	locking := byte(0x29)
	if cd.locked {
		locking |= 0x02
	}
	caps := make([]byte, 22)
	caps[0], caps[1] = 0x2a, 20
	caps[2] = 0x0b // reads CD-R, CD-RW, DVD-ROM
	caps[3] = 0    // writes nothing
	caps[4] = 0x40 // multi-session
	caps[6] = locking
	binary.BigEndian.PutUint16(caps[8:], 16*176)
	binary.BigEndian.PutUint16(caps[12:], 512)
	binary.BigEndian.PutUint16(caps[14:], 16*176)
	pages[0x2a] = caps
	var body []byte
	switch page {
	case 0x3f:
		body = append(append(append(body, pages[0x01]...), pages[0x0d]...), pages[0x2a]...)
	default:
		p, ok := pages[page]
		if !ok {
			return nil, senseIllegalRequest, ascInvalidField
		}
		body = append(body, p...)
	}
	if changeable {
		// Nothing can be changed: the page headers with zero bodies.
		for i := 0; i < len(body); {
			n := int(body[i+1])
			clear(body[i+2 : i+2+n])
			i += 2 + n
		}
	}
	b := append(make([]byte, 8), body...)
	binary.BigEndian.PutUint16(b, uint16(len(b)-2))
	return b, senseNone, 0
}
