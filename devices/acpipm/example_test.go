package acpipm_test

import (
	"fmt"

	"github.com/viovmm/vio/arch/x86"
	"github.com/viovmm/vio/arch/x86/acpi"
	"github.com/viovmm/vio/bus"
	"github.com/viovmm/vio/devices/acpipm"
	"github.com/viovmm/vio/memory"
)

// The vmm's wiring: the devices on the port bus, the tables pointing at
// them, and the RSDP address for the zero page.
func Example() {
	layout, _ := x86.RAMLayout(64 << 20)
	mem, _ := memory.New(layout)
	pio := bus.New("pio")

	pm := acpipm.New(acpipm.Config{
		PowerOff: func() { fmt.Println("guest powered off") },
		Reset:    func() { fmt.Println("guest reset") },
	})
	_ = pio.Register(acpipm.PortAddr, acpipm.Size, pm)
	_ = pio.Register(acpipm.PvPanicPort, acpipm.PvPanicSize,
		acpipm.NewPvPanic(func(ev uint8) { fmt.Printf("guest panic, events %#x\n", ev) }))

	rsdp, err := acpi.Write(mem, acpi.Config{
		NumCPUs: 2,
		PM: acpi.PMRegisters{
			PM1EventPort:   acpipm.PM1EventPort,
			PM1ControlPort: acpipm.PM1ControlPort,
			GPE0Port:       acpipm.GPE0Port,
			ResetPort:      acpipm.ResetPort,
			ResetValue:     acpipm.ResetValue,
			S5SleepType:    acpipm.SleepTypeS5,
		},
		PCIHole:     acpi.Window{Base: x86.PCIMMIOStart, Size: x86.PCIMMIOEnd - x86.PCIMMIOStart},
		COM1:        true,
		PvPanicPort: acpipm.PvPanicPort,
		I8042:       true,
		RTC:         true,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("RSDP at %#x\n", rsdp)

	// What the guest does on "poweroff" (PM1_CNT is 16 bits: SLP_TYP
	// and SLP_EN are in its high byte) and on a panic.
	pio.Write(acpipm.PM1EventPort, []byte{0, acpipm.WakeStatus >> 8})
	pio.Write(acpipm.PM1ControlPort, []byte{acpipm.SCIEnable, (acpipm.SleepTypeS5<<acpipm.SleepTypeShift | acpipm.SleepEnable) >> 8})
	pio.Write(acpipm.PvPanicPort, []byte{acpipm.PvPanicPanicked})
	// Output:
	// RSDP at 0xfa000
	// guest powered off
	// guest panic, events 0x1
}
