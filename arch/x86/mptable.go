package x86

import (
	"encoding/binary"
	"fmt"

	"github.com/viovmm/vio/memory"
)

// The Intel MultiProcessor Specification 1.4 table tells Linux, without
// ACPI, how many CPUs there are and how ISA (and optionally PCI) interrupts
// reach the IOAPIC. Linux looks for the "_MP_" floating pointer in the
// first KiB of the EBDA, the last KiB of base memory and the BIOS area
// 0xF0000-0xFFFFF; vio puts the pointer and the table at MPTableAddr in the
// BIOS area, which has room for MaxCPUs processor entries where the 1 KiB
// at 0x9FC00 would hold about forty. e820 marks the area reserved.
const MPTableAddr = BIOSStart

// MP table entry types and fields.
const (
	mpProcessor    = 0
	mpBus          = 1
	mpIOAPIC       = 2
	mpIOInterrupt  = 3
	mpLocalInt     = 4
	mpIntINT       = 0 // vectored interrupt
	mpIntNMI       = 1
	mpIntExtINT    = 3 // 8259-compatible, through the local APIC
	mpCPUEnabled   = 1
	mpCPUBootstrap = 2
	// LAPICVersion and IOAPICVersion are what KVM's in-kernel chips
	// report in their version registers.
	LAPICVersion  = 0x14
	IOAPICVersion = 0x11

	mpFloatSize   = 16
	mpHeaderSize  = 44
	mpProcSize    = 20
	mpEntrySize   = 8 // every other entry type
	mpSpecRev     = 4 // MP spec 1.4
	mpPCIIntFlags = 0x0f
)

// ISAIRQs is the number of ISA interrupts, wired to IOAPIC pins 0-15.
const ISAIRQs = 16

// PCIInterrupt wires one PCI INTx pin to an IOAPIC input.
type PCIInterrupt struct {
	Device    uint8 // device number on bus 0 (0-31)
	Pin       uint8 // 0 = INTA# ... 3 = INTD#
	IOAPICPin uint8 // IOAPIC input (KVM's IOAPIC has 24: 16-23 are free for PCI)
}

// MPConfig describes the machine the MP table lists.
type MPConfig struct {
	NumCPUs int // CPUs 0..NumCPUs-1, APIC ID = index; CPU 0 boots
	// PCIInterrupts, when not empty, adds PCI bus 0 and these
	// level-triggered, active-low INTx routes. ISA then becomes bus 1.
	PCIInterrupts []PCIInterrupt
}

// IOAPICID returns the IOAPIC's ID in a VM of n CPUs: the first ID after
// the CPUs' (the MP spec wants unique APIC IDs across LAPICs and IOAPICs).
func IOAPICID(n int) uint8 { return uint8(n) }

func checksum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return -s
}

// MPTable returns the floating pointer followed by the configuration table,
// to be placed at MPTableAddr. ISA IRQ i is routed to IOAPIC pin i, as
// KVM's default GSI routing does (GSI i -> IOAPIC pin i, and the in-kernel
// PIT on GSI 0), with conforming (edge, active-high) polarity; the 8259 is
// reachable as ExtINT on every LAPIC's LINT0 and NMI on LINT1 (virtual
// wire mode, no IMCR).
func MPTable(cfg MPConfig) ([]byte, error) {
	n := cfg.NumCPUs
	if n < 1 || n > MaxCPUs {
		return nil, fmt.Errorf("x86: MP table for %d CPUs: want 1..%d", n, MaxCPUs)
	}
	for _, p := range cfg.PCIInterrupts {
		if p.Device > 31 || p.Pin > 3 || p.IOAPICPin > 23 {
			return nil, fmt.Errorf("x86: bad PCI interrupt route %+v", p)
		}
	}
	le := binary.LittleEndian
	ioapic := IOAPICID(n)
	isaBus := uint8(0)
	var t []byte
	entries := 0
	add := func(b []byte) { t = append(t, b...); entries++ }

	t = make([]byte, mpHeaderSize)
	copy(t[0:], "PCMP")
	t[6] = mpSpecRev
	copy(t[8:16], "VIO     ")
	copy(t[16:28], "VIO PC      ")
	le.PutUint32(t[36:], LAPICAddr)

	for i := 0; i < n; i++ {
		p := make([]byte, mpProcSize)
		p[0] = mpProcessor
		p[1] = uint8(i)
		p[2] = LAPICVersion
		p[3] = mpCPUEnabled
		if i == 0 {
			p[3] |= mpCPUBootstrap
		}
		le.PutUint32(p[4:], 0x600)     // family 6, as a signature only
		le.PutUint32(p[8:], 1<<0|1<<9) // FPU, APIC
		add(p)
	}
	bus := func(id uint8, name string) {
		b := make([]byte, mpEntrySize)
		b[0], b[1] = mpBus, id
		copy(b[2:8], name)
		add(b)
	}
	if len(cfg.PCIInterrupts) > 0 {
		bus(0, "PCI   ")
		isaBus = 1
	}
	bus(isaBus, "ISA   ")
	io := make([]byte, mpEntrySize)
	io[0], io[1], io[2], io[3] = mpIOAPIC, ioapic, IOAPICVersion, 1
	le.PutUint32(io[4:], IOAPICAddr)
	add(io)
	intr := func(typ byte, flags uint16, srcBus, srcIRQ, dstID, dstPin uint8) {
		b := make([]byte, mpEntrySize)
		b[0], b[1] = mpIOInterrupt, typ
		le.PutUint16(b[2:], flags)
		b[4], b[5], b[6], b[7] = srcBus, srcIRQ, dstID, dstPin
		add(b)
	}
	for irq := uint8(0); irq < ISAIRQs; irq++ {
		intr(mpIntINT, 0, isaBus, irq, ioapic, irq)
	}
	for _, p := range cfg.PCIInterrupts {
		intr(mpIntINT, mpPCIIntFlags, 0, p.Device<<2|p.Pin, ioapic, p.IOAPICPin)
	}
	local := func(typ byte, lint uint8) {
		b := make([]byte, mpEntrySize)
		b[0], b[1] = mpLocalInt, typ
		b[4], b[5], b[6], b[7] = isaBus, 0, 0xff, lint // 0xff: every LAPIC
		add(b)
	}
	local(mpIntExtINT, 0)
	local(mpIntNMI, 1)

	le.PutUint16(t[4:], uint16(len(t)))
	le.PutUint16(t[34:], uint16(entries))
	t[7] = checksum(t)

	f := make([]byte, mpFloatSize)
	copy(f, "_MP_")
	le.PutUint32(f[4:], MPTableAddr+mpFloatSize)
	f[8] = 1 // length in 16-byte units
	f[9] = mpSpecRev
	f[10] = checksum(f)
	out := append(f, t...)
	if MPTableAddr+uint64(len(out)) > HighMemStart {
		return nil, fmt.Errorf("x86: MP table of %d bytes does not fit in the BIOS area", len(out))
	}
	return out, nil
}

// WriteMPTable builds the MP table and stores it at MPTableAddr.
func WriteMPTable(mem *memory.Memory, cfg MPConfig) error {
	b, err := MPTable(cfg)
	if err != nil {
		return err
	}
	if _, err := mem.WriteAt(b, MPTableAddr); err != nil {
		return fmt.Errorf("x86: writing MP table: %w", err)
	}
	return nil
}
