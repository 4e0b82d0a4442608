package vmm

import (
	"fmt"

	"github.com/viovmm/vio/iommu/vfiomap"
	"github.com/viovmm/vio/iommu/vtd"
	"github.com/viovmm/vio/memory"
)

// iommuBase is where the emulated VT-d unit's registers are: in the 32-bit
// MMIO hole between the IOAPIC and the LAPIC, outside the PCI window, where
// PC firmware (and QEMU's intel-iommu) puts a remapping unit.
const iommuBase = 0xfed90000

// setupIOMMU puts the emulated Intel VT-d unit (docs/iommu.md) on the MMIO
// bus when the config asks for one; every PCI device then reaches guest
// memory through it (dmaFor), and the DMAR table announces it (boot.go).
// Its faults and invalidation completions are MSIs the guest programmed.
func (v *VM) setupIOMMU() error {
	if !v.cfg.WantsIOMMU() {
		return nil
	}
	cfg := vtd.Config{Mem: v.mem, Interrupt: func(addr uint64, data uint32) {
		if _, err := v.kvm.SignalMSI(addr, data); err != nil {
			v.log.Warn("iommu: delivering an interrupt", "addr", fmt.Sprintf("%#x", addr), "err", err)
		}
	}}
	if len(v.cfg.Devices) > 0 {
		// Host devices' mappings follow the guest's (passthrough.go),
		// which needs caching mode: the guest then invalidates after
		// every map too. Only then: emulated devices do not need it, and
		// it costs their guest an invalidation per map.
		v.iommuVFIO = &vfiomap.Fanout{}
		cfg.CachingMode, cfg.Notifier = true, v.iommuVFIO
	}
	u, err := vtd.New(cfg)
	if err != nil {
		return fmt.Errorf("iommu: %w", err)
	}
	if err := v.mmio.Register(iommuBase, vtd.RegisterSize, u); err != nil {
		return fmt.Errorf("iommu: %w", err)
	}
	v.iommu = u
	return nil
}

// dmaFor is guest memory as the PCI function at bus 0, slot, function 0
// sees it: through the IOMMU when there is one, else guest RAM itself.
func (v *VM) dmaFor(slot uint8) memory.DMA { return v.dmaForFunction(slot, 0) }

// dmaForFunction is dmaFor for function fn of the slot (an SR-IOV VF).
func (v *VM) dmaForFunction(slot, fn uint8) memory.DMA {
	if v.iommu == nil {
		return v.mem
	}
	return v.iommu.DMA(vtd.SourceID(0, slot, fn))
}
