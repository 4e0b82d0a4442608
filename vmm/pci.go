package vmm

import (
	"fmt"
	"io"
	stdnet "net"
	"os"

	"github.com/viovmm/vio/arch/x86"
	"github.com/viovmm/vio/arch/x86/acpi"
	"github.com/viovmm/vio/block/raw"
	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/devices/e1000"
	"github.com/viovmm/vio/devices/virtio/balloon"
	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/devices/virtio/console"
	virtionet "github.com/viovmm/vio/devices/virtio/net"
	"github.com/viovmm/vio/devices/virtio/rng"
	"github.com/viovmm/vio/devices/virtio/vhostnet"
	"github.com/viovmm/vio/devices/virtio/vsock"
	"github.com/viovmm/vio/devices/virtio/vufront"
	"github.com/viovmm/vio/irq/coalesce"
	"github.com/viovmm/vio/pci"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/ringpoll"
	"github.com/viovmm/vio/virtio/virtiopci"
)

// The PCI part of the guest physical map: 32-bit BARs come from the bottom
// of the MMIO hole, the ECAM window sits above them, and I/O BARs take the
// top quarter of the port space.
const (
	pciMMIOBase = x86.PCIMMIOStart
	ecamBase    = 0xe0000000
	pciPIOBase  = 0xc000
	pciPIOSize  = 0x4000
)

// maxDefaultQueues bounds the queues a disk gets by default (one per vCPU):
// each costs a goroutine and an MSI-X vector.
const maxDefaultQueues = 16

// pciDevice is one virtio device on the PCI bus, kept for its counters
// and, for disks and NICs, in the registry of removable devices (see
// hotplug.go).
type pciDevice struct {
	name      string
	dev       virtio.Device
	transport *virtiopci.Transport
	hp        *plugged // nil: not removable (rng, console)
}

// setupPCI creates the root bus and every configured virtio device.
func (v *VM) setupPCI(stdio IO) error {
	root, err := pci.NewRoot(pci.RootConfig{
		MMIO: v.mmio, PIO: v.pio,
		MMIO32:    pci.Window{Base: pciMMIOBase, Size: ecamBase - pciMMIOBase},
		PIOWindow: pci.Window{Base: pciPIOBase, Size: pciPIOSize},
	})
	if err != nil {
		return err
	}
	if err := v.pio.Register(pci.ConfigAddressPort, pci.ConfigPortsSize, root.ConfigPorts()); err != nil {
		return err
	}
	if err := v.mmio.Register(ecamBase, pci.ECAMSize, root.ECAM()); err != nil {
		return err
	}
	v.pciRoot = root
	if err := v.setupIOMMU(); err != nil {
		return err
	}
	v.msi = newMSIRoutes(v.kvm)
	v.ioevents = newIOEvents(v.kvm)
	v.closers = append(v.closers, closerFunc(func() error { v.ioevents.close(); v.msi.close(); return nil }))
	if err := v.setupHotplug(); err != nil {
		return err
	}

	for i := range v.cfg.Disks {
		d := &v.cfg.Disks[i] // newDisk pins a probed format into the config
		if isIDE(d) {
			continue // see addIDE
		}
		if _, err := v.plugDisk(fmt.Sprintf("disk%d", i), d); err != nil {
			what := d.Path
			if d.VhostUser {
				what = "vhost-user " + d.VhostSocket
			}
			return fmt.Errorf("disk %d (%s): %w", i, what, err)
		}
	}
	if err := v.addCloudInitSeed(); err != nil {
		return err
	}
	if err := v.addIDE(); err != nil {
		return err
	}
	for i, n := range v.cfg.Net {
		if n.Model == config.NetE1000 {
			if err := v.addE1000(fmt.Sprintf("net%d", i), n); err != nil {
				return fmt.Errorf("net %d (%s): %w", i, netName(n), err)
			}
			continue
		}
		if _, err := v.plugNet(fmt.Sprintf("net%d", i), &v.cfg.Net[i]); err != nil {
			return fmt.Errorf("net %d (%s): %w", i, netName(n), err)
		}
	}
	if v.cfg.RNG != nil {
		var src io.Reader
		if v.cfg.RNG.Src != "" && v.cfg.RNG.Src != "/dev/urandom" {
			f, err := os.Open(v.cfg.RNG.Src)
			if err != nil {
				return fmt.Errorf("rng source: %w", err)
			}
			v.closers = append(v.closers, f)
			src = f
		}
		if err := v.addVirtio("rng", rng.New(src)); err != nil {
			return err
		}
	}
	if m := v.cfg.Console.Mode; m != "" && m != config.ModeOff {
		out, in, err := consoleStreams(v, v.cfg.Console, stdio)
		if err != nil {
			return fmt.Errorf("virtio console: %w", err)
		}
		dev, err := console.New(in, out, console.Config{})
		if err != nil {
			return err
		}
		// Its output goes through a buffer and a goroutine of its own (a
		// stalled terminal or socket never holds the guest); Close, run
		// after the reset addVirtio registers, flushes it.
		v.closers = append(v.closers, dev)
		if err := v.addVirtio("console", dev); err != nil {
			return err
		}
	}
	if err := v.addBalloon(); err != nil {
		return err
	}
	if err := v.addVsock(); err != nil {
		return err
	}
	// Last: see addPassthrough.
	return v.addPassthrough()
}

// addVirtio puts dev on the next free slot of bus 0.
func (v *VM) addVirtio(name string, dev virtio.Device) error {
	slot, err := v.nextSlot(name)
	if err != nil {
		return err
	}
	t, err := virtiopci.New(dev, v.dmaFor(slot), virtiopci.Options{Router: v.msi.device(), IOEvents: v.ioevents,
		OnEvent: v.deviceEvents(name), AccessPlatform: v.iommu != nil})
	if err != nil {
		v.freeSlot(slot)
		return fmt.Errorf("%s: %w", name, err)
	}
	if err := v.pciRoot.Add(pci.BDF{Device: slot}, t); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	v.hp.mu.Lock()
	v.pciDevices = append(v.pciDevices, &pciDevice{name: name, dev: dev, transport: t})
	v.hp.mu.Unlock()
	v.closers = append(v.closers, closerFunc(func() error { dev.Reset(); return nil }))
	return nil
}

// nextSlot takes the lowest free device number on bus 0 (00.0 is the host
// bridge); a removed device's number is free again.
func (v *VM) nextSlot(name string) (uint8, error) {
	v.hp.mu.Lock()
	defer v.hp.mu.Unlock()
	for s := uint8(1); s <= 31; s++ {
		if v.hp.used&(1<<s) == 0 {
			v.hp.used |= 1 << s
			return s, nil
		}
	}
	return 0, fmt.Errorf("%s: no free PCI slot (31 devices at most)", name)
}

// e1000Device is one emulated Intel NIC on the PCI bus.
type e1000Device struct {
	name string
	dev  *e1000.Device
}

// addE1000 puts an emulated 82540EM on the next free slot, its INTA#
// wired to an IOAPIC input above the ISA ones. The route is what the MP
// table and the DSDT's _PRT tell the guest; the interrupt line register
// says the same for guests that read it.
func (v *VM) addE1000(name string, n config.Net) error {
	bes, err := v.netBackends(n) // one: an e1000 has one queue pair (config.Validate)
	if err != nil {
		return err
	}
	t := bes[0]
	var mac stdnet.HardwareAddr
	if n.MAC != "" {
		m, err := config.ParseMAC(n.MAC)
		if err != nil {
			return err
		}
		mac = m[:]
	}
	slot, err := v.nextSlot(name)
	if err != nil {
		return err
	}
	dev, err := e1000.New(t, v.dmaFor(slot), e1000.Config{MAC: mac})
	if err != nil {
		v.freeSlot(slot)
		return err
	}
	// Closers run in reverse: the device stops before its TAP closes.
	v.closers = append(v.closers, dev)
	gsi := intxGSI(slot, 0)
	dev.SetINTxLine(isaLine{v.kvm, uint32(gsi)})
	dev.SetBytes(pci.RegInterruptLine, []byte{gsi})
	if err := v.pciRoot.Add(pci.BDF{Device: slot}, dev); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	v.intx = append(v.intx, x86.PCIInterrupt{Device: slot, Pin: 0, IOAPICPin: gsi})
	v.e1000s = append(v.e1000s, e1000Device{name: name, dev: dev})
	return nil
}

// intxGSI spreads INTx pins over IOAPIC inputs 16-23 (KVM's IOAPIC has
// 24; 0-15 are ISA's), rotating by slot as PCI bridges swizzle.
func intxGSI(slot, pin uint8) uint8 { return 16 + (slot+pin)%8 }

// diskCache resolves a disk's cache mode: cache=, else none for
// direct=on, else writeback. Writethrough reports whether the guest sees
// a write cache it need not flush (writethrough and directsync).
func diskCache(d *config.Disk) (cache raw.CacheMode, writethrough bool, err error) {
	mode := d.Cache
	if d.Direct && mode == "" {
		mode = "none"
	}
	if mode == "" {
		mode = "writeback"
	}
	cache, err = raw.ParseCacheMode(mode)
	return cache, mode == "writethrough" || mode == "directsync", err
}

func (v *VM) newDisk(d *config.Disk) (virtio.Device, error) {
	if d.VhostUser {
		return v.newVhostUserDisk(d)
	}
	cache, writethrough, err := diskCache(d)
	if err != nil {
		return nil, err
	}
	be, err := v.buildDisk(d, cache, func(msg string) { v.log.Warn(msg) })
	if err != nil {
		return nil, err
	}
	// The device does not own its back-end: close it after the device
	// has been reset (closers run in reverse order).
	v.closers = append(v.closers, be)
	// One request queue per vCPU by default, as QEMU does: Linux's
	// blk-mq then gives each CPU its own queue and no CPU waits on another's
	// doorbell.
	queues := d.NumQueues
	if queues == 0 {
		queues = min(v.cfg.CPUs.BootVCPUs, maxDefaultQueues)
	}
	vic, err := coalesce.Parse(d.Coalesce)
	if err != nil {
		return nil, err
	}
	poll, err := ringpoll.Parse(d.Poll)
	if err != nil {
		return nil, err
	}
	return blk.New(be, blk.Config{
		Coalesce:       vic,
		Poll:           poll,
		Serial:         d.Serial,
		ReadOnly:       d.Readonly,
		NumQueues:      queues,
		QueueSize:      uint16(d.QueueSize),
		Writethrough:   writethrough,
		OnBackendError: v.diskErrorEvents(d.ID),
	})
}

func (v *VM) newNIC(n config.Net) (virtio.Device, error) {
	if n.VhostUser {
		return v.newVhostUserNIC(n)
	}
	if n.VhostNet {
		return v.newVhostNetNIC(n)
	}
	if len(n.TapFDs) > 0 {
		return v.newNICFromFDs(n)
	}
	bes, err := v.netBackends(n)
	if err != nil {
		return nil, err
	}
	cfg, err := nicConfig(n)
	if err != nil {
		return nil, err
	}
	return virtionet.NewMultiQueue(bes, cfg)
}

// nicConfig is the virtio-net device configuration of NIC n.
func nicConfig(n config.Net) (virtionet.Config, error) {
	var mac stdnet.HardwareAddr
	if n.MAC != "" {
		m, err := config.ParseMAC(n.MAC)
		if err != nil {
			return virtionet.Config{}, err
		}
		mac = m[:]
	}
	return virtionet.Config{MAC: mac, QueueSize: uint16(n.QueueSize), Standby: n.Standby}, nil
}

// acpiPCI describes the PCI root for the ACPI tables.
func acpiPCI(c *acpi.Config) {
	c.PCIHole = acpi.Window{Base: pciMMIOBase, Size: x86.PCIMMIOEnd - pciMMIOBase}
	c.ECAM = &acpi.ECAMWindow{Base: ecamBase}
	c.PCIHotplug = &acpi.PCIHotplug{Port: hotplugPort, GPE: hotplugGPE}
}

// Stats returns the VM's counters: per vCPU, the exits to vio by reason
// (exits KVM handles in the kernel are not seen here), and per PCI device,
// its transport and device counters (requests, bytes, errors,
// notifications, interrupts; for an e1000, frames, bytes, interrupts and
// register accesses), and for a virtio NIC each queue pair's ("queues").
func (v *VM) Stats() map[string]any {
	out := map[string]any{}
	if v.group != nil {
		var cpus []map[string]any
		for _, r := range v.group.Runners() {
			c := r.Counters()
			exits := map[string]uint64{}
			for reason, n := range c.Exits {
				exits[reason.String()] = n
			}
			cpus = append(cpus, map[string]any{"exits": exits, "kicks": c.Kicks,
				"unclaimed_pio":  c.UnclaimedPIOReads + c.UnclaimedPIOWrites,
				"unclaimed_mmio": c.UnclaimedMMIOReads + c.UnclaimedMMIOWrites})
		}
		out["vcpus"] = cpus
	}
	v.hp.mu.Lock()
	devices := append([]*pciDevice(nil), v.pciDevices...)
	v.hp.mu.Unlock()
	for _, d := range devices {
		s := map[string]any{"transport": d.transport.Stats()}
		if st, ok := d.dev.(interface{ Stats() blk.Stats }); ok {
			s["device"] = st.Stats()
		} else if st, ok := d.dev.(*virtionet.Device); ok {
			s["device"] = st.Stats()
			// Per queue pair: which queues carried the traffic.
			s["queues"] = st.QueueStats()
		} else if st, ok := d.dev.(*vhostnet.Device); ok {
			// The kernel moves the frames: vio counts the control
			// queue and what it forwards; the TAP counts the frames.
			s["device"] = st.Stats()
		} else if st, ok := d.dev.(interface{ Stats() console.Stats }); ok {
			s["device"] = st.Stats()
		} else if b, ok := d.dev.(*balloon.Device); ok {
			s["device"] = b.Stats()
			b.RequestStats() // fresh guest statistics for the next read
		} else if st, ok := d.dev.(interface{ Stats() vsock.Stats }); ok {
			s["device"] = st.Stats()
		}
		if d.hp != nil {
			if b := backendStats(d.hp.owned); b != nil {
				s["backend"] = b
			}
		}
		out[d.name] = s
	}
	for _, d := range v.e1000s {
		out[d.name] = map[string]any{"device": d.dev.Stats()}
	}
	v.hp.mu.Lock()
	pts := append([]*ptDevice(nil), v.ptDevices...)
	v.hp.mu.Unlock()
	for _, d := range pts {
		out[d.cfg.ID] = map[string]any{"device": d.dev.Stats()}
	}
	if v.ide != nil {
		out["ide"] = map[string]any{"device": v.ide.Stats()}
	}
	return out
}

// newVhostUserNIC builds a virtio-net device whose queues the vhost-user
// back-end at n.VhostSocket serves (docs/vhost-user.md).
func (v *VM) newVhostUserNIC(n config.Net) (virtio.Device, error) {
	if v.iommu != nil {
		return nil, fmt.Errorf("a vhost-user NIC cannot sit behind the emulated IOMMU yet: start the VM without iommu, or use a TAP")
	}
	var mac stdnet.HardwareAddr
	if n.MAC != "" {
		m, err := config.ParseMAC(n.MAC)
		if err != nil {
			return nil, err
		}
		mac = m[:]
	}
	dev, err := vufront.New(vufront.Config{
		Type:      virtio.TypeNet,
		MAC:       mac,
		Socket:    n.VhostSocket,
		Memory:    v.mem,
		QueueSize: uint16(n.QueueSize),
		Log:       v.log.With("net", n.ID),
		// A restored VM's, or a migration's destination's: connected
		// once the state is restored (vhostuser.go).
		Deferred: v.vhostDeferred,
	})
	if err != nil {
		return nil, err
	}
	v.closers = append(v.closers, dev)
	return dev, nil
}

// newVhostUserDisk builds a virtio-blk device whose queues the vhost-user
// back-end at d.VhostSocket serves (docs/vhost-user.md).
func (v *VM) newVhostUserDisk(d *config.Disk) (virtio.Device, error) {
	if v.iommu != nil {
		// The back-end would get I/O virtual addresses it cannot
		// translate (no IOTLB messages).
		return nil, fmt.Errorf("a vhost-user disk cannot sit behind the emulated IOMMU yet: start the VM without iommu, or use an image disk")
	}
	dev, err := vufront.New(vufront.Config{
		Socket:    d.VhostSocket,
		Memory:    v.mem,
		NumQueues: d.NumQueues,
		QueueSize: uint16(d.QueueSize),
		Log:       v.log.With("disk", d.ID),
		Deferred:  v.vhostDeferred,
	})
	if err != nil {
		return nil, err
	}
	// The number of queues the back-end gave is pinned into the config,
	// which a snapshot and a migration carry: a restored or migrated
	// disk, built before it may connect, takes it from there.
	d.NumQueues = dev.NumQueues()
	// Closers run in reverse: this one runs after the device's reset.
	v.closers = append(v.closers, dev)
	return dev, nil
}
