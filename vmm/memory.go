package vmm

import (
	"fmt"

	"github.com/viovmm/vio/arch/x86"
	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/kvm"
	"github.com/viovmm/vio/memory"
)

// Addresses KVM needs for its own use on Intel hosts (the real-mode TSS
// and the identity-map page); they sit at the top of the 32-bit MMIO hole,
// where no device lives.
const (
	tssAddr         = 0xfffbd000
	identityMapAddr = 0xfffbc000
)

func (v *VM) setupMemory() error {
	layout, err := x86.RAMLayout(uint64(v.cfg.Memory.Size))
	if err != nil {
		return err
	}
	if v.mem, err = memory.NewWithOptions(layout, memoryOptions(v.cfg.Memory)); err != nil {
		return err
	}
	// Slot i is region i: migration pairs region i's record of VMM writes
	// with KVM's dirty log of slot i (memory.CollectDirty).
	for i, r := range v.mem.Regions() {
		if err := v.kvm.SetUserMemoryRegion(kvm.MemoryRegion{Slot: uint32(i), GPA: r.GPA, Host: r.Data}); err != nil {
			return fmt.Errorf("registering guest RAM at %#x with KVM: %w", r.GPA, err)
		}
	}
	return nil
}

// memoryOptions picks guest RAM's backing: a memfd when the config asks for
// shared memory (vhost-user back-ends and same-host migration map it from
// Region.File), anonymous memory otherwise, which is faulted in with huge
// pages on hosts where shmem gets none (see memory's backingDefault).
func memoryOptions(m config.Memory) memory.Options {
	if m.Shared {
		return memory.Options{Backing: memory.Memfd}
	}
	return memory.Options{Backing: memory.Anonymous}
}

func (v *VM) setupIRQChip() error {
	if err := v.kvm.SetTSSAddr(tssAddr); err != nil {
		return fmt.Errorf("KVM_SET_TSS_ADDR: %w", err)
	}
	if err := v.kvm.SetIdentityMapAddr(identityMapAddr); err != nil {
		return fmt.Errorf("KVM_SET_IDENTITY_MAP_ADDR: %w", err)
	}
	// The in-kernel PIC, IOAPIC and LAPICs keep interrupt delivery (and
	// HLT) inside the kernel; the in-kernel PIT also serves port 0x61.
	if err := v.kvm.CreateIRQChip(); err != nil {
		return fmt.Errorf("creating the in-kernel irqchip: %w", err)
	}
	if err := v.kvm.CreatePIT2(kvm.PITConfig{Flags: kvm.PITSpeakerDummy}); err != nil {
		return fmt.Errorf("creating the in-kernel PIT: %w", err)
	}
	return nil
}

// ramLayout describes guest RAM as the boot tables see it.
func ramLayout(v *VM) []memory.Layout {
	var l []memory.Layout
	for _, r := range v.mem.Regions() {
		l = append(l, memory.Layout{GPA: r.GPA, Size: uint64(len(r.Data))})
	}
	return l
}
