// Package acpipm emulates the fixed ACPI hardware a full (not
// hardware-reduced) ACPI PC has and the FADT points at (see
// arch/x86/acpi): the PM1a event block (PM1_STS and PM1_EN), the PM1a
// control block (SCI_EN, SLP_TYP, SLP_EN), through which the guest powers
// itself off, the GPE0 block (status and enable bytes for GPEs 0-7), and
// the reset register, through which it reboots. It drives the SCI, which
// is level-triggered: high while any enabled status bit is set, low once
// the guest has cleared (write 1 to clear) or disabled them all. The VMM
// presses the fixed-feature power button (PWRBTN_STS) to ask the guest to
// shut down, and raises a GPE for other events (PCI hot plug).
// It also has a pvpanic device, which lets a guest tell the VMM it
// panicked.
//
// There is no PM timer (the FADT's PM_TMR_BLK is 0): the guest's clock is
// kvm-clock, and a PM timer would be a port the guest reads with a VM exit
// each time, which Linux would also register as a clocksource and use as
// the TSC's watchdog. No SMI_CMD either, so there is no switch between
// legacy and ACPI mode: SCI_EN always reads 1.
//
// The registers are bytes at consecutive I/O ports from PortAddr, a range
// no PC device uses. ACPICA reads and writes the PM1 registers 16 bits at
// a time and the GPE registers a byte at a time; any access is taken as
// that many one-byte accesses to consecutive ports, as the ISA bus would
// split it. Every register is bitwise, so nothing depends on the width.
package acpipm

import (
	"sync"

	"github.com/viovmm/vio/bus"
	"github.com/viovmm/vio/irq"
)

// Port addresses.
const (
	PortAddr       = 0x600
	Size           = 10
	PM1EventPort   = PortAddr + RegPM1Status // PM1a_EVT_BLK, PM1EventLen bytes
	PM1ControlPort = PortAddr + RegPM1Control
	ResetPort      = PortAddr + RegReset
	GPE0Port       = PortAddr + RegGPE0Status // GPE0_BLK, GPE0Len bytes

	PM1EventLen   = 4 // PM1_STS and PM1_EN, 16 bits each
	PM1ControlLen = 2
	GPE0Len       = 2 // one status byte, one enable byte: GPEs 0-7

	// Register offsets from PortAddr.
	RegPM1Status  = 0 // 16 bits, write 1 to clear
	RegPM1Enable  = 2 // 16 bits
	RegPM1Control = 4 // 16 bits
	RegReset      = 6 // 8 bits, write-only
	RegGPE0Status = 8 // 8 bits, write 1 to clear
	RegGPE0Enable = 9 // 8 bits
)

// ResetValue is the byte that, written to the reset register, resets the
// machine (the FADT's RESET_VALUE).
const ResetValue = 0x01

// SleepTypeS5 is the SLP_TYP value meaning "soft off", the value \_S5
// gives the OS.
const SleepTypeS5 = 5

// PM1 status and enable bits (ACPI 6.5, 4.8.3.1.1 and 4.8.3.1.2). The
// device itself only ever sets PWRBTN_STS and WAK_STS; the others are
// there so that the guest reads back what it wrote to the enables (ACPICA
// checks that an enable bit sticks, e.g. GBL_EN for the global lock and
// RTC_EN when rtc-cmos installs its handler, and complains if not).
const (
	TimerStatus   = 1 << 0  // TMR_STS / TMR_EN
	GlobalStatus  = 1 << 5  // GBL_STS / GBL_EN
	PowerButton   = 1 << 8  // PWRBTN_STS / PWRBTN_EN
	SleepButton   = 1 << 9  // SLPBTN_STS / SLPBTN_EN
	RTCStatus     = 1 << 10 // RTC_STS / RTC_EN
	PCIExpWake    = 1 << 14 // PCIEXP_WAKE_STS / PCIEXP_WAKE_DIS
	WakeStatus    = 1 << 15 // WAK_STS (no enable)
	BusMasterStat = 1 << 4  // BM_STS (no enable)

	// PM1StatusBits are the bits of PM1_STS; PM1EnableBits those of
	// PM1_EN. sciEvents are the status bits that, enabled, raise the
	// SCI (PCIEXP_WAKE_DIS is a disable bit and only concerns wake-up).
	PM1StatusBits = TimerStatus | BusMasterStat | GlobalStatus | PowerButton | SleepButton | RTCStatus | PCIExpWake | WakeStatus
	PM1EnableBits = TimerStatus | GlobalStatus | PowerButton | SleepButton | RTCStatus | PCIExpWake
	sciEvents     = TimerStatus | GlobalStatus | PowerButton | SleepButton | RTCStatus
)

// PM1 control bits (ACPI 6.5, 4.8.3.2.1).
const (
	SCIEnable      = 1 << 0 // SCI_EN: reads 1, the machine is always in ACPI mode
	BusMasterRLD   = 1 << 1 // BM_RLD: kept, nothing else
	GlobalRelease  = 1 << 2 // GBL_RLS: write-only; there is no firmware to tell
	SleepTypeShift = 10
	SleepTypeMask  = 7 << SleepTypeShift // SLP_TYP, bits 12:10
	SleepEnable    = 1 << 13             // SLP_EN, write-only, reads 0

	pm1ControlKept = BusMasterRLD | SleepTypeMask
)

// Config wires the device to the VMM. The callbacks run on the vCPU
// thread that did the write, with no lock held; they should only signal
// the VM loop (to stop, or to reboot), not tear the VM down themselves.
// The guest's vCPU keeps running after the write until the VMM stops
// it: on the S5 path Linux polls WAK_STS, which then reads 0 (no
// wake-up), so it spins harmlessly. A guest may write again before it is
// stopped, so a callback can run more than once and must be idempotent.
type Config struct {
	PowerOff func() // SLP_EN written with SLP_TYP = SleepTypeS5
	Reset    func() // ResetValue written to the reset register
	// SCI is the SCI's interrupt line (ISA IRQ 9, level-triggered,
	// active-high as the MADT's override says). It is driven with the
	// device's lock held, so levels reach it in the order they were
	// computed. Nil: no interrupt (tests).
	SCI irq.Line
}

// Device is the PM register block. Register it at PortAddr, Size ports.
type Device struct {
	powerOff, reset func()
	sci             irq.Line

	mu         sync.Mutex
	pm1Status  uint16
	pm1Enable  uint16
	pm1Control uint16 // the kept bits: BM_RLD and SLP_TYP
	gpeStatus  uint8
	gpeEnable  uint8
	level      bool // the SCI's level as last driven
}

var _ bus.Device = (*Device)(nil)

// New returns the device in its power-on state: every status and enable
// bit clear, the SCI low.
func New(cfg Config) *Device {
	return &Device{powerOff: cfg.PowerOff, reset: cfg.Reset, sci: cfg.SCI}
}

// Read returns the registers byte by byte. PM1_CNT reads SCI_EN set and
// SLP_EN, GBL_RLS clear; the reset register reads 0.
func (d *Device) Read(offset uint64, data []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range data {
		var v uint8
		switch reg := offset + uint64(i); reg {
		case RegPM1Status, RegPM1Status + 1:
			v = uint8(d.pm1Status >> (8 * (reg - RegPM1Status)))
		case RegPM1Enable, RegPM1Enable + 1:
			v = uint8(d.pm1Enable >> (8 * (reg - RegPM1Enable)))
		case RegPM1Control, RegPM1Control + 1:
			v = uint8((d.pm1Control | SCIEnable) >> (8 * (reg - RegPM1Control)))
		case RegGPE0Status:
			v = d.gpeStatus
		case RegGPE0Enable:
			v = d.gpeEnable
		}
		data[i] = v
	}
}

// PressPowerButton sets PWRBTN_STS; the SCI rises if the guest enabled
// the power button event (Linux's button driver does). Presses before the
// guest clears the bit count once, as a held button would.
func (d *Device) PressPowerButton() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.pm1Status |= PowerButton
	d.update()
}

// RaiseGPE sets status bit n (0-7) of GPE0; the SCI rises if the guest
// enabled it, which ACPICA does for a GPE that has an _Exx or _Lxx
// method. A GPE raised again before the guest clears it counts once: its
// method must look at the event source's own registers for what happened
// (devices/pcihp's read-clear bitmaps do that for hot plug).
func (d *Device) RaiseGPE(n int) {
	if n < 0 || n >= 8*GPE0Len/2 {
		panic("acpipm: no such GPE")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.gpeStatus |= 1 << n
	d.update()
}

// SCILevel reports the SCI's level as last driven.
func (d *Device) SCILevel() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.level
}

// update drives the SCI to match the registers. Called with d.mu held.
func (d *Device) update() {
	lvl := d.pm1Status&d.pm1Enable&sciEvents != 0 || d.gpeStatus&d.gpeEnable != 0
	if lvl == d.level {
		return
	}
	d.level = lvl
	if d.sci != nil {
		_ = d.sci.SetLevel(lvl)
	}
}

// Write handles each byte in turn.
func (d *Device) Write(offset uint64, data []byte) {
	for i, v := range data {
		d.writeByte(offset+uint64(i), v)
	}
}

func (d *Device) writeByte(reg uint64, v uint8) {
	var call func()
	d.mu.Lock()
	switch reg {
	case RegPM1Status, RegPM1Status + 1:
		d.pm1Status &^= uint16(v) << (8 * (reg - RegPM1Status))
	case RegPM1Enable, RegPM1Enable + 1:
		shift := 8 * (reg - RegPM1Enable)
		d.pm1Enable = d.pm1Enable&^(0xff<<shift) | uint16(v)<<shift&PM1EnableBits
	case RegPM1Control:
		// SCI_EN cannot be cleared (no legacy mode to go back to);
		// GBL_RLS would tell firmware, which there is none of.
		d.pm1Control = d.pm1Control&^0xff | uint16(v)&pm1ControlKept
	case RegPM1Control + 1:
		// The byte with SLP_TYP and SLP_EN: ACPICA writes SLP_TYP,
		// then SLP_TYP|SLP_EN, each as one 16-bit write whose high
		// byte arrives last.
		w := uint16(v) << 8
		d.pm1Control = d.pm1Control&0xff | w&pm1ControlKept
		if w&SleepEnable != 0 {
			if (w&SleepTypeMask)>>SleepTypeShift == SleepTypeS5 {
				call = d.powerOff
			} else {
				// Sleep states other than S5 are not offered (\_S5 is
				// the only \_Sx object). A guest that asks anyway
				// "wakes up" at once, so its wait for WAK_STS ends
				// instead of spinning forever.
				d.pm1Status |= WakeStatus
			}
		}
	case RegReset:
		if v == ResetValue {
			call = d.reset
		}
	case RegGPE0Status:
		d.gpeStatus &^= v
	case RegGPE0Enable:
		d.gpeEnable = v
	}
	d.update()
	d.mu.Unlock()
	if call != nil {
		call()
	}
}
