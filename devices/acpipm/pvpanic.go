package acpipm

import "github.com/viovmm/vio/bus"

// The pvpanic device (QEMU's docs/specs/pvpanic.txt): one I/O port whose
// read returns the events the host understands and to which the guest
// writes an event when it happens. arch/x86/acpi declares it in the DSDT
// (_HID "QEMU0001"), where Linux's pvpanic driver finds it.
const (
	PvPanicPort = 0x505
	PvPanicSize = 1

	PvPanicPanicked    = 1 << 0 // the guest panicked
	PvPanicCrashLoaded = 1 << 1 // the guest panicked and will kexec a crash kernel

	// PvPanicEvents is what a read of the port returns.
	PvPanicEvents = PvPanicPanicked | PvPanicCrashLoaded
)

// PvPanic is the pvpanic device. Register it at PvPanicPort, PvPanicSize.
type PvPanic struct {
	event func(events uint8)
}

var _ bus.Device = (*PvPanic)(nil)

// NewPvPanic returns a pvpanic device that calls event with the
// supported bits of every write that has any (unknown bits are dropped,
// as the guest was told they are not understood). event runs on the
// vCPU thread with no lock held; it may be nil.
func NewPvPanic(event func(events uint8)) *PvPanic { return &PvPanic{event: event} }

// Read returns PvPanicEvents in the first byte, zeros after it.
func (p *PvPanic) Read(_ uint64, data []byte) {
	for i := range data {
		data[i] = 0
	}
	if len(data) > 0 {
		data[0] = PvPanicEvents
	}
}

// Write reports the event bits of the first byte.
func (p *PvPanic) Write(_ uint64, data []byte) {
	if len(data) == 0 || p.event == nil {
		return
	}
	if ev := data[0] & PvPanicEvents; ev != 0 {
		p.event(ev)
	}
}
