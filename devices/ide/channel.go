package ide

import (
	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/kvm"
)

// Status register bits.
const (
	stERR  = 0x01
	stDRQ  = 0x08
	stDSC  = 0x10
	stDF   = 0x20
	stDRDY = 0x40
	stBSY  = 0x80
)

// Error register bits.
const (
	errABRT = 0x04
	errIDNF = 0x10
	errUNC  = 0x40
)

// Device control register bits.
const (
	ctlNIEN = 0x02
	ctlSRST = 0x04
	ctlHOB  = 0x80
)

// Device register bits.
const (
	devDEV = 0x10
	devLBA = 0x40
)

const sectorSize = 512

// pioOp is what the data port is doing for a drive.
type pioOp int

const (
	opNone     pioOp = iota
	opIdentify       // data in: IDENTIFY (PACKET) DEVICE
	opRead           // data in: READ SECTORS / MULTIPLE
	opWrite          // data out: WRITE SECTORS / MULTIPLE
	opPacket         // data out: the 12-byte ATAPI command packet
	opATAPIIn        // data in: an ATAPI command's data
)

// channel is one IDE cable with up to two drives. All fields are guarded
// by the controller's mutex.
type channel struct {
	c      *Controller
	idx    int
	drives [2]*drive // nil: no drive at that position
	sel    int       // the DEV bit of the device register
	ctl    byte      // device control register
	intrq  bool      // the selected drive's INTRQ
	// lineHigh is the legacy line's level as last set.
	lineHigh bool

	// Bus-master registers.
	bmCmd    byte
	bmStatus byte
	prd      uint32

	// DMA: the worker takes job when kicked; gen changes on every reset
	// and bus-master stop so a transfer in flight drops its result.
	//
	// The kick is an eventfd, not a channel: the vCPU thread that starts
	// the bus master writes it and goes back into the guest, and the
	// kernel wakes the worker's poller. A channel send from the vCPU
	// thread would make the worker runnable on that thread's P, which sits
	// in KVM_RUN: another thread must then steal it, and the Go runtime's
	// monitor, seeing a P in a system call with work queued, takes it back
	// and keeps polling at its fastest, a host timer interrupt (a guest
	// exit) at a time. virtio queues are woken the same way, by KVM's
	// ioeventfds.
	kick *kvm.EventFD
	job  *job
	gen  uint64
}

// drive is one ATA disk or ATAPI drive. Taskfile registers are per drive
// because both drives on a cable latch every register write, while only
// the selected one answers reads, and an ATA and an ATAPI drive leave
// different signatures after a reset.
type drive struct {
	ch      *channel
	kind    Kind
	be      block.Backend
	ro      bool
	sectors int64 // 512-byte sectors (disks)
	serial  string
	model   string

	// Taskfile: [0] the current value, [1] the previous one (HOB).
	feature, nsect, lbal, lbam, lbah [2]byte
	device                           byte
	status, err                      byte

	// ATA settings.
	mult             int  // sectors per DRQ block of READ/WRITE MULTIPLE; 0 disabled
	wcache           bool // write cache enabled
	pioMode, dmaMode byte // as set by SET FEATURES 03h (0: default)

	// PIO transfer state.
	op   pioOp
	buf  []byte
	pos  int
	lba  int64 // next sector
	left int64 // sectors still to transfer
	blk  int64 // sectors per DRQ block

	cd *cdrom // ATAPI state, for kind CDROM
}

// maxMult is the largest READ/WRITE MULTIPLE block (IDENTIFY word 47).
const maxMult = 16

func newDrive(d Drive) (*drive, error) {
	dr := &drive{kind: d.Kind, be: d.Backend, ro: d.ReadOnly, serial: d.Serial, model: d.Model, wcache: true}
	if len(d.Serial) > 20 || len(d.Model) > 40 {
		return nil, errString("serial is at most 20 bytes and model at most 40")
	}
	switch d.Kind {
	case None:
		return nil, nil
	case Disk:
		if d.Backend == nil {
			return nil, errString("a disk needs a back-end")
		}
		dr.sectors = d.Backend.Size() / sectorSize
		if dr.sectors == 0 {
			return nil, errString("the disk is smaller than one 512-byte sector")
		}
		if r, ok := d.Backend.(block.ReadOnlyReporter); ok && r.ReadOnly() {
			dr.ro = true
		}
		if dr.model == "" {
			dr.model = "VIO HARDDISK"
		}
	case CDROM:
		dr.ro = true
		dr.cd = &cdrom{}
		if d.Backend != nil {
			dr.cd.insert(d.Backend, false)
		}
		if dr.model == "" {
			dr.model = "VIO DVD-ROM"
		}
	default:
		return nil, errString("unknown drive kind")
	}
	if dr.serial == "" {
		dr.serial = "VIO0000000001"
	}
	return dr, nil
}

type errString string

func (e errString) Error() string { return string(e) }

// reset puts the channel in its power-on state.
func (ch *channel) reset() {
	ch.ctl = 0
	ch.bmCmd, ch.bmStatus, ch.prd = 0, 0, 0
	ch.softReset()
}

// softReset is what SRST does to both drives: abort whatever runs, leave
// each drive's signature and select drive 0.
func (ch *channel) softReset() {
	ch.gen++
	ch.job = nil
	ch.intrq = false
	ch.sel = 0
	for _, d := range ch.drives {
		if d != nil {
			d.reset()
		}
	}
}

// selected returns the selected drive, or nil.
func (ch *channel) selected() *drive { return ch.drives[ch.sel] }

// responder is the drive that answers register reads: the selected one,
// or, when it is absent, the other (which answers status with 0).
func (ch *channel) responder() *drive {
	if d := ch.drives[ch.sel]; d != nil {
		return d
	}
	return ch.drives[ch.sel^1]
}

func (ch *channel) irqOut() bool { return ch.intrq && ch.ctl&ctlNIEN == 0 }

// raise asserts INTRQ, as a drive does when it wants the host's attention;
// the bus-master status records it too.
func (ch *channel) raise() {
	ch.intrq = true
	ch.bmStatus |= bmINTR
	ch.c.updateIRQLocked()
}

func (d *drive) reset() {
	d.op, d.buf, d.pos = opNone, nil, 0
	d.left = 0
	d.device = 0
	d.signature()
	d.err = 0x01 // diagnostics passed
	if d.kind == CDROM {
		d.status = 0 // a packet device does not set DRDY after a reset
	} else {
		d.status = stDRDY | stDSC
	}
}

// signature loads the registers that tell the host what kind of drive
// answered (ATA 0000h, ATAPI EB14h in LBA high/mid).
func (d *drive) signature() {
	d.nsect[0], d.lbal[0] = 1, 1
	if d.kind == CDROM {
		d.lbam[0], d.lbah[0] = 0x14, 0xeb
	} else {
		d.lbam[0], d.lbah[0] = 0, 0
	}
}

// Completion helpers: each leaves the drive ready and interrupts.
func (d *drive) complete() {
	d.op, d.buf = opNone, nil
	d.status = stDRDY | stDSC
	d.ch.raise()
}

func (d *drive) fail(errBits byte) {
	d.op, d.buf = opNone, nil
	d.err = errBits
	d.status = stDRDY | stDSC | stERR
	d.ch.c.stats.Errors++
	d.ch.raise()
}

// cmdBlock is a channel's command block: data (0), error/features (1),
// sector count (2), LBA low/mid/high (3-5), device (6), status/command (7).
type cmdBlock channel

func (b *cmdBlock) Read(off uint64, data []byte) {
	ch := (*channel)(b)
	c := ch.c
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stats.PIOAccess++
	if off == 0 {
		ch.dataIn(data)
		return
	}
	for i := range data {
		data[i] = ch.readReg(off + uint64(i))
	}
}

func (b *cmdBlock) Write(off uint64, data []byte) {
	ch := (*channel)(b)
	c := ch.c
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stats.PIOAccess++
	if off == 0 {
		ch.dataOut(data)
		return
	}
	for i := range data {
		ch.writeReg(off+uint64(i), data[i])
	}
}

func (ch *channel) readReg(off uint64) byte {
	d := ch.responder()
	if d == nil {
		return 0 // an empty cable: nothing drives the bus
	}
	hob := 0
	if ch.ctl&ctlHOB != 0 {
		hob = 1
	}
	switch off {
	case 1:
		return d.err
	case 2:
		return d.nsect[hob]
	case 3:
		return d.lbal[hob]
	case 4:
		return d.lbam[hob]
	case 5:
		return d.lbah[hob]
	case 6:
		return d.device | 0xa0
	case 7:
		if d != ch.selected() {
			return 0
		}
		// Reading status acknowledges the interrupt.
		if ch.intrq {
			ch.intrq = false
			ch.c.updateIRQLocked()
		}
		return d.status
	}
	return 0xff
}

func (ch *channel) writeReg(off uint64, v byte) {
	if off >= 1 && off <= 5 {
		ch.ctl &^= ctlHOB
	}
	for _, d := range ch.drives {
		if d == nil {
			continue
		}
		var r *[2]byte
		switch off {
		case 1:
			r = &d.feature
		case 2:
			r = &d.nsect
		case 3:
			r = &d.lbal
		case 4:
			r = &d.lbam
		case 5:
			r = &d.lbah
		case 6:
			d.device = v &^ 0xa0
		}
		if r != nil {
			r[1], r[0] = r[0], v
		}
	}
	switch off {
	case 6:
		ch.sel = int(v>>4) & 1
	case 7:
		d := ch.selected()
		if d == nil || d.status&stBSY != 0 {
			return // commands to a busy or absent drive are ignored
		}
		ch.intrq = false
		ch.c.updateIRQLocked()
		ch.c.stats.Commands++
		d.command(v)
	}
}

// ctlBlock is a channel's alternate status (read) / device control (write)
// register, at offset base of the range it is registered at.
type ctlBlock struct {
	ch   *channel
	base uint64
}

func (b *ctlBlock) Read(off uint64, data []byte) {
	ch := b.ch
	ch.c.mu.Lock()
	defer ch.c.mu.Unlock()
	for i := range data {
		data[i] = 0xff
		if off+uint64(i) != b.base {
			continue
		}
		if d := ch.selected(); d != nil {
			data[i] = d.status
		} else {
			data[i] = 0
		}
	}
}

func (b *ctlBlock) Write(off uint64, data []byte) {
	ch := b.ch
	ch.c.mu.Lock()
	defer ch.c.mu.Unlock()
	for i, v := range data {
		if off+uint64(i) == b.base {
			ch.writeCtl(v)
		}
	}
}

func (ch *channel) writeCtl(v byte) {
	old := ch.ctl
	ch.ctl = v
	switch {
	case v&ctlSRST != 0 && old&ctlSRST == 0:
		// Reset asserted: both drives go busy and drop their work.
		ch.gen++
		ch.job = nil
		for _, d := range ch.drives {
			if d != nil {
				d.op, d.buf = opNone, nil
				d.status = stBSY
			}
		}
		ch.intrq = false
	case v&ctlSRST == 0 && old&ctlSRST != 0:
		ch.softReset()
	}
	ch.c.updateIRQLocked()
}

// dataIn serves a read of the data port (16 or 32 bits wide).
func (ch *channel) dataIn(data []byte) {
	d := ch.selected()
	if d == nil || d.status&stDRQ == 0 || d.op == opNone || d.op == opWrite || d.op == opPacket {
		for i := range data {
			data[i] = 0xff
		}
		return
	}
	n := copy(data, d.buf[d.pos:])
	for i := n; i < len(data); i++ {
		data[i] = 0
	}
	d.pos += n
	if d.pos >= len(d.buf) {
		d.blockIn()
	}
}

// dataOut serves a write of the data port.
func (ch *channel) dataOut(data []byte) {
	d := ch.selected()
	if d == nil || d.status&stDRQ == 0 || (d.op != opWrite && d.op != opPacket) {
		return
	}
	n := copy(d.buf[d.pos:], data)
	d.pos += n
	if d.pos >= len(d.buf) {
		d.blockOut()
	}
}

// blockIn runs when the host has read the whole DRQ block.
func (d *drive) blockIn() {
	switch d.op {
	case opIdentify:
		d.op, d.buf = opNone, nil
		d.status = stDRDY | stDSC
	case opRead:
		d.left -= int64(len(d.buf) / sectorSize)
		d.lba += int64(len(d.buf) / sectorSize)
		if d.left <= 0 {
			// The last block ends the command with no interrupt.
			d.op, d.buf = opNone, nil
			d.status = stDRDY | stDSC
			return
		}
		d.readBlock()
	case opATAPIIn:
		d.atapiNextChunk()
	}
}

// blockOut runs when the host has written the whole DRQ block.
func (d *drive) blockOut() {
	switch d.op {
	case opWrite:
		n := int64(len(d.buf) / sectorSize)
		if _, err := d.be.WriteAt(d.buf, d.lba*sectorSize); err != nil {
			d.fail(errABRT)
			return
		}
		d.ch.c.stats.WriteBytes += uint64(len(d.buf))
		if !d.wcache {
			if err := d.be.Flush(); err != nil {
				d.fail(errABRT)
				return
			}
		}
		d.left -= n
		d.lba += n
		if d.left <= 0 {
			d.complete()
			return
		}
		d.startBlock(true)
		d.status = stDRDY | stDSC | stDRQ
		d.ch.raise()
	case opPacket:
		cdb := d.buf
		d.buf = nil
		d.packet(cdb)
	}
}

// startBlock sizes the next DRQ block.
func (d *drive) startBlock(out bool) {
	n := min(d.blk, d.left)
	size := int(n) * sectorSize
	if cap(d.buf) >= size {
		d.buf = d.buf[:size]
	} else {
		d.buf = make([]byte, size)
	}
	d.pos = 0
}

// readBlock fills the next DRQ block of a PIO read from the back-end and
// interrupts.
func (d *drive) readBlock() {
	d.startBlock(false)
	if _, err := d.be.ReadAt(d.buf, d.lba*sectorSize); err != nil {
		d.fail(errUNC)
		return
	}
	d.ch.c.stats.ReadBytes += uint64(len(d.buf))
	d.status = stDRDY | stDSC | stDRQ
	d.ch.raise()
}
