package virtiopci_test

import (
	"fmt"

	"github.com/viovmm/vio/bus"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/pci"
	"github.com/viovmm/vio/pci/pcitest"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/virtiopci"
)

// nullDev is the smallest virtio.Device: an entropy device that never
// answers (a real one is devices/virtio/rng).
type nullDev struct{}

func (nullDev) Type() virtio.DeviceType           { return virtio.TypeRNG }
func (nullDev) Features() uint64                  { return 0 }
func (nullDev) QueueMaxSizes() []uint16           { return []uint16{256} }
func (nullDev) ReadConfig(_ uint64, d []byte)     { clear(d) }
func (nullDev) WriteConfig(uint64, []byte)        {}
func (nullDev) Activate(*virtio.Activation) error { return nil }
func (nullDev) Reset()                            {}

// Example shows how a VMM assembles a virtio-pci device: a root bus on the
// MMIO and PIO buses, the transport with an MSI router (the VMM's is KVM
// GSI routing + irqfd), and the notify addresses it attaches ioeventfds to
// once the guest has enabled the BAR.
func Example() {
	mem, _ := memory.New([]memory.Layout{{GPA: 0, Size: 1 << 20}})
	defer mem.Close()
	mmio, pio := bus.New("mmio"), bus.New("pio")
	root, _ := pci.NewRoot(pci.RootConfig{
		MMIO: mmio, PIO: pio,
		MMIO32:    pci.Window{Base: 0xc0000000, Size: 0x10000000},
		PIOWindow: pci.Window{Base: 0x1000, Size: 0x1000},
	})
	pio.Register(pci.ConfigAddressPort, pci.ConfigPortsSize, root.ConfigPorts())
	mmio.Register(0xe0000000, pci.ECAMSize, root.ECAM()) // described by ACPI MCFG

	tr, err := virtiopci.New(nullDev{}, mem, virtiopci.Options{Router: pcitest.NewRouter(8)})
	if err != nil {
		panic(err)
	}
	slot := pci.BDF{Device: 1}
	root.Add(slot, tr) // assigns BAR 0 from the 32-bit window

	// The guest finds the device and enables memory decoding.
	guest := pcitest.CF8{PIO: pio}
	fmt.Printf("%s: %04x:%04x\n", slot, guest.Read(slot, 0, 2), guest.Read(slot, 2, 2))
	guest.Write(slot, pci.RegCommand, 2, pci.CommandMemory|pci.CommandBusMaster)

	// Now each queue has its own notify address; the VMM attaches an
	// ioeventfd there (Options.IOEvents does it automatically) and calls
	// tr.Notify(queue) when it fires.
	addr, ok := tr.NotifyAddr(0)
	fmt.Printf("queue 0 notify at %#x (%v)\n", addr, ok)
	// Output:
	// 00:01.0: 1af4:1044
	// queue 0 notify at 0xc0003000 (true)
}
