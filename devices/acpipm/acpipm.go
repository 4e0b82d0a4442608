// Package acpipm emulates the registers a hardware-reduced ACPI FADT
// points at (see arch/x86/acpi): the sleep control and sleep status
// registers through which the guest powers itself off, and the reset
// register through which it reboots; and the status register of the
// DSDT's power button, through which the VMM asks the guest to shut down.
// It also has a pvpanic device, which lets a guest tell the VMM it
// panicked.
//
// The four registers are single bytes at consecutive I/O ports from
// PortAddr, a range no PC device uses. Linux accesses each with one byte
// (the FADT describes them as 8-bit registers); a wider access is taken
// as that many one-byte accesses to consecutive ports, as the ISA bus
// would split it.
package acpipm

import (
	"sync"

	"github.com/viovmm/vio/bus"
)

// Port addresses.
const (
	PortAddr         = 0x600
	Size             = 4
	SleepControlPort = PortAddr + RegSleepControl
	SleepStatusPort  = PortAddr + RegSleepStatus
	ResetPort        = PortAddr + RegReset
	ButtonPort       = PortAddr + RegButton

	// Register offsets from PortAddr.
	RegSleepControl = 0
	RegSleepStatus  = 1
	RegReset        = 2
	RegButton       = 3 // reads 1 once after each press, then 0
)

// ResetValue is the byte that, written to the reset register, resets the
// machine (the FADT's RESET_VALUE).
const ResetValue = 0x01

// SleepTypeS5 is the SLP_TYP value meaning "soft off", the value \_S5
// gives the OS.
const SleepTypeS5 = 5

// Sleep control register (ACPI 6.5, 4.8.3.7).
const (
	SleepTypeShift = 2
	SleepTypeMask  = 7 << SleepTypeShift // SLP_TYP, bits 4:2
	SleepEnable    = 1 << 5              // SLP_EN, write-only
)

// Sleep status register (ACPI 6.5, 4.8.3.8).
const (
	WakeStatus = 1 << 7 // WAK_STS, write 1 to clear
)

// Config wires the device to the VMM. The callbacks run on the vCPU
// thread that did the write, with no lock held; they should only signal
// the VM loop (to stop, or to reboot), not tear the VM down themselves.
// The guest's vCPU keeps running after the write until the VMM stops
// it: on the S5 path Linux polls the status register, which then reads
// 0 (no wake-up), so it spins harmlessly. A guest may write again before
// it is stopped, so a callback can run more than once and must be
// idempotent.
type Config struct {
	PowerOff func() // SLP_EN written with SLP_TYP = SleepTypeS5
	Reset    func() // ResetValue written to the reset register
}

// Device is the PM register block. Register it at PortAddr, Size ports.
type Device struct {
	powerOff, reset func()

	mu        sync.Mutex
	sleepType uint8 // SLP_TYP of the last write, as read back
	status    uint8 // WakeStatus or 0
	pressed   bool  // the power button, until the guest reads RegButton
}

var _ bus.Device = (*Device)(nil)

// New returns the device in its power-on state: WAK_STS clear.
func New(cfg Config) *Device {
	return &Device{powerOff: cfg.PowerOff, reset: cfg.Reset}
}

// Read returns the registers: the sleep control register reads back
// SLP_TYP (SLP_EN reads 0), the status register WAK_STS, the reset
// register 0.
func (d *Device) Read(offset uint64, data []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range data {
		var v uint8
		switch offset + uint64(i) {
		case RegSleepControl:
			v = d.sleepType << SleepTypeShift
		case RegSleepStatus:
			v = d.status
		case RegButton:
			if d.pressed {
				v, d.pressed = 1, false
			}
		}
		data[i] = v
	}
}

// PressPowerButton latches a press of the power button for the guest's
// event handler to read; the caller raises the interrupt that runs it
// (the GED's). Presses before the guest reads count once, as a held
// button would.
func (d *Device) PressPowerButton() {
	d.mu.Lock()
	d.pressed = true
	d.mu.Unlock()
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
	case RegSleepControl:
		d.sleepType = (v & SleepTypeMask) >> SleepTypeShift
		if v&SleepEnable != 0 {
			if d.sleepType == SleepTypeS5 {
				call = d.powerOff
			} else {
				// Sleep states other than S5 are not offered (\_S5 is
				// the only \_Sx object). A guest that asks anyway
				// "wakes up" at once, so its wait for WAK_STS ends
				// instead of spinning forever.
				d.status |= WakeStatus
			}
		}
	case RegSleepStatus:
		d.status &^= v & WakeStatus
	case RegReset:
		if v == ResetValue {
			call = d.reset
		}
	}
	d.mu.Unlock()
	if call != nil {
		call()
	}
}
