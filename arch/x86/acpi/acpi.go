package acpi

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/viovmm/vio/arch/x86"
	"github.com/viovmm/vio/memory"
)

// Guest physical placement of the tables (see the package comment).
const (
	// TablesAddr is where the RSDP, then the other tables, are written
	// (the largest today, with x86.MaxCPUs CPUs and every PCI INTx
	// route, is under 5 KiB). Below it are the MP table and SMBIOS.
	TablesAddr = x86.SMBIOSEnd
	// ResetVectorAddr is F000:FFF0, where machine_real_restart jumps.
	ResetVectorAddr = 0xffff0
	// TablesEnd is the end of the space for tables.
	TablesEnd = ResetVectorAddr
)

// PMRegisters are the I/O ports of the power-management device
// (devices/acpipm) the FADT points at: the fixed hardware of a full ACPI
// PC (see the package comment).
type PMRegisters struct {
	// PM1EventPort is PM1a_EVT_BLK: PM1_STS then PM1_EN, 16 bits each.
	PM1EventPort uint16
	// PM1ControlPort is PM1a_CNT_BLK, 16 bits (SCI_EN, SLP_TYP, SLP_EN).
	PM1ControlPort uint16
	// GPE0Port is GPE0_BLK: GPE0Len bytes, the status bytes then as many
	// enable bytes.
	GPE0Port   uint16
	ResetPort  uint16 // RESET_REG, 8 bits
	ResetValue uint8  // RESET_VALUE
	// S5SleepType is the SLP_TYP value (0-7) the device takes as
	// "power off"; \_S5 hands it to the OS.
	S5SleepType uint8
}

// GPE0Len is the length of the GPE0 block: one status byte and one enable
// byte, GPEs 0-7 (devices/acpipm.GPE0Len).
const GPE0Len = 2

// PM1 block lengths (ACPI's minimums; devices/acpipm serves them).
const (
	pm1EventLen   = 4
	pm1ControlLen = 2
)

// Window is a range of guest physical addresses.
type Window struct {
	Base, Size uint64
}

func (w Window) end() uint64 { return w.Base + w.Size }

// ECAMWindow is a PCI Express enhanced configuration window for PCI
// segment 0: bus b's 1 MiB of configuration space is at Base + b<<20,
// for StartBus <= b <= EndBus (Base is the address of bus 0, as in MCFG).
type ECAMWindow struct {
	Base             uint64
	StartBus, EndBus uint8
}

// reserved returns the part of the window that holds configuration space.
func (e *ECAMWindow) reserved() (start, size uint64) {
	return e.Base + uint64(e.StartBus)<<20, (uint64(e.EndBus) - uint64(e.StartBus) + 1) << 20
}

// Config describes the machine the tables describe.
type Config struct {
	// NumCPUs is the number of vCPUs, 1..x86.MaxCPUs; CPU i has APIC
	// ID i, as in the MP table.
	NumCPUs int
	PM      PMRegisters
	// PCIHole is the 32-bit MMIO window of the PCI root bridge (below
	// 4 GiB; typically x86.PCIMMIOStart..x86.PCIMMIOEnd). Size 0: none.
	// If it contains the ECAM window, the window is split around it.
	PCIHole Window
	// PCIHole64 is an optional MMIO window above 4 GiB for 64-bit BARs.
	PCIHole64 Window
	// ECAM, if not nil, adds an MCFG table and makes PCI0 a PCI Express
	// root. The window must lie below 4 GiB.
	ECAM *ECAMWindow
	// COM1 declares the legacy serial port at 0x3F8, IRQ 4.
	COM1 bool
	// PvPanicPort, if not 0, declares a pvpanic device at that port
	// (devices/acpipm.PvPanicPort is 0x505).
	PvPanicPort uint16
	// I8042 declares the keyboard controller at 0x60/0x64, IRQ 1
	// (PNP0303, and FADT IAPC_BOOT_ARCH bit 1); without it Linux's i8042
	// driver does not probe the ports when ACPI is on.
	I8042 bool
	// RTC declares the CMOS RTC at 0x70, IRQ 8 (PNP0B00), with the
	// century at index 0x32; without it the FADT says "no CMOS RTC".
	RTC bool
	// PCIInterrupts routes PCI INTx pins of bus 0 to IOAPIC inputs
	// (GSIs): PCI0 gets a _PRT with one entry per route, which is where
	// Linux looks up a device's INTx in ACPI mode. Give the same routes
	// to the MP table (x86.MPConfig) for acpi=off guests.
	PCIInterrupts []x86.PCIInterrupt
	// PCIHotplug, if not nil, makes slots 1-31 of bus 0 hot-pluggable
	// (see PCIHotplug).
	PCIHotplug *PCIHotplug
	// TimerOverride adds the ISA IRQ0 → GSI 2 interrupt source
	// override. Set it only if the vmm routes GSI 0/the PIT to IOAPIC
	// pin 2; KVM's default routing, which the MP table describes, has
	// it on pin 0.
	TimerOverride bool
	// Extra are complete tables built elsewhere (Table: iommu/vtd's
	// DMAR), listed in the XSDT after vio's own.
	Extra [][]byte
}

// ErrConfig reports a Config the tables cannot describe.
var ErrConfig = errors.New("acpi: bad config")

func (c *Config) validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrConfig}, a...)...)
	}
	if c.NumCPUs < 1 || c.NumCPUs > x86.MaxCPUs {
		return bad("%d CPUs, want 1..%d", c.NumCPUs, x86.MaxCPUs)
	}
	pm := c.PM
	if pm.PM1EventPort == 0 || pm.PM1ControlPort == 0 || pm.GPE0Port == 0 || pm.ResetPort == 0 {
		return bad("power-management ports must not be 0 (%+v)", pm)
	}
	for _, r := range []struct {
		port uint16
		n    uint32
	}{{pm.PM1EventPort, pm1EventLen}, {pm.PM1ControlPort, pm1ControlLen}, {pm.GPE0Port, GPE0Len}} {
		if uint32(r.port)+r.n > 1<<16 {
			return bad("power-management block at port %#x+%d passes 0xffff", r.port, r.n)
		}
	}
	if pm.S5SleepType > 7 {
		return bad("S5 sleep type %d does not fit SLP_TYP's 3 bits", pm.S5SleepType)
	}
	if w := c.PCIHole; w.Size != 0 && (w.Base+w.Size < w.Base || w.end() > 1<<32) {
		return bad("32-bit PCI hole %#x+%#x is not below 4 GiB", w.Base, w.Size)
	}
	for i, t := range c.Extra {
		if len(t) < headerSize || int(binary.LittleEndian.Uint32(t[4:])) != len(t) {
			return bad("extra table %d is not a whole table (%d bytes)", i, len(t))
		}
	}
	if len(c.PCIInterrupts) > 255 {
		return bad("%d PCI interrupt routes; a _PRT holds at most 255", len(c.PCIInterrupts))
	}
	for _, r := range c.PCIInterrupts {
		if r.Device > 31 || r.Pin > 3 {
			return bad("PCI interrupt route for device %d pin %d", r.Device, r.Pin)
		}
	}
	if h := c.PCIHotplug; h != nil {
		if h.Port == 0 || uint32(h.Port)+HotplugSize > 1<<16 {
			return bad("PCI hot-plug registers at port %#x: want a non-zero port with %d bytes below 0x10000", h.Port, HotplugSize)
		}
		if h.GPE >= 8*GPE0Len/2 {
			return bad("PCI hot-plug GPE %d: the GPE0 block has GPEs 0-%d", h.GPE, 8*GPE0Len/2-1)
		}
	}
	if w := c.PCIHole64; w.Size != 0 && w.Base+w.Size < w.Base {
		return bad("64-bit PCI hole %#x+%#x wraps", w.Base, w.Size)
	}
	// The interrupt controllers are not PCI's to hand out.
	fixed := []Window{{x86.IOAPICAddr, x86.IOAPICSize}, {x86.LAPICAddr, x86.LAPICSize}}
	if e := c.ECAM; e != nil {
		if e.StartBus > e.EndBus {
			return bad("ECAM buses %d-%d", e.StartBus, e.EndBus)
		}
		start, size := e.reserved()
		if e.Base%(1<<20) != 0 || e.Base >= 1<<32 || start+size > 1<<32 {
			return bad("ECAM window %#x buses %d-%d: want 1 MiB alignment, below 4 GiB",
				e.Base, e.StartBus, e.EndBus)
		}
		for _, f := range fixed {
			if overlaps(Window{start, size}, f) {
				return bad("ECAM window %#x+%#x overlaps the APIC page at %#x", start, size, f.Base)
			}
		}
	}
	for _, w := range []Window{c.PCIHole, c.PCIHole64} {
		for _, f := range fixed {
			if w.Size != 0 && overlaps(w, f) {
				return bad("PCI hole %#x+%#x overlaps the APIC page at %#x", w.Base, w.Size, f.Base)
			}
		}
	}
	return nil
}

// overlaps reports whether two non-empty, non-wrapping windows share an address.
func overlaps(a, b Window) bool { return a.Base < b.end() && b.Base < a.end() }

// mmioWindows returns the 32-bit PCI hole minus the ECAM window.
func (c *Config) mmioWindows() []Window {
	w := c.PCIHole
	if w.Size == 0 {
		return nil
	}
	if c.ECAM == nil {
		return []Window{w}
	}
	es, n := c.ECAM.reserved()
	ee := es + n
	if ee <= w.Base || es >= w.end() {
		return []Window{w}
	}
	var out []Window
	if es > w.Base {
		out = append(out, Window{w.Base, es - w.Base})
	}
	if ee < w.end() {
		out = append(out, Window{ee, w.end() - ee})
	}
	return out
}

// align16 rounds n up to a multiple of 16.
func align16(n uint64) uint64 { return (n + 15) &^ 15 }

// build lays the tables out from base and returns the bytes to store
// there. The RSDP is at base.
func build(cfg *Config, base uint64) ([]byte, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	img := make([]byte, 0, 4096)
	place := func(t []byte) uint64 {
		off := align16(uint64(len(img)))
		img = append(img, make([]byte, off-uint64(len(img)))...)
		img = append(img, t...)
		return base + off
	}
	// Reserve room for the RSDP and XSDT, whose contents depend on the
	// addresses of the others.
	nEntries := 2 + len(cfg.Extra)
	if cfg.ECAM != nil {
		nEntries++
	}
	img = append(img, make([]byte, rsdpSize)...)
	xsdtAddr := place(make([]byte, headerSize+8*nEntries))

	// The FACS must be 64-byte aligned; it is not in the XSDT, only the
	// FADT points at it.
	pad := (facsAlign - (base+uint64(len(img)))%facsAlign) % facsAlign
	img = append(img, make([]byte, pad)...)
	facsAddr := base + uint64(len(img))
	img = append(img, facs()...)

	dsdt := header(SigDSDT, dsdtRevision)
	dsdtAddr := place(seal(append(dsdt, dsdtAML(cfg)...)))
	entries := []uint64{place(fadt(cfg, dsdtAddr, facsAddr)), place(madt(cfg))}
	if cfg.ECAM != nil {
		entries = append(entries, place(mcfg(cfg.ECAM)))
	}
	for _, t := range cfg.Extra {
		entries = append(entries, place(t))
	}
	copy(img, rsdp(xsdtAddr))
	copy(img[xsdtAddr-base:], xsdt(entries))
	if base+uint64(len(img)) > TablesEnd {
		return nil, fmt.Errorf("%w: ACPI tables of %d bytes do not fit in %#x-%#x", ErrConfig, len(img), base, TablesEnd)
	}
	return img, nil
}

// resetVector is the real-mode code at F000:FFF0:
//
//	mov al, value
//	mov dx, port
//	out dx, al
//	hlt
//	jmp $-1     ; back to hlt
func resetVector(port uint16, value uint8) []byte {
	return []byte{0xb0, value, 0xba, byte(port), byte(port >> 8), 0xee, 0xf4, 0xeb, 0xfd}
}

// Write builds the tables for cfg, stores them at TablesAddr and the
// reset stub at ResetVectorAddr, and returns the RSDP's address, for
// boot_params.acpi_rsdp_addr. It clears the rest of its range first, so
// writing again (on reboot) leaves no stale bytes.
func Write(mem *memory.Memory, cfg Config) (rsdpAddr uint64, err error) {
	img, err := build(&cfg, TablesAddr)
	if err != nil {
		return 0, err
	}
	area := make([]byte, x86.HighMemStart-TablesAddr)
	copy(area, img)
	copy(area[ResetVectorAddr-TablesAddr:], resetVector(cfg.PM.ResetPort, cfg.PM.ResetValue))
	if _, err := mem.WriteAt(area, TablesAddr); err != nil {
		return 0, fmt.Errorf("acpi: writing tables: %w", err)
	}
	return TablesAddr, nil
}
