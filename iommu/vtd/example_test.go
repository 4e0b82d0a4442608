package vtd_test

import (
	"fmt"

	"github.com/viovmm/vio/bus"
	"github.com/viovmm/vio/iommu/vtd"
	"github.com/viovmm/vio/memory"
)

// The unit on a machine: its registers on the MMIO bus, its DMAR table
// for the firmware tables, and one DMA view per PCI device in place of
// guest RAM.
func Example() {
	mem, err := memory.New([]memory.Layout{{GPA: 0, Size: 16 << 20}})
	if err != nil {
		panic(err)
	}
	defer mem.Close()
	unit, err := vtd.New(vtd.Config{
		Mem: mem,
		// A VMM would inject the MSI here (kvm.VM.SignalMSI).
		Interrupt:   func(addr uint64, data uint32) { fmt.Printf("MSI %#x <- %#x\n", addr, data) },
		CachingMode: true,
	})
	if err != nil {
		panic(err)
	}
	const base = 0xfed9_0000
	mmio := bus.New("mmio")
	if err := mmio.Register(base, vtd.RegisterSize, unit); err != nil {
		panic(err)
	}
	dmar := vtd.DMARTable(base)
	fmt.Printf("%s table, %d bytes\n", dmar[:4], len(dmar))

	// Until the guest's driver enables translation, a device sees guest
	// RAM as it is.
	dev := unit.DMA(vtd.SourceID(0, 3, 0))
	if _, err := dev.WriteAt([]byte("hi"), 0x1000); err != nil {
		panic(err)
	}
	// The guest reads the capability register through the bus.
	c := make([]byte, 8)
	mmio.Read(base+0x08, c)
	fmt.Printf("CAP.CM = %d\n", c[0]>>7&1)
	// Output:
	// DMAR table, 64 bytes
	// CAP.CM = 1
}
