// Package x86 knows the shape of a PC that Linux boots on: the guest
// physical memory map, the e820 table, the zero page (struct boot_params),
// the GDT and identity page tables for the 64-bit entry, the vCPU register
// values, CPUID and MSR set-up, and the MP table that lists CPUs and the
// IOAPIC without ACPI.
//
// Everything here is pure: functions return values or write bytes into a
// *memory.Memory, and nothing calls KVM. The vmm converts the plain structs
// (Regs, Sregs, CPUIDEntry, MSREntry) into its KVM calls.
package x86

import (
	"fmt"

	"github.com/viovmm/vio/memory"
)

// The guest physical memory map. Addresses below 1 MiB follow the PC
// conventions Linux expects; everything vio itself puts there for the boot
// lives in conventional memory that the e820 map marks as RAM, except the
// EBDA and the BIOS area, which it marks reserved.
//
//	0x0000_0000  real-mode IVT and BIOS data area (RAM)
//	0x0000_0500  GDTAddr: boot GDT
//	0x0000_0540  IDTAddr: empty boot IDT
//	0x0000_7000  ZeroPageAddr: struct boot_params
//	0x0000_8ff0  BootStack: initial RSP (stack grows down into 0x8000..)
//	0x0000_9000  PML4Addr, then PDPT and four page directories up to 0xefff
//	0x0002_0000  CmdlineAddr: kernel command line (up to CmdlineMax bytes)
//	0x0009_fc00  EBDAStart: extended BIOS data area (reserved)
//	0x000a_0000  legacy VGA and option ROM hole (not in e820)
//	0x000f_0000  BIOSStart: BIOS area (reserved); the MP table first,
//	0x000f_2000  SMBIOSAddr: SMBIOS entry point and tables (SMBIOSEnd),
//	0x000f_a000  then ACPI's tables (acpi.TablesAddr) and the reset vector
//	0x0010_0000  HighMemStart: kernel load address, then RAM
//	0xc000_0000  MMIOStart: 32-bit MMIO hole (PCI BARs, ECAM, IOAPIC, LAPIC)
//	0xfec0_0000  IOAPICAddr
//	0xfee0_0000  LAPICAddr
//	0x1_0000_0000 HighRAMStart: RAM above the hole
const (
	GDTAddr      = 0x500
	IDTAddr      = 0x540
	ZeroPageAddr = 0x7000
	BootStack    = 0x8ff0
	PML4Addr     = 0x9000
	PDPTAddr     = 0xa000
	PDAddr       = 0xb000 // four consecutive page directories, one per GiB
	CmdlineAddr  = 0x20000
	CmdlineMax   = 0x10000 // room reserved at CmdlineAddr, NUL included

	EBDAStart    = 0x9fc00
	VGAStart     = 0xa0000
	BIOSStart    = 0xf0000
	SMBIOSAddr   = 0xf2000 // past the largest MP table (about 6.5 KiB)
	SMBIOSEnd    = 0xfa000 // room for MaxCPUs processor structures and more
	HighMemStart = 0x100000

	MMIOStart    = 0xc0000000
	MMIOEnd      = 0x100000000 // first address past the 32-bit hole
	IOAPICAddr   = 0xfec00000
	IOAPICSize   = 0x1000
	LAPICAddr    = 0xfee00000
	LAPICSize    = 0x1000
	HighRAMStart = 0x100000000

	// PCIMMIOStart..PCIMMIOEnd is the part of the hole free for 32-bit
	// PCI BARs (and an ECAM window if the vmm wants one): everything
	// below the IOAPIC.
	PCIMMIOStart = MMIOStart
	PCIMMIOEnd   = IOAPICAddr
)

// MinRAM is the smallest guest vio lays out: enough for the fixed low
// structures and a kernel at 1 MiB. A real Linux needs far more; the
// loader reports that with a precise message.
const MinRAM = 2 << 20

// RAMLayout splits size bytes of guest RAM around the MMIO hole: RAM from 0
// up to MMIOStart, the rest from 4 GiB. size must be a multiple of 4 KiB.
func RAMLayout(size uint64) ([]memory.Layout, error) {
	if size < MinRAM || size%4096 != 0 {
		return nil, fmt.Errorf("x86: guest RAM of %#x bytes: want a multiple of 4 KiB, at least %d MiB", size, MinRAM>>20)
	}
	if size > 1<<46 {
		return nil, fmt.Errorf("x86: guest RAM of %d GiB is more than vio supports", size>>30)
	}
	if size <= MMIOStart {
		return []memory.Layout{{GPA: 0, Size: size}}, nil
	}
	return []memory.Layout{
		{GPA: 0, Size: MMIOStart},
		{GPA: HighRAMStart, Size: size - MMIOStart},
	}, nil
}

// SplitRAM returns how much of layout's RAM lies below 4 GiB and above it
// (what the CMOS memory-size bytes report).
func SplitRAM(layout []memory.Layout) (low, high uint64) {
	for _, l := range layout {
		end := l.GPA + l.Size
		if l.GPA < MMIOEnd {
			low += min(end, MMIOEnd) - l.GPA
		}
		if end > MMIOEnd {
			high += end - max(l.GPA, MMIOEnd)
		}
	}
	return low, high
}
