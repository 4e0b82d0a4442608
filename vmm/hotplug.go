package vmm

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/devices/pcihp"
	virtionet "github.com/viovmm/vio/devices/virtio/net"
	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/tap"
	"github.com/viovmm/vio/pci"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/virtiopci"
)

// ACPI PCI hot plug (arch/x86/acpi.PCIHotplug, devices/pcihp): the
// register block's ports and the general-purpose event that signals a
// change (a bit of devices/acpipm's GPE0 block, whose \_GPE._E01 method
// scans the slots). The SCI is its interrupt, so hot plug takes no ISA
// IRQ of its own.
const (
	hotplugPort = 0xae00
	hotplugGPE  = 1
)

// Errors of hot plug, matched with errors.Is.
var (
	// ErrNoDevice: no device has the id.
	ErrNoDevice = errors.New("no such device")
	// ErrNotReleased: the guest did not release the device in time.
	ErrNotReleased = errors.New("the guest did not release the device")
	// ErrNotRemovable: the device cannot be hot-plugged or removed.
	ErrNotRemovable = errors.New("the device cannot be hot-plugged or removed")
)

// Hotplugger is a Machine that adds and removes devices while its guest
// runs. *VM is one; the Controller uses it when its Machine has it.
type Hotplugger interface {
	// AddDisk and AddNet build the device, put it on a free slot of bus
	// 0 and tell the guest; they return its address as Cloud Hypervisor
	// writes it ("0000:00:05.0"). The config is the Controller's copy:
	// AddDisk may pin a probed image format into it. The device's ID
	// is set and unique.
	AddDisk(d *config.Disk) (bdf string, err error)
	AddNet(n *config.Net) (bdf string, err error)
	AddVsock(vs *config.Vsock) (bdf string, err error)
	// AddDevice passes the host PCI device d names through (VFIO); its
	// ID is set and unique.
	AddDevice(d *config.Device) (bdf string, err error)
	// RemoveDevice asks the guest to release the device with the id and
	// waits up to wait for it: once the guest has (its _EJ0 ran), the
	// device is torn down (back-end closed, interrupts, doorbells and
	// BARs gone, slot free) and gone is called, from another goroutine,
	// before RemoveDevice returns nil. If the guest has not released it
	// in time, RemoveDevice returns ErrNotReleased; the request stands,
	// and gone is called if the guest releases it later.
	RemoveDevice(id string, wait time.Duration, gone func()) error
}

var _ Hotplugger = (*VM)(nil)

// hotplug is the VM's part of hot plug: the register block, the slots
// in use and the removable devices.
type hotplug struct {
	regs *pcihp.Device

	mu   sync.Mutex // guards used, changed, VM.pciDevices, VM.ptDevices and each plugged's fields
	used uint32     // device numbers in use on bus 0 (bit n = slot n)
	// changed: a device other than a pass-through one was hot-plugged
	// or removed since boot. Pass-through devices take their slots after
	// all others at boot and a hot-plugged one takes the lowest free
	// slot, which is above them all while nothing else changed; so
	// until then a restore from the config (without the pass-through
	// devices, which no snapshot or migration carries plugged) gives
	// every other device the slot the guest knows.
	changed bool
}

// hotplugChanged refuses a snapshot of a VM whose devices changed since
// boot: a restore builds devices in config order, which need not be the
// slots the guest saw.
func (v *VM) hotplugChanged(verb string) error {
	v.hp.mu.Lock()
	defer v.hp.mu.Unlock()
	if v.hp.changed {
		return snapErr(ErrNotSaveable, "cannot %s: devices were hot-plugged or removed since this VM booted, and a restore would not put them back in the same slots; reboot the VM (vm.reboot) first", verb)
	}
	return nil
}

// plugged is what a removable device owns: a virtio device beyond its
// pciDevice, a pass-through device (ptDevice) all of it.
type plugged struct {
	id    string
	slot  uint8
	msi   *deviceMSI
	owned []io.Closer // closed in reverse once the device is off the bus
	// stop quiets the device once it is off the bus, before owned is
	// closed (a virtio device's reset); nil for none.
	stop func()
	// passthrough: a host device (passthrough.go). Such devices sit above
	// every other device's slot, so their coming and going does not
	// change the slots a restore gives the others (hotplug.changed).
	passthrough bool
	failover    string // a failover primary: its standby NIC's id

	ejecting bool          // the host asked the guest to release it
	gone     []func()      // called once it is torn down
	released chan struct{} // closed once it is torn down
}

// raiseHotplugGPE sets the hot-plug GPE's status bit, which raises the
// SCI once the guest has enabled the GPE. The bit (and so the SCI, a
// level) stays until the guest clears it, so an event while the vCPUs are
// paused or before the guest's ACPI is up is seen when it gets there.
func (v *VM) raiseHotplugGPE() {
	if v.platform != nil && v.platform.pm != nil {
		v.platform.pm.RaiseGPE(hotplugGPE)
	}
	if f := v.opts.hotplugEvent; f != nil {
		f(v)
	}
}

// setupHotplug serves the register block and makes the registry's
// devices part of the VM's teardown.
func (v *VM) setupHotplug() error {
	v.hp.regs = pcihp.New(pcihp.Config{
		Notify: v.raiseHotplugGPE,
		// The eject arrives on a vCPU thread, which must not wait for
		// a device's workers to stop.
		Eject: func(slot int) { go v.guestReleased(uint8(slot)) },
	})
	if err := v.pio.Register(hotplugPort, pcihp.Size, v.hp.regs); err != nil {
		return fmt.Errorf("PCI hot-plug registers: %w", err)
	}
	v.closers = append(v.closers, closerFunc(func() error {
		v.hp.mu.Lock()
		ps := v.removablesLocked()
		v.hp.mu.Unlock()
		for _, p := range ps {
			v.teardown(p, false)
		}
		return nil
	}))
	return nil
}

// plugDisk builds a disk and puts it on the bus (boot or hot plug), with
// its SR-IOV virtual functions if it has some (sriov.go).
func (v *VM) plugDisk(name string, d *config.Disk) (*pciDevice, error) {
	var sriov func(slot uint8) *virtiopci.SRIOV
	return v.plugWith(name, d.ID, func() (virtio.Device, error) {
		dev, err := v.newDisk(d)
		if err != nil {
			return nil, err
		}
		sriov, err = v.sriovDisk(name, d)
		if err != nil {
			dev.Reset()
		}
		return dev, err
	}, func(slot uint8) *virtiopci.SRIOV {
		if sriov == nil {
			return nil
		}
		return sriov(slot)
	})
}

// plugNet builds a virtio NIC and puts it on the bus.
func (v *VM) plugNet(name string, n *config.Net) (*pciDevice, error) {
	return v.plug(name, n.ID, func() (virtio.Device, error) { return v.newNIC(*n) })
}

// plug builds a device with build, which registers what it opens in
// v.closers; those become the device's own, closed when it goes.
func (v *VM) plug(name, id string, build func() (virtio.Device, error)) (*pciDevice, error) {
	return v.plugWith(name, id, build, nil)
}

// plugWith is plug for a device that may be an SR-IOV physical function:
// sriov, if set, gives its options once its slot is known.
func (v *VM) plugWith(name, id string, build func() (virtio.Device, error), sriov func(slot uint8) *virtiopci.SRIOV) (*pciDevice, error) {
	mark := len(v.closers)
	dev, err := build()
	owned := append([]io.Closer(nil), v.closers[mark:]...)
	v.closers = v.closers[:mark]
	if err != nil {
		closeReverse(owned)
		return nil, err
	}
	slot, err := v.nextSlot(name)
	if err != nil {
		closeReverse(owned)
		return nil, err
	}
	msi := v.msi.newDevice()
	opts := virtiopci.Options{Router: msi, IOEvents: v.ioevents, AccessPlatform: v.iommu != nil}
	if sriov != nil {
		opts.SRIOV = sriov(slot)
	}
	t, err := virtiopci.New(dev, v.dmaFor(slot), opts)
	if err != nil {
		v.freeSlot(slot)
		closeReverse(owned)
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := v.pciRoot.Add(pci.BDF{Device: slot}, t); err != nil {
		v.freeSlot(slot)
		closeReverse(owned)
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	d := &pciDevice{name: name, dev: dev, transport: t, hp: &plugged{
		id: id, slot: slot, msi: msi, owned: owned, stop: dev.Reset, released: make(chan struct{}),
	}}
	v.hp.mu.Lock()
	v.pciDevices = append(v.pciDevices, d)
	v.hp.mu.Unlock()
	return d, nil
}

func closeReverse(cs []io.Closer) {
	for i := len(cs) - 1; i >= 0; i-- {
		cs[i].Close()
	}
}

func (v *VM) freeSlot(slot uint8) {
	v.hp.mu.Lock()
	v.hp.used &^= 1 << slot
	v.hp.mu.Unlock()
}

// bdfString is a bus 0 address as Cloud Hypervisor's PciDeviceInfo
// writes it: segment, bus, device, function.
func bdfString(slot uint8) string { return fmt.Sprintf("0000:00:%02x.0", slot) }

// AddDisk implements Hotplugger.
func (v *VM) AddDisk(d *config.Disk) (string, error) {
	if len(d.VirtualFunctions) > 0 {
		return "", fmt.Errorf("%w: a disk with SR-IOV virtual functions is part of the VM from its boot: put it in the VM's config", ErrNotRemovable)
	}
	if err := v.checkNewID(d.ID); err != nil {
		return "", err
	}
	p, err := v.plugDisk(d.ID, d)
	if err != nil {
		return "", err
	}
	return v.announce(p.hp)
}

// AddNet implements Hotplugger.
func (v *VM) AddNet(n *config.Net) (string, error) {
	if n.Model == config.NetE1000 {
		return "", fmt.Errorf("%w: an e1000's interrupt route is fixed when the VM boots: hot-plug a model=virtio NIC instead", ErrNotRemovable)
	}
	if err := v.checkNewID(n.ID); err != nil {
		return "", err
	}
	p, err := v.plugNet(n.ID, n)
	if err != nil {
		return "", err
	}
	return v.announce(p.hp)
}

// AddVsock implements Hotplugger.
func (v *VM) AddVsock(vs *config.Vsock) (string, error) {
	if err := v.checkNewID(vs.ID); err != nil {
		return "", err
	}
	p, err := v.plugVsock(vs.ID, vs)
	if err != nil {
		return "", err
	}
	return v.announce(p.hp)
}

func (v *VM) checkNewID(id string) error {
	if id == "" {
		return fmt.Errorf("%w: a hot-plugged device needs an id", ErrInvalidConfig)
	}
	if v.findPlugged(id) != nil {
		return fmt.Errorf("%w: a device with id %q exists already", ErrInvalidConfig, id)
	}
	return nil
}

// announce tells the guest a device arrived in p's slot.
func (v *VM) announce(p *plugged) (string, error) {
	if err := v.hp.regs.Plug(int(p.slot)); err != nil {
		v.teardown(p, true)
		return "", err
	}
	if !p.passthrough {
		v.hp.mu.Lock()
		v.hp.changed = true
		v.hp.mu.Unlock()
	}
	v.log.Info("device hot-plugged", "id", p.id, "bdf", bdfString(p.slot))
	return bdfString(p.slot), nil
}

// find returns the removable virtio device with the id, or nil.
func (v *VM) find(id string) *pciDevice {
	v.hp.mu.Lock()
	defer v.hp.mu.Unlock()
	for _, d := range v.pciDevices {
		if d.hp != nil && d.hp.id == id {
			return d
		}
	}
	return nil
}

// removablesLocked lists every removable device; hp.mu is held.
func (v *VM) removablesLocked() []*plugged {
	var ps []*plugged
	for _, d := range v.pciDevices {
		if d.hp != nil {
			ps = append(ps, d.hp)
		}
	}
	for _, d := range v.ptDevices {
		ps = append(ps, d.hp)
	}
	return ps
}

// findPlugged returns the removable device (virtio or pass-through) with
// the id, or nil.
func (v *VM) findPlugged(id string) *plugged {
	v.hp.mu.Lock()
	defer v.hp.mu.Unlock()
	for _, p := range v.removablesLocked() {
		if p.id == id {
			return p
		}
	}
	return nil
}

// RemoveDevice implements Hotplugger.
func (v *VM) RemoveDevice(id string, wait time.Duration, gone func()) error {
	p := v.findPlugged(id)
	if p == nil {
		for _, n := range v.cfg.Net {
			if n.ID == id && n.Model == config.NetE1000 {
				return fmt.Errorf("%w: %q is an e1000, which stays until the VM stops", ErrNotRemovable, id)
			}
		}
		return fmt.Errorf("%w: no removable device has id %q", ErrNoDevice, id)
	}
	if d := v.find(id); d != nil && d.transport.SRIOV() != nil {
		return fmt.Errorf("%w: %q has SR-IOV virtual functions and stays until the VM stops", ErrNotRemovable, id)
	}
	if p.passthrough && v.iommu != nil {
		return fmt.Errorf("%w: %q is a pass-through device behind the emulated IOMMU, which stays until the VM stops", ErrNotRemovable, id)
	}
	released, err := v.requestEject(p, gone)
	if err != nil {
		return err
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-released:
		v.log.Info("device removed", "id", id, "bdf", bdfString(p.slot))
		return nil
	case <-t.C:
		return fmt.Errorf("%w: device %q (%s) was not released by the guest within %v; the eject request stands and the device goes when the guest lets it go (check that the guest has ACPI PCI hot plug, acpiphp, and that nothing holds the device)",
			ErrNotReleased, id, bdfString(p.slot), wait)
	}
}

// requestEject asks the guest to release p; gone, if set, is called once
// it has (see Hotplugger.RemoveDevice). The channel is closed then.
func (v *VM) requestEject(p *plugged, gone func()) (<-chan struct{}, error) {
	v.hp.mu.Lock()
	p.ejecting = true
	if gone != nil {
		p.gone = append(p.gone, gone)
	}
	v.hp.mu.Unlock()
	if err := v.hp.regs.RequestEject(int(p.slot)); err != nil {
		return nil, err
	}
	return p.released, nil
}

// withdrawEject takes back an eject request the guest has not answered:
// the device stays, and the guest is told its slot has a device, which
// it finds again if it had begun to let it go. It returns false if the
// device has gone meanwhile.
func (v *VM) withdrawEject(p *plugged) bool {
	v.hp.mu.Lock()
	select {
	case <-p.released:
		v.hp.mu.Unlock()
		return false
	default:
	}
	p.ejecting, p.gone = false, nil
	v.hp.mu.Unlock()
	// Plug withdraws the pending request and notifies the slot.
	if err := v.hp.regs.Plug(int(p.slot)); err != nil {
		v.log.Warn("withdrawing an eject request", "id", p.id, "err", err)
	}
	return true
}

// guestReleased handles the guest's write of slot to B0EJ: a device the
// host asked to eject is torn down. A guest that ejects a slot on its
// own (echo 0 > /sys/bus/pci/slots/N/power) gets nothing: vio keeps the
// device, which the guest finds again when it rescans, because the
// device's config stays what the API last set.
func (v *VM) guestReleased(slot uint8) {
	v.hp.mu.Lock()
	var p *plugged
	for _, x := range v.removablesLocked() {
		if x.slot == slot {
			p = x
		}
	}
	asked := p != nil && p.ejecting
	v.hp.mu.Unlock()
	if !asked {
		v.log.Warn("the guest ejected a slot vio did not ask it to release; the device stays", "slot", slot)
		return
	}
	v.teardown(p, true)
}

// teardown takes p off the bus and releases everything it holds; with
// notify, its gone callbacks run. It is idempotent.
func (v *VM) teardown(p *plugged, notify bool) {
	v.hp.mu.Lock()
	if !v.unlistLocked(p) {
		v.hp.mu.Unlock()
		return
	}
	if !p.passthrough {
		v.hp.changed = true
	}
	gone := p.gone
	p.gone = nil
	v.hp.mu.Unlock()

	// BARs first: their unmapping detaches the doorbells' ioeventfds
	// (Transport.BARMapped) and a pass-through device's mapped pages, so
	// no guest access reaches the device while it stops.
	if err := v.pciRoot.Remove(pci.BDF{Device: p.slot}); err != nil {
		v.log.Warn("removing a PCI function", "id", p.id, "err", err)
	}
	if p.stop != nil {
		p.stop()
	}
	closeReverse(p.owned)
	p.msi.release()
	v.freeSlot(p.slot)
	if notify && p.failover != "" {
		// The guest let its primary go: its traffic is the standby's
		// now, which the network must learn (before a migration that
		// waits for this starts).
		v.announceStandby(p.failover)
	}
	close(p.released)
	if notify {
		for _, f := range gone {
			f()
		}
	}
}

// unlistLocked drops p's device from the VM's lists; false if it is not
// there (torn down already). hp.mu is held.
func (v *VM) unlistLocked(p *plugged) bool {
	for i, x := range v.pciDevices {
		if x.hp == p {
			v.pciDevices = append(v.pciDevices[:i:i], v.pciDevices[i+1:]...)
			return true
		}
	}
	for i, x := range v.ptDevices {
		if x.hp == p {
			v.ptDevices = append(v.ptDevices[:i:i], v.ptDevices[i+1:]...)
			return true
		}
	}
	return false
}

// newNICFromFDs builds a virtio NIC on duplicates of the TAP descriptors
// the config carries (one per queue pair), so that the config's own stay
// open for the next boot.
func (v *VM) newNICFromFDs(n config.Net) (virtio.Device, error) {
	bes, err := v.tapsFromFDs(n)
	if err != nil {
		return nil, err
	}
	cfg, err := nicConfig(n)
	if err != nil {
		return nil, err
	}
	if len(bes) == 1 {
		return virtionet.New(bes[0], cfg)
	}
	return virtionet.NewMultiQueue(bes, cfg)
}

// tapsFromFDs opens duplicates of the TAP descriptors n carries, which
// the VM closes.
func (v *VM) tapsFromFDs(n config.Net) ([]netdev.Backend, error) {
	var bes []netdev.Backend
	for _, fd := range n.TapFDs {
		dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("duplicating TAP descriptor %d: %w", fd, err)
		}
		t, err := tap.FromFD(dup)
		if err != nil {
			return nil, err
		}
		v.closers = append(v.closers, t)
		// One NIC's pairs are the queues of one TAP: descriptors of
		// several would join networks the guest sees as one link.
		if len(bes) > 0 && t.Name() != bes[0].(*tap.Tap).Name() {
			return nil, fmt.Errorf("the TAP descriptors of one NIC are queues of %s and %s: pass the queues of one multi-queue TAP, one per queue pair", bes[0].(*tap.Tap).Name(), t.Name())
		}
		bes = append(bes, t)
	}
	return bes, nil
}
