// Package e1000 emulates an Intel 82540EM Gigabit Ethernet controller, the
// NIC that Linux's stock e1000 driver (and most other guests) drive without
// paravirtual drivers: full virtualization of a network device, over any
// netdev.Backend.
//
// What the guest sees: PCI function 8086:100E (class 020000) with the
// registers in BAR0 (128 KiB of MMIO) and the same registers through the
// IOADDR/IODATA window of BAR1 (64 bytes of I/O ports; Linux issues the
// device reset through it), a 64-word Microwire EEPROM (through EECD
// bit-banging or EERD) holding the MAC address and a valid checksum, a
// Marvell 88E1011 PHY (through MDIC) with a 1000 Mb/s full-duplex link that
// is always up, one receive and one transmit descriptor ring, receive
// filtering (exact addresses in RAL/RAH, the multicast hash table, the
// VLAN filter table, promiscuous and broadcast modes), VLAN tag stripping
// and insertion, checksum offload and TCP segmentation (TSO) on transmit,
// the interrupt cause and mask registers on a level-triggered INTx line,
// interrupt moderation (ITR, RDTR/RADV, TIDV/TADV) and the statistics
// registers, read-to-clear.
//
// The device is a state machine with no knowledge of KVM: guest register
// accesses arrive through the bus.Devices of its BARs, the interrupt leaves
// through the irq.Line given to the embedded pci.Config, and guest memory
// is reached only through memory.DMA, so every descriptor and buffer
// address is checked.
//
// Work happens off the vCPU threads: a write of TDT only signals the
// transmit goroutine, which walks the ring, copies each packet out of guest
// memory, checksums and segments it in software and hands the frames to
// the back-end in batches. The receive goroutine reads from the back-end
// only while it can deliver: it holds a batch of frames until the guest has
// posted enough receive descriptors, so the back-end's queue (a TAP's)
// buffers the rest. Two goroutines per device, for its lifetime; nothing a
// guest does creates more.
//
// Robustness: ring lengths are multiples of 128 bytes up to 1 MiB as the
// register masks them; a head or tail index outside its ring stops that
// ring (no DMA) until the guest reprograms it; a transmit packet is bounded
// in bytes (64 KiB of payload plus headers) and descriptors (256), one pass
// over the ring handles at most the ring's length in descriptors, and a
// descriptor or buffer outside guest memory is skipped (transmit) or
// completed with the RX error bit (receive), as a PCI master abort would
// leave it, never a panic. TSO with a segment size below 64 bytes, or with
// header offsets outside its header, is dropped and counted.
//
// Not emulated: wake-on-LAN and manageability, flow-control frames, the
// 82542's register aliases, TBI/SERDES media, the receive checksum
// computation (frames are delivered with "ignore checksum" unless the
// back-end vouched for them), MSI (the 82540EM has none), jumbo frames
// beyond 16 KiB, diagnostic loopback, and EEPROM writes.
package e1000

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	stdnet "net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/viovmm/vio/bus"
	"github.com/viovmm/vio/kvm"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/pci"
)

// PCI identity of the 82540EM (desktop adapter).
const (
	VendorID    = 0x8086
	DeviceID    = 0x100e
	SubsystemID = 0x001e
	Revision    = 0x03
	Class       = 0x020000

	// MMIOSize and IOSize are the sizes of BAR0 and BAR1.
	MMIOSize = 128 << 10
	IOSize   = 64
)

const (
	numRegs = MMIOSize / 4

	// maxRingBytes is the largest ring RDLEN/TDLEN can describe (bits
	// 19:7): 65536 descriptors.
	maxRingBytes = 1 << 20
	lenMask      = maxRingBytes - 128
)

// Config describes an e1000 device.
type Config struct {
	// MAC is the address in the EEPROM; nil picks a random locally
	// administered unicast address.
	MAC stdnet.HardwareAddr
	// Clock drives the moderation timers; nil is the system clock.
	Clock Clock
}

// ErrConfig reports a bad Config.
var ErrConfig = errors.New("e1000: bad configuration")

// Device is one 82540EM. It implements pci.Function.
type Device struct {
	*pci.Config
	be    netdev.Backend
	mem   memory.DMA
	clock Clock
	mac   [6]byte
	image [eepromWords]uint16

	// txKick wakes the transmit goroutine (TDT or TCTL written). It is an
	// eventfd, not a channel, for the reason devices/ide's DMA kick is:
	// the vCPU thread that writes TDT only writes the eventfd and goes
	// back into the guest, and the kernel wakes the goroutine's poller,
	// instead of the Go scheduler queueing the goroutine on the P of a
	// thread that sits in KVM_RUN. nil without workers (newDevice).
	txKick *kvm.EventFD
	rxWake chan struct{} // RDT or RCTL written, or reset; buffered 1
	stop   chan struct{}
	wg     sync.WaitGroup
	once   sync.Once

	counters counters

	mu      sync.Mutex // guards everything below
	regs    [numRegs]uint32
	mw      microwire
	phy     phy
	ioaddr  uint32
	icr     uint32
	ims     uint32
	line    bool      // the INTx output as last set
	lastInt time.Time // when it last went high, for ITR
	itr     Timer
	itrSeq  uint64
	rxDelay delayTimer
	txDelay delayTimer
	// rxGen and txGen change whenever the guest reprograms a ring or
	// resets the device, so that a worker finishing a pass over the old
	// ring does not write its head index over the new one.
	rxGen, txGen uint64
}

var _ pci.Function = (*Device)(nil)

// New returns an e1000 on back-end be that reaches guest memory through
// mem, and starts its two workers. The device does not own be: the caller
// closes it after Close. If be implements netdev.Offloader, it is asked
// to deliver frames that need no offloads, since the 82540EM receives only
// ordinary frames.
func New(be netdev.Backend, mem memory.DMA, cfg Config) (*Device, error) {
	d, err := newDevice(be, mem, cfg)
	if err != nil {
		return nil, err
	}
	if d.txKick, err = kvm.NewEventFD(); err != nil {
		return nil, err
	}
	d.wg.Add(2)
	go d.txLoop()
	go d.rxLoop()
	return d, nil
}

// newDevice builds the device without starting its workers.
func newDevice(be netdev.Backend, mem memory.DMA, cfg Config) (*Device, error) {
	if be == nil || mem == nil {
		return nil, fmt.Errorf("%w: a back-end and guest memory are required", ErrConfig)
	}
	d := &Device{
		be: be, mem: mem, clock: cfg.Clock,
		rxWake: make(chan struct{}, 1),
		stop:   make(chan struct{}),
	}
	if d.clock == nil {
		d.clock = SystemClock{}
	}
	switch {
	case cfg.MAC == nil:
		if _, err := rand.Read(d.mac[:]); err != nil {
			return nil, fmt.Errorf("e1000: random MAC: %w", err)
		}
		d.mac[0] = d.mac[0]&^1 | 2
	case len(cfg.MAC) != 6 || cfg.MAC[0]&1 != 0:
		return nil, fmt.Errorf("%w: MAC %v is not a unicast Ethernet address", ErrConfig, cfg.MAC)
	default:
		copy(d.mac[:], cfg.MAC)
	}
	d.image = eepromImage(d.mac)
	if o, ok := be.(netdev.Offloader); ok {
		if err := o.SetRecvOffloads(0); err != nil {
			return nil, fmt.Errorf("e1000: back-end offloads: %w", err)
		}
	}
	d.Config = pci.NewConfig(pci.Header{
		VendorID: VendorID, DeviceID: DeviceID, Revision: Revision, Class: Class,
		SubsystemVendorID: VendorID, SubsystemID: SubsystemID, InterruptPin: 1,
	})
	if err := d.Config.SetBAR(0, pci.BAR{Kind: pci.BARMem32, Size: MMIOSize, Device: (*mmio)(d)}); err != nil {
		return nil, err
	}
	if err := d.Config.SetBAR(1, pci.BAR{Kind: pci.BARIO, Size: IOSize, Device: (*ioPorts)(d)}); err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.resetLocked()
	d.mu.Unlock()
	return d, nil
}

// MAC returns the device's permanent address.
func (d *Device) MAC() stdnet.HardwareAddr { return append(stdnet.HardwareAddr(nil), d.mac[:]...) }

// BARMapped implements pci.Function; the device needs no notice.
func (d *Device) BARMapped(pci.Region, bool) {}

// Close stops the workers and lowers the interrupt line. Frames held for
// the guest are dropped. It does not close the back-end.
func (d *Device) Close() error {
	d.once.Do(func() {
		close(d.stop)
		if d.txKick != nil {
			d.txKick.Close() // wakes the transmit goroutine
		}
		_ = d.be.SetReadDeadline(time.Unix(1, 0))
		d.wg.Wait()
		d.mu.Lock()
		d.rxDelay.stop()
		d.txDelay.stop()
		d.stopITRLocked()
		d.icr, d.ims = 0, 0
		d.updateIRQLocked()
		d.mu.Unlock()
	})
	return nil
}

// resetLocked puts every register in its power-on state, as CTRL.RST
// does. The EEPROM's address is loaded into receive address 0.
func (d *Device) resetLocked() {
	d.regs = [numRegs]uint32{}
	d.regs[regCTRL/4] = ctrlFD | ctrlSLU | ctrlSpd1G | ctrlASDE
	d.regs[regPBA/4] = 0x0010_0030 // 48 KiB receive, 16 KiB transmit buffer
	d.regs[regVET/4] = 0x8100
	d.regs[regRAL0/4] = binary.LittleEndian.Uint32(d.mac[0:4])
	d.regs[regRAL0/4+1] = uint32(binary.LittleEndian.Uint16(d.mac[4:6])) | 1<<31
	d.mw = microwire{}
	d.phy.reset()
	d.ioaddr = 0
	d.icr, d.ims = 0, 0
	d.rxDelay.stop()
	d.txDelay.stop()
	d.rxDelay.cause, d.txDelay.cause = icrRXT0, icrTXDW
	d.stopITRLocked()
	d.lastInt = time.Time{}
	d.rxGen++
	d.txGen++
	d.updateIRQLocked()
	wake(d.rxWake)
}

// kickTX wakes the transmit goroutine. A write to an eventfd fails only
// when its counter would overflow: a wake-up is pending then anyway.
func (d *Device) kickTX() {
	if d.txKick != nil {
		_ = d.txKick.Trigger()
	}
}

func wake(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// mmio is BAR0: the registers, 32 bits each.
type mmio Device

// ioPorts is BAR1: IOADDR at 0 selects a register, IODATA at 4 accesses
// it.
type ioPorts Device

var (
	_ bus.Device = (*mmio)(nil)
	_ bus.Device = (*ioPorts)(nil)
)

// Read implements bus.Device. Accesses are meant to be aligned dwords;
// narrower ones see the bytes of the containing dword (with the dword's
// read side effects), wider ones are split into dwords.
func (m *mmio) Read(offset uint64, data []byte) {
	d := (*Device)(m)
	d.counters.regReads.Add(1)
	d.mu.Lock()
	defer d.mu.Unlock()
	readBytes(d, offset, data)
}

func readBytes(d *Device, offset uint64, data []byte) {
	for i := 0; i < len(data); {
		off := offset + uint64(i)
		base := off &^ 3
		var b [4]byte
		if base < MMIOSize {
			binary.LittleEndian.PutUint32(b[:], d.readLocked(uint32(base)))
		}
		n := copy(data[i:], b[off-base:])
		i += n
	}
}

// Write implements bus.Device. A write narrower than a dword merges into
// the register's current value.
func (m *mmio) Write(offset uint64, data []byte) {
	d := (*Device)(m)
	d.counters.regWrites.Add(1)
	d.mu.Lock()
	defer d.mu.Unlock()
	writeBytes(d, offset, data)
}

func writeBytes(d *Device, offset uint64, data []byte) {
	for i := 0; i < len(data); {
		off := offset + uint64(i)
		base := off &^ 3
		var b [4]byte
		n := 4 - int(off-base)
		if n > len(data)-i {
			n = len(data) - i
		}
		if base >= MMIOSize {
			i += n
			continue
		}
		if n != 4 {
			binary.LittleEndian.PutUint32(b[:], d.peekLocked(uint32(base)))
		}
		copy(b[off-base:], data[i:i+n])
		d.writeLocked(uint32(base), binary.LittleEndian.Uint32(b[:]))
		i += n
	}
}

// Read implements bus.Device for the I/O window.
func (p *ioPorts) Read(offset uint64, data []byte) {
	d := (*Device)(p)
	d.counters.regReads.Add(1)
	d.mu.Lock()
	defer d.mu.Unlock()
	var v uint32
	switch offset &^ 3 {
	case 0:
		v = d.ioaddr
	case 4:
		if d.ioaddr < MMIOSize {
			v = d.readLocked(d.ioaddr &^ 3)
		}
	}
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	copy(data, b[offset&3:])
}

// Write implements bus.Device for the I/O window.
func (p *ioPorts) Write(offset uint64, data []byte) {
	d := (*Device)(p)
	d.counters.regWrites.Add(1)
	if len(data) != 4 || offset&3 != 0 {
		return // the driver only uses dword accesses here
	}
	v := binary.LittleEndian.Uint32(data)
	d.mu.Lock()
	defer d.mu.Unlock()
	switch offset {
	case 0:
		d.ioaddr = v & (MMIOSize - 1) &^ 3
	case 4:
		d.writeLocked(d.ioaddr, v)
	}
}

// peekLocked returns a register's value without read side effects.
func (d *Device) peekLocked(off uint32) uint32 {
	switch off {
	case regICR:
		return d.icr
	case regIMS:
		return d.ims
	}
	return d.regs[off/4]
}

// readLocked serves a guest read of the dword at off.
func (d *Device) readLocked(off uint32) uint32 {
	switch {
	case off == regSTATUS:
		return statusFD | statusLU | statusSpeed1G
	case off == regEECD:
		v := d.regs[off/4]&eecdWritable | eecdPRES
		if v&eecdREQ != 0 {
			v |= eecdGNT
		}
		if d.mw.do {
			v |= eecdDO
		}
		return v
	case off == regICR:
		// Reading ICR clears every cause, which lowers the line.
		v := d.icr
		d.icr = 0
		d.updateIRQLocked()
		return v
	case off == regIMS:
		return d.ims
	case off == regICS || off == regIMC:
		return 0
	case off >= regStatsBase && off < regStatsEnd:
		v := d.regs[off/4]
		d.regs[off/4] = 0
		return v
	}
	return d.regs[off/4]
}

// writeLocked serves a guest write of the dword at off.
func (d *Device) writeLocked(off, v uint32) {
	r := &d.regs[off/4]
	switch {
	case off == regCTRL:
		if v&ctrlRST != 0 {
			d.resetLocked()
			return
		}
		if v&ctrlPHYRST != 0 {
			d.phy.reset()
		}
		*r = v &^ ctrlRST
	case off == regSTATUS:
	case off == regEECD:
		*r = v & eecdWritable
		d.mw.write(v, &d.image)
	case off == regEERD:
		if v&eerdStart == 0 {
			return
		}
		addr := v >> eerdAddrShift & 0xff
		var data uint32
		if addr < eepromWords {
			data = uint32(d.image[addr])
		}
		*r = data<<eerdDataShift | addr<<eerdAddrShift | eerdDone
	case off == regMDIC:
		d.mdicLocked(v)
	case off == regICR:
		d.icr &^= v // write 1 to clear
		d.updateIRQLocked()
	case off == regICS:
		d.raiseLocked(v & icrMask)
	case off == regIMS:
		d.ims |= v & icrMask
		d.updateIRQLocked()
	case off == regIMC:
		d.ims &^= v
		d.updateIRQLocked()
	case off == regITR || off == regRADV || off == regTIDV || off == regTADV:
		*r = v & 0xffff
	case off == regRDTR:
		*r = v & 0xffff
		if v&(1<<31) != 0 { // FPD: flush the pending receive interrupt now
			d.fireDelayLocked(&d.rxDelay, d.rxDelay.seq)
		}
	case off == regRCTL:
		*r = v
		wake(d.rxWake)
	case off == regTCTL:
		if *r&tctlEN != 0 && v&tctlEN == 0 {
			d.txGen++ // disabling transmit abandons a partial packet
		}
		*r = v
		d.kickTX()
	case off == regRDBAL || off == regTDBAL:
		*r = v &^ 0xf
		d.ringChangedLocked(off)
	case off == regRDBAH || off == regTDBAH:
		*r = v
		d.ringChangedLocked(off)
	case off == regRDLEN || off == regTDLEN:
		*r = v & lenMask
		d.ringChangedLocked(off)
	case off == regRDH || off == regTDH:
		*r = v & 0xffff
		d.ringChangedLocked(off)
	case off == regRDT:
		*r = v & 0xffff
		wake(d.rxWake)
	case off == regTDT:
		*r = v & 0xffff
		d.kickTX()
	case off >= regStatsBase && off < regStatsEnd:
		// read-only counters
	default:
		*r = v
	}
}

func (d *Device) ringChangedLocked(off uint32) {
	if off < regTDBAL {
		d.rxGen++
		wake(d.rxWake)
	} else {
		d.txGen++
		d.kickTX()
	}
}

// mdicLocked runs one MDIO transaction; it completes at once.
func (d *Device) mdicLocked(v uint32) {
	reg := v >> mdicRegShift & 31
	res := v &^ (mdicReady | mdicError)
	switch {
	case v>>mdicPHYShift&31 != phyAddr:
		res |= mdicError
	case v&(3<<26) == mdicOpRead:
		res = res&^0xffff | uint32(d.phy.read(reg))
	case v&(3<<26) == mdicOpWrite:
		d.phy.write(reg, uint16(v))
	default:
		res |= mdicError
	}
	d.regs[regMDIC/4] = res | mdicReady
	if v&mdicIE != 0 {
		d.raiseLocked(icrMDAC)
	}
}

// raiseLocked sets interrupt causes.
func (d *Device) raiseLocked(cause uint32) {
	d.icr |= cause
	d.updateIRQLocked()
}

// minITR is the shortest interval between interrupts, in ITR's 256 ns
// units, once the guest turns throttling on: the 8254x manuals' ITR rules
// say the adapter's observable interrupt rate never exceeds 7813 a second,
// that is 500 units (128 µs). QEMU's e1000 keeps the same floor. Linux's
// adaptive ITR asks for up to 70000 a second at "lowest latency"; a real
// adapter, and now vio, gives it 7813.
const minITR = 500

// updateIRQLocked drives the INTx output from ICR & IMS. A rising edge
// waits until ITR's interval (in 256 ns units, at least minITR) has passed
// since the last one; the line falls at once. ITR 0 turns throttling off. The level is applied under d.mu, so that
// concurrent updates reach the line in the order they were decided.
func (d *Device) updateIRQLocked() {
	want := d.icr&d.ims != 0
	if want == d.line {
		return
	}
	if want {
		now := d.clock.Now()
		if itr := d.regs[regITR/4] & 0xffff; itr != 0 && !d.lastInt.IsZero() {
			itr = max(itr, minITR)
			next := d.lastInt.Add(time.Duration(itr) * 256 * time.Nanosecond)
			if now.Before(next) {
				if d.itr == nil {
					seq := d.itrSeq
					d.itr = d.clock.AfterFunc(next.Sub(now), func() { d.itrExpired(seq) })
				}
				d.counters.throttled.Add(1)
				return
			}
		}
		d.lastInt = now
		d.counters.interrupts.Add(1)
	}
	d.line = want
	_ = d.Config.SetINTx(want) // a line error has no one to go to; the next change retries
}

func (d *Device) itrExpired(seq uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if seq != d.itrSeq {
		return
	}
	d.itr = nil
	d.itrSeq++
	d.updateIRQLocked()
}

func (d *Device) stopITRLocked() {
	if d.itr != nil {
		d.itr.Stop()
		d.itr = nil
	}
	d.itrSeq++
}

// delayLocked applies a moderation delay pair to one event: with a zero
// packet delay (or immediate set) the cause is raised now; otherwise the
// packet timer restarts and the absolute timer starts if it is not
// running.
func (d *Device) delayLocked(t *delayTimer, pktDelay, absDelay uint32, immediate bool) {
	if immediate || pktDelay == 0 {
		t.stop()
		d.raiseLocked(t.cause)
		return
	}
	if t.pkt != nil {
		t.pkt.Stop()
	}
	seq := t.seq
	t.pkt = d.clock.AfterFunc(time.Duration(pktDelay)*delayUnit, func() { d.delayExpired(t, seq) })
	if t.abs == nil && absDelay != 0 {
		t.abs = d.clock.AfterFunc(time.Duration(absDelay)*delayUnit, func() { d.delayExpired(t, seq) })
	}
}

func (d *Device) delayExpired(t *delayTimer, seq uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.fireDelayLocked(t, seq)
}

// fireDelayLocked raises a delayed cause if the arming seq is still
// current and a timer is pending.
func (d *Device) fireDelayLocked(t *delayTimer, seq uint64) {
	if seq != t.seq || t.pkt == nil && t.abs == nil {
		return
	}
	t.stop()
	d.raiseLocked(t.cause)
}

// addStatLocked adds n to a 32-bit statistics register, saturating as
// the hardware's counters do.
func (d *Device) addStatLocked(idx int, n uint32) {
	r := &d.regs[regStatsBase/4+idx]
	if *r+n < *r {
		*r = ^uint32(0)
		return
	}
	*r += n
}

// addStat64Locked adds n to a 64-bit low/high statistics pair.
func (d *Device) addStat64Locked(idx int, n uint64) {
	lo, hi := &d.regs[regStatsBase/4+idx], &d.regs[regStatsBase/4+idx+1]
	v := uint64(*hi)<<32 | uint64(*lo) + n
	*lo, *hi = uint32(v), uint32(v>>32)
}

// sizeBin is the index (0..5) of a frame length's 64/127/255/511/1023/
// 1522-and-up statistics bin (lengths include the 4-byte FCS).
func sizeBin(n int) int {
	switch {
	case n <= 64:
		return 0
	case n <= 127:
		return 1
	case n <= 255:
		return 2
	case n <= 511:
		return 3
	case n <= 1023:
		return 4
	}
	return 5
}

// counters are vio's own counts, for --stats.
type counters struct {
	txFrames, txBytes, txErrors, txTSO   atomic.Uint64
	rxFrames, rxBytes, rxErrors, rxDrops atomic.Uint64
	rxFiltered, rxWaits                  atomic.Uint64
	interrupts, throttled                atomic.Uint64
	regReads, regWrites                  atomic.Uint64
}

// Stats are a device's counters since it was created.
type Stats struct {
	// Frames and bytes (Ethernet frames without FCS) sent to and
	// received from the back-end; a TSO packet counts as its segments.
	TxFrames, TxBytes, RxFrames, RxBytes uint64
	// TxErrors are transmit packets dropped as malformed (too long, too
	// many descriptors, a buffer outside guest memory, a bad TSO context)
	// or refused by the back-end; TxTSO the TSO packets segmented.
	TxErrors, TxTSO uint64
	// RxErrors are frames from the back-end that were malformed or too
	// long for the guest's configuration; RxDrops frames lost because
	// the guest's ring could never hold them or was broken;
	// RxFiltered frames the address filters rejected; RxWaits the times
	// receive waited for the guest to post descriptors.
	RxErrors, RxDrops, RxFiltered, RxWaits uint64
	// Interrupts counts rising edges of INTx; Throttled the rising edges
	// ITR postponed.
	Interrupts, Throttled uint64
	// RegReads and RegWrites count guest accesses to BAR0 and BAR1.
	RegReads, RegWrites uint64
}

// Stats returns the device's counters.
func (d *Device) Stats() Stats {
	c := &d.counters
	return Stats{
		TxFrames: c.txFrames.Load(), TxBytes: c.txBytes.Load(), RxFrames: c.rxFrames.Load(), RxBytes: c.rxBytes.Load(),
		TxErrors: c.txErrors.Load(), TxTSO: c.txTSO.Load(),
		RxErrors: c.rxErrors.Load(), RxDrops: c.rxDrops.Load(), RxFiltered: c.rxFiltered.Load(), RxWaits: c.rxWaits.Load(),
		Interrupts: c.interrupts.Load(), Throttled: c.throttled.Load(),
		RegReads: c.regReads.Load(), RegWrites: c.regWrites.Load(),
	}
}
