package vmm

import (
	"errors"
	"fmt"
	"sync"

	"github.com/viovmm/vio/devices/vfiopci"
	"github.com/viovmm/vio/iommu/vfiomap"
	"github.com/viovmm/vio/iommu/vtd"
	"github.com/viovmm/vio/kvm"
	"github.com/viovmm/vio/pci"
	"github.com/viovmm/vio/vfio"
)

// addPassthrough gives the guest the config's host PCI devices through
// VFIO (docs/vfio.md), each device reset and put on the next free slot of
// bus 0. Without the vIOMMU: one container for the VM, all of guest RAM
// mapped in it at its guest addresses (the devices DMA with guest
// physical addresses). With it: a container per device (each device may
// be in a guest domain of its own), whose mappings follow what the guest
// maps for the device (iommu/vfiomap, docs/iommu.md).
func (v *VM) addPassthrough() error {
	if len(v.cfg.Devices) == 0 {
		return nil
	}
	if v.cfg.Balloon != nil {
		return errors.New("a balloon cannot take memory from a VM with a pass-through device, whose RAM is pinned for the device's DMA: drop the balloon, or the --device")
	}
	if err := v.checkGroupsForIOMMU(); err != nil {
		return err
	}
	var shared *vfio.Container // the VM's one container without the vIOMMU
	groups := map[string]*vfio.Group{}
	containers := map[string]*vfio.Container{}
	type following struct {
		bdf string
		f   *vfiomap.Follower
	}
	var followers []following
	slots := &deviceSlots{vm: v.kvm} // the BARs' pages mapped into the guest
	for i, dc := range v.cfg.Devices {
		bdf := dc.BDF()
		id, err := vfio.GroupOf(bdf)
		if err != nil {
			return fmt.Errorf("device %d: %w", i, err)
		}
		g := groups[id]
		if g == nil {
			c := shared
			if c == nil {
				if c, err = vfio.OpenContainer(); err != nil {
					return err
				}
				v.closers = append(v.closers, c)
				if v.iommu == nil {
					shared = c
				}
			}
			if g, err = vfio.OpenGroup(c, bdf); err != nil {
				return fmt.Errorf("device %d: %w", i, err)
			}
			v.closers = append(v.closers, g)
			if v.iommu == nil && len(groups) == 0 {
				// The container takes mappings once a group is in it.
				for _, r := range v.mem.Regions() {
					if err := c.MapDMA(r.Data, r.GPA, vfio.DMARead|vfio.DMAWrite); err != nil {
						return fmt.Errorf("device %s: guest RAM at %#x: %w", bdf, r.GPA, err)
					}
				}
			}
			groups[id], containers[id] = g, c
		} else if err := vfio.CheckBound(bdf); err != nil {
			return fmt.Errorf("device %d: %w", i, err)
		}
		pd, err := g.Device(bdf)
		if err != nil {
			return fmt.Errorf("device %d: %w", i, err)
		}
		v.closers = append(v.closers, pd)
		// A device fresh from its last user: FLR or the best reset the
		// host has for it. Some devices have none; they start as they are.
		if err := pd.Reset(); err != nil {
			v.log.Info("pass-through device not reset", "host", bdf, "err", err)
		}
		name := dc.ID
		if name == "" {
			name = fmt.Sprintf("device%d", i)
		}
		slot, err := v.nextSlot(name)
		if err != nil {
			return err
		}
		msi := v.msi.newDevice()
		d, err := vfiopci.New(pd, msi, slots)
		if err != nil {
			msi.release()
			return fmt.Errorf("device %d: %w", i, err)
		}
		v.closers = append(v.closers, closerFunc(func() error {
			err := d.Close()
			msi.release()
			return err
		}))
		if err := v.pciRoot.Add(pci.BDF{Device: slot}, d); err != nil {
			return fmt.Errorf("device %s: %w", bdf, err)
		}
		if v.iommu != nil {
			f, err := vfiomap.New(vfiomap.Config{Mem: v.mem, SourceID: vtd.SourceID(0, slot, 0), Container: containers[id],
				Log: func(msg string, args ...any) { v.log.Warn(msg, append(args, "host", bdf)...) }})
			if err != nil {
				return fmt.Errorf("device %s: %w", bdf, err)
			}
			v.iommuVFIO.Add(f)
			followers = append(followers, following{bdf, f})
			v.closers = append(v.closers, closerFunc(func() error {
				s := f.Stats()
				v.log.Info("vIOMMU pass-through: the device's host mappings followed the guest", "host", bdf, "maps", s.Maps, "unmaps", s.Unmaps,
					"replays", s.Replays, "mapped_bytes", s.Bytes, "refused_pages", s.Refused, "truncated_walks", s.Truncated, "errors", s.Errors)
				return nil
			}))
		}
		v.log.Info("device passed through", "host", bdf, "guest", bdfString(slot), "msix_vectors", d.MSIX().Vectors(), "iommu", v.iommu != nil)
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
