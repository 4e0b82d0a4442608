// Package pci models conventional PCI (and the PCI Express configuration
// space layout) as a guest sees it: type-0 configuration headers with BARs
// and capability lists, a root bus behind a host bridge reachable through
// the legacy 0xCF8/0xCFC mechanism and through ECAM (MMCONFIG), BAR
// allocation and re-mapping on a bus.Bus when the guest reprograms a BAR or
// toggles decoding, MSI-X and INTx.
//
// The package knows nothing about KVM. Interrupt delivery leaves through
// irq.Line (INTx) and MSIRouter (MSI-X); the VMM implements those with
// irqfds and GSI routing. Package pcitest has test doubles for both.
//
// The split of responsibilities:
//   - Config is the configuration space of one function: bytes, per-bit
//     write masks, write-1-to-clear bits, BARs and capabilities. Device
//     models embed a *Config and add the BAR handlers.
//   - Function is what the root bus needs from a device. A *Config
//     provides most of it; a VFIO device can instead implement it by
//     merging emulated and physical configuration space.
//   - Root is bus 0: the host bridge at 00.0, the config access mechanisms,
//     BAR allocation and the (re)registration of BAR ranges.
//
// Extension points. A VFIO function implements Function itself: it
// forwards most configuration accesses to the physical device and keeps a
// *Config for the parts it must emulate (BARs, MSI-X), choosing per
// offset; BARMapped tells it where to mmap the device's BARs. SR-IOV is an
// extended capability (AddExtendedCapability on an Express function) plus
// virtual functions added to the Root at the routing IDs its First VF
// Offset and VF Stride compute; the Root already takes functions 1-7 and
// any device number.
//
// Wiring by the VMM: register Root.ConfigPorts at ConfigAddressPort on
// the PIO bus and Root.ECAM on the MMIO bus (and describe it in ACPI MCFG),
// give each MSIX an MSIRouter (KVM GSI routes + irqfds), attach each INTx
// pin's irq.Line with Config.SetINTxLine and store the GSI in the
// interrupt line register (Config.SetBytes(RegInterruptLine, ...)) for
// guests that route INTx without ACPI.
package pci

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/viovmm/vio/bus"
	"github.com/viovmm/vio/irq"
)

// Sizes of a function's configuration space.
const (
	ConfigSize         = 256  // conventional PCI
	ExtendedConfigSize = 4096 // PCI Express
)

// Offsets of type-0 header registers.
const (
	RegVendorID          = 0x00
	RegDeviceID          = 0x02
	RegCommand           = 0x04
	RegStatus            = 0x06
	RegRevisionID        = 0x08
	RegClassCode         = 0x09 // prog-if, subclass, base class (3 bytes)
	RegCacheLineSize     = 0x0c
	RegLatencyTimer      = 0x0d
	RegHeaderType        = 0x0e
	RegBAR0              = 0x10
	RegSubsystemVendorID = 0x2c
	RegSubsystemID       = 0x2e
	RegROMAddress        = 0x30
	RegCapabilitiesPtr   = 0x34
	RegInterruptLine     = 0x3c
	RegInterruptPin      = 0x3d
)

// Command register bits.
const (
	CommandIO          = 1 << 0
	CommandMemory      = 1 << 1
	CommandBusMaster   = 1 << 2
	CommandParity      = 1 << 6
	CommandSERR        = 1 << 8
	CommandINTxDisable = 1 << 10
)

// Status register bits.
const (
	StatusINTx    = 1 << 3
	StatusCapList = 1 << 4
)

// Capability IDs.
const (
	CapPowerManagement = 0x01
	CapMSI             = 0x05
	CapVendor          = 0x09
	CapExpress         = 0x10
	CapMSIX            = 0x11
)

// NumBARs is the number of BAR registers of a type-0 header.
const NumBARs = 6

// Header holds the identity of a function.
type Header struct {
	VendorID, DeviceID             uint16
	Revision                       uint8
	Class                          uint32 // base<<16 | sub<<8 | prog-if
	SubsystemVendorID, SubsystemID uint16
	InterruptPin                   uint8 // 0 none, 1..4 = INTA..INTD
	MultiFunction                  bool  // header type bit 7, on function 0
	Express                        bool  // 4 KiB configuration space
}

// BARKind is what a BAR decodes.
type BARKind uint8

// BAR kinds. A Mem64 BAR takes two BAR registers (i and i+1).
const (
	BARUnused BARKind = iota
	BARMem32
	BARMem64
	BARIO

	// barHigh marks the register holding a 64-bit BAR's upper half.
	barHigh BARKind = 0xff
)

// Space is an address space a Region lives in.
type Space uint8

// Address spaces.
const (
	SpaceMemory Space = iota
	SpaceIO
)

func (s Space) String() string {
	if s == SpaceIO {
		return "io"
	}
	return "mmio"
}

// BAR describes one base address register as the device implements it.
type BAR struct {
	Kind         BARKind
	Size         uint64 // power of two; ≥16 for memory, 4..256 for I/O
	Prefetchable bool
	// Device handles guest accesses; offsets are relative to the BAR's
	// current base.
	Device bus.Device
}

// Region is a BAR as currently decoded: the range the root bus registers
// on the MMIO or PIO bus.
type Region struct {
	BAR    int
	Space  Space
	Addr   uint64
	Size   uint64
	Device bus.Device
}

// Errors returned by Config's device-side setup methods.
var (
	ErrBadBAR        = errors.New("pci: invalid BAR")
	ErrNoCapSpace    = errors.New("pci: no room for capability")
	ErrBadCapability = errors.New("pci: invalid capability")
)

// CapabilityHooks lets a capability's owner observe and override guest
// accesses to it. Offsets are relative to the capability's first byte (its
// ID). Hooks run without the Config lock held, so they may call Config
// methods.
type CapabilityHooks struct {
	// Read, if set, may overwrite data after it was filled from the stored
	// bytes.
	Read func(offset int, data []byte)
	// Write, if set, is called after the write was merged into the stored
	// bytes under the write mask.
	Write func(offset int, data []byte)
}

type capRange struct {
	off, len int
	hooks    CapabilityHooks
}

// Config is the configuration space of one type-0 function.
//
// Guest writes go through a per-bit write mask and a write-1-to-clear mask,
// which is enough to express the BAR sizing protocol (the address bits
// below the BAR size are read-only zeros, so writing all ones reads back
// the size mask), read-only identity registers and sticky status bits.
// All methods are safe for concurrent use.
type Config struct {
	mu    sync.Mutex
	size  int
	data  [ExtendedConfigSize]byte
	wmask [ExtendedConfigSize]byte // bits the guest may write
	w1c   [ExtendedConfigSize]byte // bits a guest write of 1 clears
	bars  [NumBARs]BAR
	caps  []capRange
	// lastCap is the offset of the last capability in the list (0: none);
	// nextFree the first free byte after the standard header.
	lastCap, nextFree int
	// Extended (PCI Express) capabilities live at 0x100 and above.
	lastExtCap, nextExtFree int

	sriov *SRIOV   // the PF's SR-IOV capability (AddSRIOV)
	vf    *vfPlace // set on a VF's configuration space (SRIOV.NewVFConfig)

	line      irq.Line
	intxLevel bool // device's view of its INTx output
	lineHigh  bool // what was last told to line
}

// NewConfig returns a configuration space with h's identity, all BARs
// unused, no capabilities, decoding disabled.
func NewConfig(h Header) *Config {
	c := &Config{size: ConfigSize, nextFree: 0x40, nextExtFree: ConfigSize}
	if h.Express {
		c.size = ExtendedConfigSize
	}
	le := binary.LittleEndian
	le.PutUint16(c.data[RegVendorID:], h.VendorID)
	le.PutUint16(c.data[RegDeviceID:], h.DeviceID)
	c.data[RegRevisionID] = h.Revision
	c.data[RegClassCode] = byte(h.Class)
	c.data[RegClassCode+1] = byte(h.Class >> 8)
	c.data[RegClassCode+2] = byte(h.Class >> 16)
	if h.MultiFunction {
		c.data[RegHeaderType] = 0x80
	}
	le.PutUint16(c.data[RegSubsystemVendorID:], h.SubsystemVendorID)
	le.PutUint16(c.data[RegSubsystemID:], h.SubsystemID)
	c.data[RegInterruptPin] = h.InterruptPin

	cmdMask := uint16(CommandIO | CommandMemory | CommandBusMaster | CommandParity | CommandSERR | CommandINTxDisable)
	le.PutUint16(c.wmask[RegCommand:], cmdMask)
	// Error bits of the status register are write-1-to-clear.
	le.PutUint16(c.w1c[RegStatus:], 0xf900)
	c.wmask[RegCacheLineSize] = 0xff
	c.wmask[RegLatencyTimer] = 0xff
	c.wmask[RegInterruptLine] = 0xff
	return c
}

// Size returns 256 or 4096.
func (c *Config) Size() int { return c.size }

// SetBAR declares BAR i. It must be called before the function is added to
// a Root. A Mem64 BAR also occupies register i+1.
func (c *Config) SetBAR(i int, b BAR) error {
	if i < 0 || i >= NumBARs {
		return fmt.Errorf("%w: index %d", ErrBadBAR, i)
	}
	if b.Size == 0 || b.Size&(b.Size-1) != 0 {
		return fmt.Errorf("%w: BAR%d size %#x is not a power of two", ErrBadBAR, i, b.Size)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bars[i].Kind != BARUnused {
		return fmt.Errorf("%w: BAR%d already in use", ErrBadBAR, i)
	}
	off := RegBAR0 + 4*i
	le := binary.LittleEndian
	if c.vf != nil {
		// A VF's BAR registers are read-only zero; the PF's VF BARs
		// place it (vfRegionsLocked).
		if b.Kind != BARMem32 && b.Kind != BARMem64 {
			return fmt.Errorf("%w: VF BAR%d kind %d (memory only)", ErrBadBAR, i, b.Kind)
		}
		if b.Kind == BARMem64 {
			if i == NumBARs-1 || c.bars[i+1].Kind != BARUnused {
				return fmt.Errorf("%w: 64-bit BAR%d needs BAR%d free", ErrBadBAR, i, i+1)
			}
			c.bars[i+1] = BAR{Kind: barHigh}
		}
		c.bars[i] = b
		return nil
	}
	switch b.Kind {
	case BARMem32, BARMem64:
		if b.Size < 16 || b.Kind == BARMem32 && b.Size > 1<<31 {
			return fmt.Errorf("%w: BAR%d size %#x", ErrBadBAR, i, b.Size)
		}
		var low uint32
		if b.Prefetchable {
			low |= 1 << 3
		}
		mask := ^(b.Size - 1)
		if b.Kind == BARMem64 {
			if i == NumBARs-1 || c.bars[i+1].Kind != BARUnused {
				return fmt.Errorf("%w: 64-bit BAR%d needs BAR%d free", ErrBadBAR, i, i+1)
			}
			low |= 2 << 1
			le.PutUint32(c.wmask[off+4:], uint32(mask>>32))
			c.bars[i+1] = BAR{Kind: barHigh}
		}
		le.PutUint32(c.data[off:], low)
		le.PutUint32(c.wmask[off:], uint32(mask)&^0xf)
	case BARIO:
		if b.Size < 4 || b.Size > 256 {
			return fmt.Errorf("%w: I/O BAR%d size %#x", ErrBadBAR, i, b.Size)
		}
		le.PutUint32(c.data[off:], 1)
		le.PutUint32(c.wmask[off:], uint32(^(b.Size-1))&^0x3)
	default:
		return fmt.Errorf("%w: BAR%d kind %d", ErrBadBAR, i, b.Kind)
	}
	c.bars[i] = b
	return nil
}

// BAR returns BAR i as declared, and its current base address as
// programmed by the guest (decoding may be off).
func (c *Config) BAR(i int) (BAR, uint64) {
	if i < 0 || i >= NumBARs {
		return BAR{}, 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bars[i].Kind == barHigh {
		return BAR{}, 0 // the upper half of the 64-bit BAR i-1
	}
	return c.bars[i], c.barAddr(i)
}

func (c *Config) barAddr(i int) uint64 {
	le := binary.LittleEndian
	off := RegBAR0 + 4*i
	v := uint64(le.Uint32(c.data[off:]))
	switch c.bars[i].Kind {
	case BARMem32:
		return v &^ 0xf
	case BARMem64:
		return v&^0xf | uint64(le.Uint32(c.data[off+4:]))<<32
	case BARIO:
		return v &^ 0x3
	}
	return 0
}

// AddCapability appends a capability to the list. body is the capability
// after its two header bytes (ID and next pointer); wmask (nil: read-only,
// otherwise len(body)) gives the guest-writable bits of body. It returns the
// capability's offset. The next pointers are maintained here: the guest sees
// a list in the order capabilities were added.
func (c *Config) AddCapability(id uint8, body, wmask []byte, hooks CapabilityHooks) (int, error) {
	if wmask != nil && len(wmask) != len(body) {
		return 0, fmt.Errorf("%w: mask length %d for body length %d", ErrBadCapability, len(wmask), len(body))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	off := (c.nextFree + 3) &^ 3
	n := 2 + len(body)
	if off+n > ConfigSize {
		return 0, fmt.Errorf("%w: %d bytes at %#x", ErrNoCapSpace, n, off)
	}
	c.data[off] = id
	c.data[off+1] = 0
	copy(c.data[off+2:], body)
	copy(c.wmask[off+2:], wmask)
	if c.lastCap == 0 {
		c.data[RegCapabilitiesPtr] = byte(off)
		c.data[RegStatus] |= StatusCapList
	} else {
		c.data[c.lastCap+1] = byte(off)
	}
	c.lastCap = off
	c.nextFree = off + n
	c.caps = append(c.caps, capRange{off: off, len: n, hooks: hooks})
	return off, nil
}

// AddExtendedCapability appends a PCI Express extended capability (at
// offset 0x100 or above, for SR-IOV, ACS, AER and the like) to a function
// created with Header.Express. body follows the 4-byte header (ID,
// version, next pointer), which is maintained here.
func (c *Config) AddExtendedCapability(id uint16, version uint8, body, wmask []byte, hooks CapabilityHooks) (int, error) {
	if wmask != nil && len(wmask) != len(body) {
		return 0, fmt.Errorf("%w: mask length %d for body length %d", ErrBadCapability, len(wmask), len(body))
	}
	if version > 0xf {
		return 0, fmt.Errorf("%w: version %d", ErrBadCapability, version)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.size != ExtendedConfigSize {
		return 0, fmt.Errorf("%w: extended capability on a conventional PCI function", ErrBadCapability)
	}
	off := (c.nextExtFree + 3) &^ 3
	n := 4 + len(body)
	if off+n > ExtendedConfigSize {
		return 0, fmt.Errorf("%w: %d bytes at %#x", ErrNoCapSpace, n, off)
	}
	binary.LittleEndian.PutUint32(c.data[off:], uint32(id)|uint32(version)<<16)
	copy(c.data[off+4:], body)
	copy(c.wmask[off+4:], wmask)
	if c.lastExtCap != 0 {
		h := binary.LittleEndian.Uint32(c.data[c.lastExtCap:])
		binary.LittleEndian.PutUint32(c.data[c.lastExtCap:], h&0xfffff|uint32(off)<<20)
	}
	c.lastExtCap = off
	c.nextExtFree = off + n
	c.caps = append(c.caps, capRange{off: off, len: n, hooks: hooks})
	return off, nil
}

// ReadConfig serves a guest read of len(data) bytes at offset. Reads beyond
// the configuration space return zeros.
func (c *Config) ReadConfig(offset int, data []byte) {
	clear(data)
	if offset < 0 || offset >= c.size {
		return
	}
	c.mu.Lock()
	n := copy(data, c.data[offset:c.size])
	data = data[:n]
	var hooks []func()
	for _, cr := range c.caps {
		if cr.hooks.Read != nil && offset < cr.off+cr.len && cr.off < offset+n {
			cr := cr
			hooks = append(hooks, func() { cr.hooks.Read(offset-cr.off, data) })
		}
	}
	c.mu.Unlock()
	for _, h := range hooks {
		h()
	}
}

// WriteConfig serves a guest write.
func (c *Config) WriteConfig(offset int, data []byte) {
	if offset < 0 || offset >= c.size {
		return
	}
	if len(data) > c.size-offset {
		data = data[:c.size-offset]
	}
	c.mu.Lock()
	oldCmd := binary.LittleEndian.Uint16(c.data[RegCommand:])
	for i, b := range data {
		o := offset + i
		v := c.data[o]&^c.wmask[o] | b&c.wmask[o]
		v &^= b & c.w1c[o]
		c.data[o] = v
	}
	newCmd := binary.LittleEndian.Uint16(c.data[RegCommand:])
	var hooks []func()
	for _, cr := range c.caps {
		if cr.hooks.Write != nil && offset < cr.off+cr.len && cr.off < offset+len(data) {
			cr := cr
			hooks = append(hooks, func() { cr.hooks.Write(offset-cr.off, data) })
		}
	}
	var setLine func() error
	if (oldCmd^newCmd)&CommandINTxDisable != 0 {
		setLine = c.updateLineLocked()
	}
	c.mu.Unlock()
	if setLine != nil {
		// A guest config write has no one to report a line error to; the
		// next SetINTx call retries the level and reports.
		if setLine() != nil {
			c.mu.Lock()
			c.lineHigh = !c.lineHigh
			c.mu.Unlock()
		}
	}
	for _, h := range hooks {
		h()
	}
}

// Regions returns the BAR ranges the function decodes now: those whose
// decoding is enabled in the command register and whose address is
// assigned (non-zero) and does not wrap or, for I/O, leave the 64 KiB port
// space.
func (c *Config) Regions() []Region {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.vf != nil {
		return c.vfRegionsLocked()
	}
	cmd := binary.LittleEndian.Uint16(c.data[RegCommand:])
	var rs []Region
	for i, b := range c.bars {
		addr := c.barAddr(i)
		if addr == 0 {
			continue
		}
		switch b.Kind {
		case BARMem32, BARMem64:
			if cmd&CommandMemory == 0 || addr+b.Size < addr {
				continue
			}
			rs = append(rs, Region{BAR: i, Space: SpaceMemory, Addr: addr, Size: b.Size, Device: b.Device})
		case BARIO:
			if cmd&CommandIO == 0 || addr+b.Size > 1<<16 {
				continue
			}
			rs = append(rs, Region{BAR: i, Space: SpaceIO, Addr: addr, Size: b.Size, Device: b.Device})
		}
	}
	return rs
}

// Command returns the command register.
func (c *Config) Command() uint16 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return binary.LittleEndian.Uint16(c.data[RegCommand:])
}

// Bytes copies n bytes at offset out of the stored configuration space,
// bypassing capability hooks; for device-side code reading its own
// registers.
func (c *Config) Bytes(offset, n int) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if offset < 0 || n < 0 || offset > c.size || n > c.size-offset {
		return make([]byte, n)
	}
	return append([]byte(nil), c.data[offset:offset+n]...)
}

// SetBytes stores p at offset, ignoring write masks: device-side updates
// of read-only registers (a capability's status fields, for example).
func (c *Config) SetBytes(offset int, p []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if offset < 0 || offset > c.size || len(p) > c.size-offset {
		return
	}
	copy(c.data[offset:], p)
}

// SetWriteMask makes the bits set in mask, at offset, guest-writable:
// device-specific registers past the standard header (a chipset's timing
// registers, for example) that the guest programs and reads back.
func (c *Config) SetWriteMask(offset int, mask []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if offset < 0 || offset > c.size || len(mask) > c.size-offset {
		return
	}
	copy(c.wmask[offset:], mask)
}

// SetINTxLine attaches the level-triggered line the function's INTx pin is
// wired to. Without a line, SetINTx only updates the status bit.
func (c *Config) SetINTxLine(l irq.Line) {
	c.mu.Lock()
	c.line = l
	c.mu.Unlock()
}

// SetINTx sets the device's INTx output. The status register's interrupt
// bit follows it; the line is asserted only while the command register's
// INTx-disable bit is clear, as PCI 3.0 specifies.
func (c *Config) SetINTx(high bool) error {
	c.mu.Lock()
	c.intxLevel = high
	if high {
		c.data[RegStatus] |= StatusINTx
	} else {
		c.data[RegStatus] &^= StatusINTx
	}
	f := c.updateLineLocked()
	c.mu.Unlock()
	if f != nil {
		return f()
	}
	return nil
}

// updateLineLocked computes the line level and returns the call that
// applies it, to be made after unlocking (a Line may block briefly on an
// ioctl; it must not be called with the lock held).
func (c *Config) updateLineLocked() func() error {
	disabled := binary.LittleEndian.Uint16(c.data[RegCommand:])&CommandINTxDisable != 0
	want := c.intxLevel && !disabled
	if c.line == nil || want == c.lineHigh {
		return nil
	}
	c.lineHigh = want
	l := c.line
	return func() error {
		if err := l.SetLevel(want); err != nil {
			return fmt.Errorf("pci: INTx line: %w", err)
		}
		return nil
	}
}
