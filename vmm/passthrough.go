package vmm

import (
	"errors"
	"fmt"
	"sync"

	"github.com/viovmm/vio/devices/vfiopci"
	"github.com/viovmm/vio/kvm"
	"github.com/viovmm/vio/pci"
	"github.com/viovmm/vio/vfio"
)

// addPassthrough gives the guest the config's host PCI devices through
// VFIO (docs/vfio.md): one container for the VM, all of guest RAM mapped
// in it at its guest addresses (the devices DMA with guest physical
// addresses), each device reset and put on the next free slot of bus 0.
func (v *VM) addPassthrough() error {
	if len(v.cfg.Devices) == 0 {
		return nil
	}
	if v.iommu != nil {
		return errors.New("a pass-through device with vio's emulated IOMMU is not supported yet: drop --iommu, or the --device")
	}
	if v.cfg.Balloon != nil {
		return errors.New("a balloon cannot take memory from a VM with a pass-through device, whose RAM is pinned for the device's DMA: drop the balloon, or the --device")
	}
	c, err := vfio.OpenContainer()
	if err != nil {
		return err
	}
	v.closers = append(v.closers, c)
	groups := map[string]*vfio.Group{}
	slots := &deviceSlots{vm: v.kvm} // the BARs' pages mapped into the guest
	for i, dc := range v.cfg.Devices {
		bdf := dc.BDF()
		id, err := vfio.GroupOf(bdf)
		if err != nil {
			return fmt.Errorf("device %d: %w", i, err)
		}
		g := groups[id]
		if g == nil {
			if g, err = vfio.OpenGroup(c, bdf); err != nil {
				return fmt.Errorf("device %d: %w", i, err)
			}
			v.closers = append(v.closers, g)
			if len(groups) == 0 {
				// The container takes mappings once a group is in it.
				for _, r := range v.mem.Regions() {
					if err := c.MapDMA(r.Data, r.GPA, vfio.DMARead|vfio.DMAWrite); err != nil {
						return fmt.Errorf("device %s: guest RAM at %#x: %w", bdf, r.GPA, err)
					}
				}
			}
			groups[id] = g
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
		v.log.Info("device passed through", "host", bdf, "guest", bdfString(slot), "msix_vectors", d.MSIX().Vectors())
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
