package vmm

import (
	"fmt"

	"github.com/viovmm/vio/arch/x86"
	"github.com/viovmm/vio/kvm"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/vcpu"
)

// Local APIC register offsets and LVT delivery modes used at boot.
const (
	apicLVT0       = 0x350
	apicLVT1       = 0x360
	apicModeExtINT = 0x7 << 8
	apicModeNMI    = 0x4 << 8
	apicModeMask   = 0x7 << 8
)

// setupVCPUs creates every vCPU with its CPUID and MSRs; with boot, the
// boot CPU also gets the 64-bit entry state (a restore sets it all later). The others wait for INIT/SIPI from the boot
// CPU, which the in-kernel LAPIC handles.
func (v *VM) setupVCPUs(entry uint64, boot bool) error {
	hostCPUID, err := v.sys.SupportedCPUID()
	if err != nil {
		return fmt.Errorf("KVM_GET_SUPPORTED_CPUID: %w", err)
	}
	host := make([]x86.CPUIDEntry, len(hostCPUID))
	for i, e := range hostCPUID {
		host[i] = x86.CPUIDEntry{Function: e.Function, Index: e.Index, Flags: e.Flags, EAX: e.Eax, EBX: e.Ebx, ECX: e.Ecx, EDX: e.Edx}
	}
	n, _ := v.sys.CheckExtension(kvm.CapTSCDeadlineTimer)
	tscDeadline := n > 0
	n = v.cfg.CPUs.BootVCPUs
	runners := make([]*vcpu.Runner, 0, n)
	for id := 0; id < n; id++ {
		cpu, err := v.kvm.CreateVCPU(id)
		if err != nil {
			return fmt.Errorf("creating vCPU %d: %w", id, err)
		}
		v.cpus = append(v.cpus, cpu)
		guest, err := x86.GuestCPUID(host, x86.CPUIDConfig{CPU: id, NumCPUs: n, TSCDeadline: tscDeadline})
		if err != nil {
			return err
		}
		out := make([]kvm.CPUIDEntry, len(guest))
		for i, e := range guest {
			out[i] = kvm.CPUIDEntry{Function: e.Function, Index: e.Index, Flags: e.Flags, Eax: e.EAX, Ebx: e.EBX, Ecx: e.ECX, Edx: e.EDX}
		}
		if err := cpu.SetCPUID2(out); err != nil {
			return fmt.Errorf("vCPU %d: KVM_SET_CPUID2: %w", id, err)
		}
		var msrs []kvm.MSREntry
		for _, m := range x86.BootMSRs() {
			msrs = append(msrs, kvm.MSREntry{Index: m.Index, Data: m.Data})
		}
		if err := cpu.SetMSRs(msrs); err != nil {
			return fmt.Errorf("vCPU %d: KVM_SET_MSRS: %w", id, err)
		}
		if err := cpu.SetFPU(kvm.FPU{Fcw: 0x37f, Mxcsr: 0x1f80}); err != nil {
			return fmt.Errorf("vCPU %d: KVM_SET_FPU: %w", id, err)
		}
		if err := setLINTs(cpu); err != nil {
			return fmt.Errorf("vCPU %d: %w", id, err)
		}
		if id == 0 && boot {
			if err := setBootState(cpu, v.mem, entry); err != nil {
				return err
			}
		}
		runners = append(runners, vcpu.New(cpu, vcpu.Config{PIO: v.pio, MMIO: v.mmio, Handler: v.handleEvent}))
	}
	v.group = vcpu.NewGroup(runners...)
	return nil
}

// setLINTs puts the LAPIC in virtual-wire mode, as firmware leaves it:
// LINT0 takes the PIC's ExtINT (early boot timer interrupts) and LINT1 NMIs.
func setLINTs(cpu *kvm.VCPU) error {
	l, err := cpu.GetLAPIC()
	if err != nil {
		return fmt.Errorf("KVM_GET_LAPIC: %w", err)
	}
	l.SetReg(apicLVT0, l.Reg(apicLVT0)&^apicModeMask|apicModeExtINT)
	l.SetReg(apicLVT1, l.Reg(apicLVT1)&^apicModeMask|apicModeNMI)
	if err := cpu.SetLAPIC(l); err != nil {
		return fmt.Errorf("KVM_SET_LAPIC: %w", err)
	}
	return nil
}

func setBootState(cpu *kvm.VCPU, mem *memory.Memory, entry uint64) error {
	s, err := x86.SetupLongMode(mem)
	if err != nil {
		return err
	}
	ks, err := cpu.GetSregs()
	if err != nil {
		return fmt.Errorf("KVM_GET_SREGS: %w", err)
	}
	ks.Cs, ks.Ds, ks.Es, ks.Fs, ks.Gs, ks.Ss = seg(s.Cs), seg(s.Ds), seg(s.Es), seg(s.Fs), seg(s.Gs), seg(s.Ss)
	ks.Tr, ks.Ldt = seg(s.Tr), seg(s.Ldt)
	ks.Gdt = kvm.DTable{Base: s.Gdt.Base, Limit: s.Gdt.Limit}
	ks.Idt = kvm.DTable{Base: s.Idt.Base, Limit: s.Idt.Limit}
	ks.Cr0, ks.Cr3, ks.Cr4, ks.Efer = s.Cr0, s.Cr3, s.Cr4, s.Efer
	if err := cpu.SetSregs(ks); err != nil {
		return fmt.Errorf("KVM_SET_SREGS: %w", err)
	}
	r := x86.BootRegs(entry)
	if err := cpu.SetRegs(kvm.Regs(r)); err != nil {
		return fmt.Errorf("KVM_SET_REGS: %w", err)
	}
	return nil
}

func seg(s x86.Segment) kvm.Segment {
	return kvm.Segment{Base: s.Base, Limit: s.Limit, Selector: s.Selector, Type: s.Type, Present: s.Present,
		Dpl: s.Dpl, Db: s.Db, S: s.S, L: s.L, G: s.G, Avl: s.Avl, Unusable: s.Unusable}
}
