package virtiopcitest

import (
	"testing"

	"github.com/viovmm/vio/bus"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/pci"
	"github.com/viovmm/vio/pci/pcitest"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/virtiopci"
)

// Machine is one virtio device on a PCI root of its own, with guest RAM
// and a probed Guest driving it: the set-up every device test starts from.
type Machine struct {
	Mem       *memory.Memory
	MMIO, PIO *bus.Bus
	Root      *pci.Root
	Router    *pcitest.Router // records the MSI-X messages the device sends
	Transport *virtiopci.Transport
	Guest     *Guest
}

// NewMachine puts dev behind a virtio-pci transport at 00:01.0, with memSize
// bytes of RAM at GPA 0 and a router buffering routerDepth messages, and
// probes it. Cleanup resets the device and frees the RAM.
func NewMachine(t testing.TB, dev virtio.Device, memSize uint64, routerDepth int) *Machine {
	t.Helper()
	mem, err := memory.New([]memory.Layout{{GPA: 0, Size: memSize}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	return NewMachineOn(t, dev, mem, routerDepth)
}

// NewMachineOn is NewMachine on existing guest RAM, which the caller
// frees: a restore test builds a second machine over the first one's
// memory, as a restored VM gets the snapshot's RAM.
func NewMachineOn(t testing.TB, dev virtio.Device, mem *memory.Memory, routerDepth int) *Machine {
	t.Helper()
	mmio, pio := bus.New("mmio"), bus.New("pio")
	m := &Machine{Mem: mem, MMIO: mmio, PIO: pio, Router: pcitest.NewRouter(routerDepth)}
	root, err := pci.NewRoot(pci.RootConfig{
		MMIO: mmio, PIO: pio,
		MMIO32:    pci.Window{Base: 0xc0000000, Size: 0x10000000},
		PIOWindow: pci.Window{Base: 0x1000, Size: 0x1000},
	})
	if err != nil {
		t.Fatal(err)
	}
	m.Root = root
	if err := pio.Register(pci.ConfigAddressPort, pci.ConfigPortsSize, root.ConfigPorts()); err != nil {
		t.Fatal(err)
	}
	if m.Transport, err = virtiopci.New(dev, m.Mem, virtiopci.Options{Router: m.Router}); err != nil {
		t.Fatal(err)
	}
	a := pci.BDF{Device: 1}
	if err := root.Add(a, m.Transport); err != nil {
		t.Fatal(err)
	}
	if m.Guest, err = Probe(mmio, pio, m.Mem, a); err != nil {
		t.Fatal(err)
	}
	// The test may have restored a state that moved BAR 0 or turned
	// decoding off: remap it first so the reset reaches the device.
	t.Cleanup(func() {
		m.Guest.Remap()
		m.Guest.Reset()
	})
	return m
}
