// Package ide emulates a PIIX4-style PCI IDE controller with ATA disks and
// ATAPI CD-ROM drives, the storage that Linux's stock ata_piix (libata),
// sd_mod and sr_mod drive with no paravirtual driver in the guest: full
// virtualization of a disk, over any block.Backend.
//
// What the guest sees: PCI function 8086:7111 (class 0101) with two
// channels of two drive positions each. Each channel has its command block
// (data, error/features, sector count, LBA low/mid/high, device,
// status/command) and its control block (alternate status/device control),
// either at the ISA addresses 0x1f0/0x3f6 and 0x170/0x376 with IRQ 14/15
// (ModeLegacy) or behind I/O BARs 0-3 with the function's INTA# (ModeNative),
// and its bus-master DMA registers (command, status, PRD table address) in
// BAR4 in both modes.
//
// ATA disks answer IDENTIFY DEVICE (LBA28 and LBA48, multiword DMA 0-2 and
// UDMA 0-5, write cache, FLUSH CACHE (EXT), serial and model), READ/WRITE
// SECTORS (EXT), READ/WRITE MULTIPLE (EXT), READ/WRITE DMA (EXT), SET
// FEATURES, SET MULTIPLE MODE, FLUSH CACHE (EXT), READ VERIFY, SEEK and the
// power commands. ATAPI drives answer IDENTIFY PACKET DEVICE and PACKET,
// whose command set lives in atapi.go.
//
// The device is a state machine with no knowledge of KVM: register accesses
// arrive through bus.Devices, interrupts leave through irq.Lines (legacy)
// or the embedded pci.Config's INTx line (native), and guest memory is
// reached only through memory.DMA, so every PRD table and buffer address is
// checked.
//
// Where work happens: PIO is synchronous by nature (the guest reads the
// data port from a vCPU exit), so a PIO block is read from or written to the
// back-end on the vCPU thread, one block (at most 16 sectors, or 64 KiB for
// ATAPI) at a time. DMA transfers and cache flushes run on one worker
// goroutine per channel, which raises the interrupt when done; the vCPU only
// stores registers. Two goroutines per controller, for its lifetime.
//
// Robustness: a PRD walk stops after maxPRDs entries or at the transfer's
// end, whichever comes first; every transfer is bounded by its sector count
// (65536 sectors at most) and moves through a buffer of at most chunkSize
// bytes; an address outside guest memory ends the transfer with the
// bus-master error bit and an aborted command, never a panic; commands
// written while a drive is busy are ignored, as on hardware; a software
// reset or a bus-master stop makes any transfer in flight stop at its next
// chunk and drop its completion.
package ide

import (
	"bytes"
	"errors"
	"fmt"
	"sync"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/bus"
	"github.com/viovmm/vio/irq"
	"github.com/viovmm/vio/kvm"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/pci"
)

// PCI identity: the PIIX4 IDE function (ata_piix drives it with UDMA/33).
const (
	VendorID = 0x8086
	DeviceID = 0x7111
	Revision = 0x01

	classIDE = 0x0101

	// Programming interface: bits 0 and 2 put the primary and secondary
	// channels in native mode; bit 7 says the function is a bus master.
	progIfLegacy = 0x80
	progIfNative = 0x85
)

// Legacy (ISA) resources of the two channels.
const (
	PrimaryCmd    = 0x1f0
	PrimaryCtl    = 0x3f6
	PrimaryIRQ    = 14
	SecondaryCmd  = 0x170
	SecondaryCtl  = 0x376
	SecondaryIRQ  = 15
	CmdBlockSize  = 8
	LegacyCtlSize = 1

	// NativeCtlSize is the size of a native-mode control BAR; the
	// alternate status / device control register is at offset 2 of it.
	NativeCtlSize = 4
	// BMSize is the size of the bus-master BAR: 8 bytes per channel.
	BMSize = 16
)

// Mode chooses how the channels are decoded.
type Mode int

const (
	// ModeNative: channels behind BARs 0-3, interrupts on INTA#. This is
	// what a platform without ISA IRQ numbers (ACPI hardware-reduced
	// mode) needs: Linux routes INTA# through _PRT like any PCI device.
	ModeNative Mode = iota
	// ModeLegacy: the ISA ports and IRQs 14/15; the caller registers
	// CommandBlock and ControlBlock at the fixed addresses and gives the
	// lines with SetLegacyLines.
	ModeLegacy
)

// Kind is what sits at a drive position.
type Kind int

const (
	None  Kind = iota
	Disk       // ATA hard disk
	CDROM      // ATAPI CD/DVD-ROM, read-only, removable
)

// Drive describes one drive position.
type Drive struct {
	Kind Kind
	// Backend stores the disk or holds the ISO image; a CDROM may have
	// none (an empty drive). The controller does not own it.
	Backend block.Backend
	// ReadOnly makes a disk refuse writes (aborted commands). A CDROM
	// is always read-only.
	ReadOnly bool
	// Serial and Model appear in IDENTIFY data (20 and 40 ASCII bytes at
	// most); empty picks defaults.
	Serial, Model string
}

// Config describes a controller.
type Config struct {
	Mode Mode
	// Drives by position: primary master, primary slave, secondary
	// master, secondary slave.
	Drives [4]Drive
}

// ErrConfig reports a bad Config.
var ErrConfig = errors.New("ide: bad configuration")

// Stats are the controller's counters.
type Stats struct {
	Commands   uint64 `json:"commands"`
	ReadBytes  uint64 `json:"read_bytes"`
	WriteBytes uint64 `json:"write_bytes"`
	Flushes    uint64 `json:"flushes"`
	Errors     uint64 `json:"errors"`
	Interrupts uint64 `json:"interrupts"`
	PIOAccess  uint64 `json:"pio_accesses"`
}

// Controller is the IDE function. It implements pci.Function.
type Controller struct {
	*pci.Config
	mem  memory.DMA
	mode Mode

	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once

	mu     sync.Mutex // guards everything below and the channels' state
	ch     [2]*channel
	legacy [2]irq.Line
	intx   bool // the INTA# level as last set
	stats  Stats
}

var _ pci.Function = (*Controller)(nil)

// New builds a controller reaching guest memory through mem and starts its
// two DMA workers. Close stops them.
func New(mem memory.DMA, cfg Config) (*Controller, error) {
	if mem == nil {
		return nil, fmt.Errorf("%w: guest memory is required", ErrConfig)
	}
	if cfg.Mode != ModeNative && cfg.Mode != ModeLegacy {
		return nil, fmt.Errorf("%w: mode %d", ErrConfig, cfg.Mode)
	}
	c := &Controller{mem: mem, mode: cfg.Mode, stop: make(chan struct{})}
	for i := range c.ch {
		c.ch[i] = &channel{c: c, idx: i}
	}
	for pos, d := range cfg.Drives {
		dr, err := newDrive(d)
		if err != nil {
			return nil, fmt.Errorf("%w: drive %d: %v", ErrConfig, pos, err)
		}
		if dr == nil {
			continue
		}
		dr.ch = c.ch[pos/2]
		c.ch[pos/2].drives[pos%2] = dr
	}
	progIf, pin := uint32(progIfNative), uint8(1)
	if cfg.Mode == ModeLegacy {
		// A legacy-mode function interrupts on ISA IRQs 14 and 15, not
		// on a PCI pin, as the PIIX's IDE function does: no pin keeps
		// the guest's PCI core from routing an INTA# nothing drives.
		progIf, pin = progIfLegacy, 0
	}
	c.Config = pci.NewConfig(pci.Header{
		VendorID: VendorID, DeviceID: DeviceID, Revision: Revision,
		Class: classIDE<<8 | progIf, InterruptPin: pin,
	})
	if cfg.Mode == ModeNative {
		for i, ch := range c.ch {
			if err := c.Config.SetBAR(2*i, pci.BAR{Kind: pci.BARIO, Size: CmdBlockSize, Device: (*cmdBlock)(ch)}); err != nil {
				return nil, err
			}
			if err := c.Config.SetBAR(2*i+1, pci.BAR{Kind: pci.BARIO, Size: NativeCtlSize, Device: &ctlBlock{ch: ch, base: 2}}); err != nil {
				return nil, err
			}
		}
	}
	if err := c.Config.SetBAR(4, pci.BAR{Kind: pci.BARIO, Size: BMSize, Device: (*bmRegs)(c)}); err != nil {
		return nil, err
	}
	// IDETIM (0x40/0x42) with the decode-enable bit (15) set on both
	// channels: ata_piix treats a channel without it as disabled. The
	// timing registers 0x40-0x57 are the driver's to program; they change
	// nothing here.
	c.Config.SetBytes(0x40, []byte{0x00, 0x80, 0x00, 0x80})
	c.Config.SetWriteMask(0x40, bytes.Repeat([]byte{0xff}, 0x18))
	for _, ch := range c.ch {
		ch.reset()
	}
	for i, ch := range c.ch {
		kick, err := kvm.NewEventFD()
		if err != nil {
			for _, done := range c.ch[:i] {
				done.kick.Close()
			}
			return nil, err
		}
		ch.kick = kick
	}
	c.wg.Add(2)
	for _, ch := range c.ch {
		go ch.worker()
	}
	return c, nil
}

// BARMapped is part of pci.Function; the controller has nothing to move.
func (c *Controller) BARMapped(pci.Region, bool) {}

// Close stops the workers, waiting for a transfer in flight to finish its
// current chunk. It does not close the back-ends.
func (c *Controller) Close() error {
	c.once.Do(func() {
		close(c.stop)
		for _, ch := range c.ch {
			ch.kick.Close() // wakes a worker waiting for a kick
		}
	})
	c.wg.Wait()
	return nil
}

// CommandBlock returns channel ch's command block registers (8 ports), to
// be registered at PrimaryCmd or SecondaryCmd in legacy mode.
func (c *Controller) CommandBlock(ch int) bus.Device { return (*cmdBlock)(c.ch[ch&1]) }

// ControlBlock returns channel ch's alternate status / device control
// register (1 port), to be registered at PrimaryCtl or SecondaryCtl in
// legacy mode.
func (c *Controller) ControlBlock(ch int) bus.Device { return &ctlBlock{ch: c.ch[ch&1]} }

// SetLegacyLines attaches the interrupt lines of the two channels in
// legacy mode (ISA IRQ 14 and 15).
func (c *Controller) SetLegacyLines(primary, secondary irq.Line) {
	c.mu.Lock()
	c.legacy = [2]irq.Line{primary, secondary}
	c.mu.Unlock()
}

// Stats returns the counters.
func (c *Controller) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

// updateIRQLocked drives the interrupt outputs from the channels' INTRQ
// and nIEN. It runs with c.mu held so that level changes reach the line in
// the order they happened.
func (c *Controller) updateIRQLocked() {
	if c.mode == ModeLegacy {
		for i, ch := range c.ch {
			want := ch.irqOut()
			if want == ch.lineHigh {
				continue
			}
			ch.lineHigh = want
			if want {
				c.stats.Interrupts++
			}
			if l := c.legacy[i]; l != nil {
				l.SetLevel(want)
			}
		}
		return
	}
	want := c.ch[0].irqOut() || c.ch[1].irqOut()
	if want == c.intx {
		return
	}
	c.intx = want
	if want {
		c.stats.Interrupts++
	}
	c.Config.SetINTx(want)
}

// bmRegs is BAR4: per channel, command (0), status (2), PRD address (4-7).
type bmRegs Controller

func (b *bmRegs) Read(off uint64, data []byte) {
	c := (*Controller)(b)
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range data {
		o := off + uint64(i)
		if o >= BMSize {
			data[i] = 0xff
			continue
		}
		data[i] = c.ch[o/8].bmRead(int(o % 8))
	}
}

func (b *bmRegs) Write(off uint64, data []byte) {
	c := (*Controller)(b)
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range data {
		o := off + uint64(i)
		if o < BMSize {
			c.ch[o/8].bmWrite(int(o%8), data[i])
		}
	}
	c.updateIRQLocked()
}

// ErrNoDrive reports a position without a drive of the needed kind.
var ErrNoDrive = errors.New("ide: no CD-ROM drive at that position")

// ErrLocked reports an eject the guest has prevented.
var ErrLocked = errors.New("ide: the guest has locked the medium in the drive")

func (c *Controller) cdrom(pos int) (*drive, error) {
	if pos < 0 || pos > 3 {
		return nil, ErrNoDrive
	}
	d := c.ch[pos/2].drives[pos%2]
	if d == nil || d.kind != CDROM {
		return nil, ErrNoDrive
	}
	return d, nil
}

// Insert puts a medium into the CD-ROM drive at pos (replacing any), and
// tells the guest: a media event and a unit attention. The controller does
// not own be; it returns the medium it replaced, for the caller to close.
func (c *Controller) Insert(pos int, be block.Backend) (block.Backend, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d, err := c.cdrom(pos)
	if err != nil {
		return nil, err
	}
	old := d.cd.be
	if old == nil {
		old = d.cd.ejected
	}
	d.cd.insert(be, true)
	return old, nil
}

// Eject takes the medium out of the CD-ROM drive at pos, unless the guest
// has locked it (force overrides), and returns it for the caller to close.
func (c *Controller) Eject(pos int, force bool) (block.Backend, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d, err := c.cdrom(pos)
	if err != nil {
		return nil, err
	}
	if d.cd.locked && !force {
		return nil, ErrLocked
	}
	var old block.Backend
	if d.cd.be != nil {
		old = d.cd.remove()
	} else {
		old, d.cd.ejected = d.cd.ejected, nil
	}
	return old, nil
}
