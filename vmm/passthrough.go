package vmm

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/devices/vfiopci"
	"github.com/viovmm/vio/iommu/vfiomap"
	"github.com/viovmm/vio/iommu/vtd"
	"github.com/viovmm/vio/kvm"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/pci"
	"github.com/viovmm/vio/vfio"
)

// ptDevice is a host PCI device passed through to the guest (VFIO,
// docs/vfio.md). Every one is removable: its plugged holds what it owns
// (the guest's function, the host device, its MSI routes, its slot).
type ptDevice struct {
	cfg config.Device // as it was plugged; Path names the host device
	dev *vfiopci.Device
	hp  *plugged
}

// hostOpener opens a host device for pass-through, reset or not as its
// last user left it: VFIO on a host (vfioHost.open), a double in tests.
// own gives the device a DMA space of its own (the vIOMMU's per-device
// domains); otherwise the VM's devices share one with all of guest RAM
// mapped.
type hostOpener func(bdf string, own bool) (vfiopci.HostDevice, error)

// addPassthrough gives the guest the config's host PCI devices at boot,
// each reset and put on the next free slot of bus 0. It runs after every
// other device has its slot: a pass-through device can then leave (a
// failover primary before a migration, or any through vm.remove-device)
// or arrive without moving any device a restore builds from the config
// (see hotplug.changed). A migration's destination (deferPrimaries)
// leaves the failover primaries out: the guest it restores has none until
// the destination plugs one (failover.go).
func (v *VM) addPassthrough() error {
	if len(v.cfg.Devices) == 0 {
		return nil
	}
	if err := v.passthroughAllowed(); err != nil {
		return err
	}
	if err := v.checkGroupsForIOMMU(); err != nil {
		return err
	}
	type following struct {
		bdf string
		f   *vfiomap.Follower
	}
	var followers []following
	for i, dc := range v.cfg.Devices {
		if dc.Failover != "" && v.deferPrimaries {
			continue
		}
		if dc.ID == "" {
			dc.ID = fmt.Sprintf("device%d", i)
		}
		d, f, err := v.plugPassthrough(dc)
		if err != nil {
			return fmt.Errorf("device %d: %w", i, err)
		}
		if f != nil {
			followers = append(followers, following{dc.BDF(), f})
		}
		v.log.Info("device passed through", "host", dc.BDF(), "guest", bdfString(d.hp.slot), "msix_vectors", d.dev.MSIX().Vectors(), "iommu", v.iommu != nil)
	}
	if v.iommu != nil {
		// The followers start from the unit's state (translation off
		// until the guest turns it on: all of RAM mapped, as without the
		// vIOMMU), so a mapping the host refuses (the memlock limit)
		// stops the VM here, not at the guest's first DMA.
		v.iommu.Resync()
		for _, f := range followers {
			if err := f.f.Err(); err != nil {
				return fmt.Errorf("device %s: %w", f.bdf, err)
			}
		}
	}
	return nil
}

// passthroughAllowed refuses pass-through in a VM that cannot have it.
func (v *VM) passthroughAllowed() error {
	if v.cfg.Balloon != nil {
		return errors.New("a balloon cannot take memory from a VM with a pass-through device, whose RAM is pinned for the device's DMA: drop the balloon, or the --device")
	}
	return nil
}

// plugPassthrough opens the host device dc names, resets it and puts the
// guest's function on the next free slot of bus 0, with dc.ID as its id.
// With the vIOMMU it returns the device's follower, which the caller
// brings up to date. On error nothing of it is left.
func (v *VM) plugPassthrough(dc config.Device) (_ *ptDevice, _ *vfiomap.Follower, err error) {
	bdf := dc.BDF()
	open := v.opts.openHost
	if open == nil {
		if v.vfio == nil {
			v.vfio = &vfioHost{mem: v.mem}
		}
		open = v.vfio.open
	}
	// undo runs in reverse on failure: what was set up last goes first.
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	hd, err := open(bdf, v.iommu != nil)
	if err != nil {
		return nil, nil, err
	}
	// The device is reset once the guest's function has let it go, and
	// only then handed back, so that its next user (another VM, a host
	// driver) finds it quiet.
	release := closerFunc(func() error {
		if err := hd.Reset(); err != nil {
			v.log.Info("pass-through device not reset as it left the VM", "host", bdf, "err", err)
		}
		return hd.Close()
	})
	undo = append(undo, func() { release.Close() })
	// A device fresh from its last user: FLR or the best reset the host
	// has for it. Some devices have none; they start as they are.
	if err := hd.Reset(); err != nil {
		v.log.Info("pass-through device not reset", "host", bdf, "err", err)
	}
	if v.mmioSlots == nil {
		v.mmioSlots = &deviceSlots{vm: v.kvm}
	}
	msi := v.msi.newDevice()
	undo = append(undo, msi.release)
	d, err := vfiopci.New(hd, msi, v.mmioSlots)
	if err != nil {
		return nil, nil, err
	}
	undo = append(undo, func() { d.Close() })
	if dc.Failover != "" {
		// net_failover pairs by MAC address, which only a NIC has: a
		// primary of another class would sit beside the standby unused.
		if class := d.Bytes(pci.RegClassCode+2, 1)[0]; class != 0x02 {
			return nil, nil, configError{fmt.Errorf("%s is not a network controller (PCI class %#02x): a failover primary (failover=%s) must be a NIC with the standby's MAC address", bdf, class, dc.Failover)}
		}
	}
	slot, err := v.nextSlot(dc.ID)
	if err != nil {
		return nil, nil, err
	}
	undo = append(undo, func() { v.freeSlot(slot) })
	if err := v.pciRoot.Add(pci.BDF{Device: slot}, d); err != nil {
		return nil, nil, fmt.Errorf("device %s: %w", bdf, err)
	}
	undo = append(undo, func() { v.pciRoot.Remove(pci.BDF{Device: slot}) })
	// Closed in reverse when the device leaves: the guest's function
	// first (its interrupts off, its BAR pages unmapped), the host
	// device last.
	owned := []io.Closer{release, d}
	var f *vfiomap.Follower
	if v.iommu != nil {
		c, ok := hd.(interface{ Container() *vfio.Container })
		if !ok {
			return nil, nil, fmt.Errorf("device %s: no DMA space of its own to follow the vIOMMU in", bdf)
		}
		f, err = vfiomap.New(vfiomap.Config{Mem: v.mem, SourceID: vtd.SourceID(0, slot, 0), Container: c.Container(),
			Log: func(msg string, args ...any) { v.log.Warn(msg, append(args, "host", bdf)...) }})
		if err != nil {
			return nil, nil, fmt.Errorf("device %s: %w", bdf, err)
		}
		v.iommuVFIO.Add(f)
		owned = append(owned, closerFunc(func() error {
			s := f.Stats()
			v.log.Info("vIOMMU pass-through: the device's host mappings followed the guest", "host", bdf, "maps", s.Maps, "unmaps", s.Unmaps,
				"replays", s.Replays, "mapped_bytes", s.Bytes, "refused_pages", s.Refused, "truncated_walks", s.Truncated, "errors", s.Errors)
			return nil
		}))
	}
	p := &ptDevice{cfg: dc, dev: d, hp: &plugged{
		id: dc.ID, slot: slot, msi: msi, owned: owned, released: make(chan struct{}), passthrough: true, failover: dc.Failover,
	}}
	v.hp.mu.Lock()
	v.ptDevices = append(v.ptDevices, p)
	v.hp.mu.Unlock()
	return p, f, nil
}

// AddDevice implements Hotplugger: the host device d names is passed
// through to the running guest (ACPI hot plug, as disks and NICs are).
func (v *VM) AddDevice(d *config.Device) (string, error) {
	if v.iommu != nil {
		// Its follower would have to join and leave the unit's
		// notifications while the guest runs.
		return "", fmt.Errorf("%w: a pass-through device cannot join a VM with the emulated IOMMU while it runs yet: put it in the VM's config", ErrNotRemovable)
	}
	if err := v.passthroughAllowed(); err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if err := v.checkNewID(d.ID); err != nil {
		return "", err
	}
	p, _, err := v.plugPassthrough(*d)
	if err != nil {
		return "", err
	}
	v.log.Info("device passed through", "host", d.BDF(), "guest", bdfString(p.hp.slot), "msix_vectors", p.dev.MSIX().Vectors(), "failover", d.Failover)
	return v.announce(p.hp)
}

// checkGroupsForIOMMU refuses, with the vIOMMU, two pass-through devices
// of one host IOMMU group: the host isolates the group as a whole, so its
// devices share one container, one address space, while behind the
// vIOMMU each device follows its own guest domain (and Linux gives each
// device of vio's guests a domain of its own).
func (v *VM) checkGroupsForIOMMU() error {
	if v.iommu == nil {
		return nil
	}
	seen := map[string]string{}
	for i, dc := range v.cfg.Devices {
		bdf := dc.BDF()
		id, err := vfio.GroupOf(bdf)
		if err != nil {
			return fmt.Errorf("device %d: %w", i, err)
		}
		if other, ok := seen[id]; ok {
			return fmt.Errorf("devices %s and %s are in the same host IOMMU group %s, which shares one host address space, but with --iommu each device follows its own guest domain: pass through one device of the group, or drop --iommu", other, bdf, id)
		}
		seen[id] = bdf
	}
	return nil
}

// vfioHost is the VM's VFIO state: the IOMMU groups its devices are in
// and their containers, each held while a device of it is open. Without
// the vIOMMU the VM has one container, with all of guest RAM mapped at
// its guest addresses (the devices DMA with guest physical addresses); it
// goes when its last group does, and a device plugged later makes and
// maps a new one. With the vIOMMU each group has a container of its own,
// whose mappings a vfiomap.Follower keeps.
type vfioHost struct {
	mem *memory.Memory

	mu     sync.Mutex
	shared *vfio.Container
	groups map[string]*vfioGroup // by group number
}

type vfioGroup struct {
	g       *vfio.Group
	c       *vfio.Container
	shared  bool // c is vfioHost.shared
	devices int  // open devices of the group
}

// vfioDevice is an open device; Close releases its group and container
// once no other device holds them.
type vfioDevice struct {
	*vfio.Device
	h     *vfioHost
	group string
	once  sync.Once
}

var _ vfiopci.HostDevice = (*vfioDevice)(nil)

// Container is the device's DMA space.
func (d *vfioDevice) Container() *vfio.Container {
	d.h.mu.Lock()
	defer d.h.mu.Unlock()
	return d.h.groups[d.group].c
}

func (d *vfioDevice) Close() error {
	err := d.Device.Close()
	d.once.Do(func() { d.h.release(d.group) })
	return err
}

// open opens device bdf through its group, joining the group to a
// container first if no device of it is open.
func (h *vfioHost) open(bdf string, own bool) (vfiopci.HostDevice, error) {
	id, err := vfio.GroupOf(bdf)
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.groups == nil {
		h.groups = map[string]*vfioGroup{}
	}
	g := h.groups[id]
	if g == nil {
		if g, err = h.joinLocked(bdf, own); err != nil {
			return nil, err
		}
		h.groups[id] = g
	} else if err := vfio.CheckBound(bdf); err != nil {
		return nil, err
	}
	pd, err := g.g.Device(bdf)
	if err != nil {
		if g.devices == 0 {
			h.dropLocked(id, g)
		}
		return nil, err
	}
	g.devices++
	return &vfioDevice{Device: pd, h: h, group: id}, nil
}

// joinLocked opens the group of bdf and puts it in a container: the
// shared one (made and mapped if there is none) unless own.
func (h *vfioHost) joinLocked(bdf string, own bool) (*vfioGroup, error) {
	c, fresh := h.shared, false
	if own || c == nil {
		var err error
		if c, err = vfio.OpenContainer(); err != nil {
			return nil, err
		}
		fresh = true
	}
	g, err := vfio.OpenGroup(c, bdf)
	if err != nil {
		if fresh {
			c.Close()
		}
		return nil, err
	}
	if fresh && !own {
		// The container takes mappings once a group is in it.
		for _, r := range h.mem.Regions() {
			if err := c.MapDMA(r.Data, r.GPA, vfio.DMARead|vfio.DMAWrite); err != nil {
				g.Close()
				c.Close()
				return nil, fmt.Errorf("device %s: guest RAM at %#x: %w", bdf, r.GPA, err)
			}
		}
		h.shared = c
	}
	return &vfioGroup{g: g, c: c, shared: !own}, nil
}

// release drops a device's hold on its group.
func (h *vfioHost) release(id string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	g := h.groups[id]
	if g == nil {
		return
	}
	if g.devices--; g.devices == 0 {
		h.dropLocked(id, g)
	}
}

// dropLocked closes a group no device holds, and its container if no
// other group is in it: the container's mappings, and the pages they
// pin, go with its last group.
func (h *vfioHost) dropLocked(id string, g *vfioGroup) {
	g.g.Close()
	delete(h.groups, id)
	if !g.shared {
		g.c.Close()
		return
	}
	for _, o := range h.groups {
		if o.shared {
			return
		}
	}
	h.shared.Close()
	h.shared = nil
}

// firstMMIOSlot is the first KVM memory slot for device memory mapped into
// the guest; guest RAM takes slots 0 to its number of regions.
const firstMMIOSlot = 64

// deviceSlots hands out KVM memory slots for device memory (a
// pass-through device's BAR pages).
type deviceSlots struct {
	vm *kvm.VM

	mu   sync.Mutex
	used map[uint32]bool
}

// MapMMIO implements vfiopci.SlotMapper.
func (s *deviceSlots) MapMMIO(gpa uint64, host []byte) (func() error, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.used == nil {
		s.used = map[uint32]bool{}
	}
	slot := uint32(firstMMIOSlot)
	for s.used[slot] {
		slot++
	}
	if err := s.vm.SetUserMemoryRegion(kvm.MemoryRegion{Slot: slot, GPA: gpa, Host: host}); err != nil {
		return nil, err
	}
	s.used[slot] = true
	return func() error {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.used, slot)
		return s.vm.DeleteUserMemoryRegion(slot)
	}, nil
}
