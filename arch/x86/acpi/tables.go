package acpi

import (
	"encoding/binary"

	"github.com/viovmm/vio/arch/x86"
)

var le = binary.LittleEndian

// Identification vio writes into every table.
const (
	OEMID           = "VIOVMM"   // 6 bytes
	OEMTableID      = "VIOVMM  " // 8 bytes
	OEMRevision     = 1
	CreatorID       = "VIO "
	CreatorRevision = 1
	// HypervisorVendor is the FADT's Hypervisor Vendor Identity.
	HypervisorVendor = "VIOVMM"
)

// Table signatures and revisions.
const (
	SigRSDP = "RSD PTR "
	SigXSDT = "XSDT"
	SigFADT = "FACP"
	SigMADT = "APIC"
	SigDSDT = "DSDT"
	SigMCFG = "MCFG"
	SigFACS = "FACS"

	rsdpRevision = 2 // ACPI 2.0+: has an XSDT
	xsdtRevision = 1
	fadtRevision = 6 // ACPI 6.x layout, 276 bytes
	fadtMinor    = 3 // ACPI 6.3
	madtRevision = 5 // ACPI 6.3
	dsdtRevision = 2 // 64-bit AML integers
	mcfgRevision = 1

	headerSize = 36
	rsdpSize   = 36
	fadtSize   = 276
	facsSize   = 64
	facsAlign  = 64 // ACPI 6.5, 5.2.10: the FACS is 64-byte aligned
	facsVer    = 2  // ACPI 6.x
)

// Checksum returns the byte that makes b sum to zero.
func checksum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return -s
}

// header returns a System Description Table header for a table of
// length bytes; the caller appends the body and calls seal.
func header(sig string, revision byte) []byte {
	h := make([]byte, headerSize)
	copy(h[0:4], sig)
	h[8] = revision
	copy(h[10:16], OEMID)
	copy(h[16:24], OEMTableID)
	le.PutUint32(h[24:], OEMRevision)
	copy(h[28:32], CreatorID)
	le.PutUint32(h[32:], CreatorRevision)
	return h
}

// seal fills in the length and checksum of a finished table.
func seal(t []byte) []byte {
	le.PutUint32(t[4:], uint32(len(t)))
	t[9] = 0
	t[9] = checksum(t)
	return t
}

// rsdp is the Root System Description Pointer, revision 2.
func rsdp(xsdtAddr uint64) []byte {
	b := make([]byte, rsdpSize)
	copy(b, SigRSDP)
	copy(b[9:15], OEMID)
	b[15] = rsdpRevision
	// RsdtAddress (16) stays 0: there is no RSDT, only the XSDT.
	le.PutUint32(b[20:], rsdpSize)
	le.PutUint64(b[24:], xsdtAddr)
	b[8] = checksum(b[:20])
	b[32] = checksum(b)
	return b
}

func xsdt(entries []uint64) []byte {
	t := header(SigXSDT, xsdtRevision)
	for _, e := range entries {
		t = le.AppendUint64(t, e)
	}
	return seal(t)
}

// Generic Address Structure (ACPI 6.5, 5.2.3.2).
const (
	gasSize       = 12
	spaceSystemIO = 1
	accessByte    = 1
	accessWord    = 2
)

// ioRegister is a GAS for an I/O port register of bits bits, accessed
// access bytes at a time (accessByte, accessWord). Offset 0 and a width
// that is the whole register is the form ACPICA expects of the fixed
// registers.
func ioRegister(port uint16, bits, access uint8) []byte {
	g := make([]byte, gasSize)
	g[0] = spaceSystemIO
	g[1] = bits
	g[2] = 0
	g[3] = access
	le.PutUint64(g[4:], uint64(port))
	return g
}

// FADT field offsets and flags used here (ACPI 6.5, table 5.9).
const (
	fadtFirmwareCtrl  = 36
	fadtDSDT          = 40
	fadtSCIInt        = 46
	fadtPM1aEvtBlk    = 56
	fadtPM1aCntBlk    = 64
	fadtGPE0Blk       = 80
	fadtPM1EvtLen     = 88
	fadtPM1CntLen     = 89
	fadtGPE0BlkLen    = 92
	fadtPLvl2Lat      = 96
	fadtPLvl3Lat      = 98
	fadtCentury       = 108
	fadtIAPCBootArch  = 109
	fadtFlags         = 112
	fadtResetReg      = 116
	fadtResetValue    = 128
	fadtMinorVersion  = 131
	fadtXFirmwareCtrl = 132
	fadtXDSDT         = 140
	fadtXPM1aEvtBlk   = 148
	fadtXPM1aCntBlk   = 172
	fadtXGPE0Blk      = 220
	fadtHypervisorID  = 268

	// IAPC_BOOT_ARCH flags.
	BootArch8042  = 1 << 1
	BootArchNoVGA = 1 << 2
	BootArchNoMSI = 1 << 3
	BootArchNoRTC = 1 << 5

	// Fixed feature flags.
	FlagWBINVD      = 1 << 0  // WBINVD flushes the caches (every x86 CPU)
	FlagProcC1      = 1 << 2  // C1 (HLT) works on every CPU
	FlagPowerButton = 1 << 4  // no fixed-feature power button
	FlagSleepButton = 1 << 5  // no fixed-feature sleep button
	FlagResetReg    = 1 << 10 // RESET_REG_SUP
	FlagHWReduced   = 1 << 20 // HW_REDUCED_ACPI

	// P_LVL2_LAT above 100 and P_LVL3_LAT above 1000 say "no C2" and "no
	// C3": there is no P_BLK to enter them through.
	noC2Latency = 101
	noC3Latency = 1001

	// SCIIRQ is the ISA IRQ of the SCI, where PCs put it. The MADT's
	// override makes it level-triggered and active-high on GSI 9 (the
	// ACPI default for the SCI, active-low, would need the device to
	// drive the line inverted).
	SCIIRQ = 9

	// RTCCenturyIndex is the CMOS index of the century byte
	// (devices/cmos.Century).
	RTCCenturyIndex = 0x32
)

// facs is the Firmware ACPI Control Structure, which a full ACPI machine
// has: the OS finds the global lock and the waking vector in it. Nothing
// here uses them (no firmware contends for the lock; no sleep state
// returns through the waking vector), so all but the header are zero.
func facs() []byte {
	b := make([]byte, facsSize)
	copy(b, SigFACS)
	le.PutUint32(b[4:], facsSize)
	// Hardware signature (8) stays 0: the hardware never changes
	// across a sleep, which is what the OS compares it for.
	b[32] = facsVer
	return b
}

func fadt(cfg *Config, dsdtAddr, facsAddr uint64) []byte {
	t := header(SigFADT, fadtRevision)
	t = append(t, make([]byte, fadtSize-headerSize)...)
	pm := cfg.PM
	// The tables are below 1 MiB, so the 32-bit address fields hold
	// them; Linux's ACPICA prefers the 32-bit FACS address when both are
	// set, and they are equal.
	le.PutUint32(t[fadtFirmwareCtrl:], uint32(facsAddr))
	le.PutUint64(t[fadtXFirmwareCtrl:], facsAddr)
	le.PutUint32(t[fadtDSDT:], uint32(dsdtAddr))
	le.PutUint16(t[fadtSCIInt:], SCIIRQ)
	// SMI_CMD stays 0: there is no SMM firmware to hand the machine
	// over, the OS finds it in ACPI mode already (SCI_EN reads 1).
	// PM_TMR_BLK stays 0: see devices/acpipm for why there is no PM timer.
	// The 32-bit block fields and their lengths mirror the X_ GAS
	// entries (ACPICA warns when they differ).
	le.PutUint32(t[fadtPM1aEvtBlk:], uint32(pm.PM1EventPort))
	le.PutUint32(t[fadtPM1aCntBlk:], uint32(pm.PM1ControlPort))
	le.PutUint32(t[fadtGPE0Blk:], uint32(pm.GPE0Port))
	t[fadtPM1EvtLen] = pm1EventLen
	t[fadtPM1CntLen] = pm1ControlLen
	t[fadtGPE0BlkLen] = GPE0Len
	le.PutUint16(t[fadtPLvl2Lat:], noC2Latency)
	le.PutUint16(t[fadtPLvl3Lat:], noC3Latency)
	copy(t[fadtXPM1aEvtBlk:], ioRegister(pm.PM1EventPort, 8*pm1EventLen, accessWord))
	copy(t[fadtXPM1aCntBlk:], ioRegister(pm.PM1ControlPort, 8*pm1ControlLen, accessWord))
	copy(t[fadtXGPE0Blk:], ioRegister(pm.GPE0Port, 8*GPE0Len, accessByte))
	var arch uint16 = BootArchNoVGA
	if cfg.I8042 {
		arch |= BootArch8042
	}
	if cfg.RTC {
		t[fadtCentury] = RTCCenturyIndex
	} else {
		arch |= BootArchNoRTC
	}
	le.PutUint16(t[fadtIAPCBootArch:], arch)
	// Not HW_REDUCED_ACPI: with it Linux installs no legacy PIC and no
	// ISA IRQ keeps its number (COM1 would not be IRQ 4). The power
	// button is the fixed-feature one (PWRBTN_STS); there is no sleep
	// button.
	le.PutUint32(t[fadtFlags:], FlagWBINVD|FlagProcC1|FlagResetReg|FlagSleepButton)
	copy(t[fadtResetReg:], ioRegister(pm.ResetPort, 8, accessByte))
	t[fadtResetValue] = pm.ResetValue
	t[fadtMinorVersion] = fadtMinor
	le.PutUint64(t[fadtXDSDT:], dsdtAddr)
	copy(t[fadtHypervisorID:fadtHypervisorID+8], HypervisorVendor)
	return seal(t)
}

// MADT structure types and flags (ACPI 6.5, 5.2.12).
const (
	madtLocalAPIC      = 0
	madtIOAPIC         = 1
	madtSourceOverride = 2
	madtLocalAPICNMI   = 4

	madtPCATCompat   = 1 << 0 // dual 8259s present (KVM's in-kernel PIC is)
	lapicEnabled     = 1 << 0
	intiActiveHigh   = 1 // MPS INTI polarity bits 1:0
	intiEdge         = 1 << 2
	intiLevel        = 3 << 2
	allProcessors    = 0xff
	lapicNMIPin      = 1 // LINT1, as on every PC
	madtHeaderExtra  = 8 // local APIC address + flags
	madtLAPICSize    = 8
	madtIOAPICSize   = 12
	madtOverrideSize = 10
	madtNMISize      = 6
)

func madt(cfg *Config) []byte {
	t := header(SigMADT, madtRevision)
	t = le.AppendUint32(t, x86.LAPICAddr)
	t = le.AppendUint32(t, madtPCATCompat)
	for i := 0; i < cfg.NumCPUs; i++ {
		// ACPI processor UID = APIC ID = index, as in the MP table.
		t = append(t, madtLocalAPIC, madtLAPICSize, byte(i), byte(i))
		t = le.AppendUint32(t, lapicEnabled)
	}
	t = append(t, madtIOAPIC, madtIOAPICSize, x86.IOAPICID(cfg.NumCPUs), 0)
	t = le.AppendUint32(t, x86.IOAPICAddr)
	t = le.AppendUint32(t, 0) // GSI base
	override := func(irq byte, gsi uint32, flags uint16) {
		t = append(t, madtSourceOverride, madtOverrideSize, 0, irq) // bus 0 = ISA
		t = le.AppendUint32(t, gsi)
		t = le.AppendUint16(t, flags)
	}
	if cfg.TimerOverride {
		override(0, 2, 0) // conforming: edge, active high
	}
	override(SCIIRQ, SCIIRQ, intiLevel|intiActiveHigh)
	t = append(t, madtLocalAPICNMI, madtNMISize, allProcessors)
	t = le.AppendUint16(t, intiEdge|intiActiveHigh)
	t = append(t, lapicNMIPin)
	return seal(t)
}

// mcfg lists one ECAM window for PCI segment 0.
func mcfg(e *ECAMWindow) []byte {
	t := header(SigMCFG, mcfgRevision)
	t = append(t, make([]byte, 8)...) // reserved
	t = le.AppendUint64(t, e.Base)
	t = le.AppendUint16(t, 0) // segment group
	t = append(t, e.StartBus, e.EndBus)
	t = le.AppendUint32(t, 0)
	return seal(t)
}
