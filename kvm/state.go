package kvm

import (
	"encoding/binary"
	"fmt"
)

// This file is the save/restore side of the vCPU and VM: typed get/set
// for every piece of state KVM keeps in the kernel, and VCPUState, which
// gathers a vCPU's and puts it back in the order the kernel needs.

// GetXSave reads the vCPU's XSAVE area (x87, SSE, AVX and whatever else
// XCR0 enables) in the hardware's XSAVE layout. It is KVM_GET_XSAVE2 where
// the kernel has it and the area is larger than 4 KiB, KVM_GET_XSAVE
// otherwise. The bytes are opaque to vio; SetXSave takes them back.
func (c *VCPU) GetXSave() ([]byte, error) {
	size, req := sizeofXSave, uintptr(ioctlGetXSave)
	if c.xsaveSize > sizeofXSave {
		size, req = c.xsaveSize, ioctlGetXSave2
	}
	buf := make([]byte, size)
	_, err := ioctlBytes(c.fd, req, buf)
	if err != nil {
		return nil, ioctlError("KVM_GET_XSAVE", err)
	}
	return buf, nil
}

// SetXSave writes an XSAVE area read by GetXSave. It must be at least the
// 4 KiB of struct kvm_xsave and no larger than this host's area: the
// kernel reads as many bytes as it needs.
func (c *VCPU) SetXSave(area []byte) error {
	max := max(c.xsaveSize, sizeofXSave)
	if len(area) < sizeofXSave || len(area) > max {
		return fmt.Errorf("kvm: KVM_SET_XSAVE: area of %d bytes, want %d to %d", len(area), sizeofXSave, max)
	}
	buf := make([]byte, max) // the kernel may read up to max bytes
	copy(buf, area)
	_, err := ioctlBytes(c.fd, ioctlSetXSave, buf)
	return ioctlError("KVM_SET_XSAVE", err)
}

// GetXCRs reads the extended control registers (XCR0).
func (c *VCPU) GetXCRs() (XCRs, error) {
	var x XCRs
	_, err := ioctlPtr(c.fd, ioctlGetXCRs, &x)
	return x, ioctlError("KVM_GET_XCRS", err)
}

// SetXCRs writes the extended control registers. NrXcrs entries are used.
func (c *VCPU) SetXCRs(x XCRs) error {
	if int(x.NrXcrs) > len(x.Xcrs) {
		return fmt.Errorf("kvm: KVM_SET_XCRS: %d registers, at most %d", x.NrXcrs, len(x.Xcrs))
	}
	_, err := ioctlPtr(c.fd, ioctlSetXCRs, &x)
	return ioctlError("KVM_SET_XCRS", err)
}

// GetVCPUEvents reads pending and injected events (exception, interrupt,
// NMI, SMI) and the interrupt shadow.
func (c *VCPU) GetVCPUEvents() (VCPUEvents, error) {
	var e VCPUEvents
	_, err := ioctlPtr(c.fd, ioctlGetVCPUEvents, &e)
	return e, ioctlError("KVM_GET_VCPU_EVENTS", err)
}

// SetVCPUEvents writes events read by GetVCPUEvents. The NMI-pending and
// SIPI-vector fields are always applied (as QEMU does); the other
// optional fields only where Flags, as the kernel returned them, says so.
func (c *VCPU) SetVCPUEvents(e VCPUEvents) error {
	e.Flags |= vcpuEventValidNMIPending | vcpuEventValidSIPIVector
	_, err := ioctlPtr(c.fd, ioctlSetVCPUEvents, &e)
	return ioctlError("KVM_SET_VCPU_EVENTS", err)
}

// GetDebugRegs reads DR0-3, DR6 and DR7.
func (c *VCPU) GetDebugRegs() (DebugRegs, error) {
	var d DebugRegs
	_, err := ioctlPtr(c.fd, ioctlGetDebugRegs, &d)
	return d, ioctlError("KVM_GET_DEBUGREGS", err)
}

// SetDebugRegs writes DR0-3, DR6 and DR7. Flags must be 0.
func (c *VCPU) SetDebugRegs(d DebugRegs) error {
	d.Flags = 0
	_, err := ioctlPtr(c.fd, ioctlSetDebugRegs, &d)
	return ioctlError("KVM_SET_DEBUGREGS", err)
}

// TSCKHz returns the guest TSC frequency in kHz (KVM_GET_TSC_KHZ).
func (c *VCPU) TSCKHz() (uint32, error) {
	r, err := ioctl(c.fd, ioctlGetTSCKHz, 0)
	if err != nil {
		return 0, ioctlError("KVM_GET_TSC_KHZ", err)
	}
	return uint32(r), nil
}

// SetTSCKHz sets the guest TSC frequency (KVM_SET_TSC_KHZ). A frequency
// other than the host's needs TSC scaling (CapTSCControl).
func (c *VCPU) SetTSCKHz(khz uint32) error {
	_, err := ioctl(c.fd, ioctlSetTSCKHz, uintptr(khz))
	return ioctlError("KVM_SET_TSC_KHZ", err)
}

// KVMClockCtrl tells the guest, through its kvmclock page, that it was
// stopped by the host (KVM_KVMCLOCK_CTRL), so that its soft-lockup
// watchdog does not take a clock jump for a hung CPU. It fails with EINVAL
// when the guest has not enabled kvmclock on this vCPU.
func (c *VCPU) KVMClockCtrl() error {
	_, err := ioctl(c.fd, ioctlKVMClockCtrl, 0)
	return ioctlError("KVM_KVMCLOCK_CTRL", err)
}

// readMSRs reads entries in calls of at most maxMSRs, skipping every MSR
// the kernel will not read (KVM_GET_MSRS stops at the first one).
func (c *VCPU) readMSRs(indices []uint32) (got []MSREntry, skipped []uint32, err error) {
	for len(indices) > 0 {
		chunk := indices[:min(len(indices), maxMSRs)]
		entries := make([]MSREntry, len(chunk))
		for i, idx := range chunk {
			entries[i].Index = idx
		}
		buf, err := encodeMSRs(entries)
		if err != nil {
			return nil, nil, err
		}
		n, err := ioctlBytes(c.fd, ioctlGetMSRs, buf)
		if err != nil {
			return nil, nil, ioctlError("KVM_GET_MSRS", err)
		}
		if int(n) > len(entries) {
			return nil, nil, fmt.Errorf("kvm: KVM_GET_MSRS read %d of %d MSRs", n, len(entries))
		}
		if _, err := binary.Decode(buf[sizeofMSRsHead:], binary.NativeEndian, entries); err != nil {
			return nil, nil, err
		}
		got = append(got, entries[:n]...)
		if int(n) < len(chunk) {
			skipped = append(skipped, chunk[n])
			n++
		}
		indices = indices[n:]
	}
	return got, skipped, nil
}

// writeMSRs writes entries, skipping every MSR the kernel refuses, and
// returns the refused ones.
func (c *VCPU) writeMSRs(entries []MSREntry) (refused []uint32, err error) {
	for len(entries) > 0 {
		chunk := entries[:min(len(entries), maxMSRs)]
		buf, err := encodeMSRs(chunk)
		if err != nil {
			return nil, err
		}
		n, err := ioctlBytes(c.fd, ioctlSetMSRs, buf)
		if err != nil {
			return nil, ioctlError("KVM_SET_MSRS", err)
		}
		if int(n) > len(chunk) {
			return nil, fmt.Errorf("kvm: KVM_SET_MSRS wrote %d of %d MSRs", n, len(chunk))
		}
		if int(n) < len(chunk) {
			refused = append(refused, chunk[n].Index)
			n++
		}
		entries = entries[n:]
	}
	return refused, nil
}

// VCPUState is everything KVM holds for one x86 vCPU, as SaveState reads
// it and RestoreState puts it back. It encodes as JSON.
type VCPUState struct {
	Regs  Regs
	Sregs Sregs
	// XSave is the XSAVE area where the host has XSAVE; FPU otherwise.
	XSave     []byte `json:",omitempty"`
	XCRs      *XCRs  `json:",omitempty"`
	FPU       *FPU   `json:",omitempty"`
	LAPIC     LAPICState
	MSRs      []MSREntry
	Events    VCPUEvents
	MPState   uint32
	DebugRegs DebugRegs
	// TSCKHz is the guest's TSC frequency; 0 where the kernel cannot say.
	TSCKHz uint32 `json:",omitempty"`
}

// MaxSavedMSRs bounds VCPUState.MSRs (KVM lists a few hundred at most).
const MaxSavedMSRs = 4096

// SaveState reads the vCPU's state. msrs are the MSRs to save, usually
// System.MSRIndexList; those the kernel will not read for this vCPU (MSRs
// of features the guest's CPUID lacks, another vendor's MSRs) are left
// out and returned as skipped. The vCPU must not be running.
func (c *VCPU) SaveState(msrs []uint32) (s *VCPUState, skipped []uint32, err error) {
	s = &VCPUState{}
	if s.Regs, err = c.GetRegs(); err != nil {
		return nil, nil, err
	}
	if s.Sregs, err = c.GetSregs(); err != nil {
		return nil, nil, err
	}
	if c.hasXSave {
		if s.XSave, err = c.GetXSave(); err != nil {
			return nil, nil, err
		}
		x, err := c.GetXCRs()
		if err != nil {
			return nil, nil, err
		}
		s.XCRs = &x
	} else {
		f, err := c.GetFPU()
		if err != nil {
			return nil, nil, err
		}
		s.FPU = &f
	}
	if s.LAPIC, err = c.GetLAPIC(); err != nil {
		return nil, nil, err
	}
	if s.MSRs, skipped, err = c.readMSRs(msrs); err != nil {
		return nil, nil, err
	}
	if s.Events, err = c.GetVCPUEvents(); err != nil {
		return nil, nil, err
	}
	if s.MPState, err = c.GetMPState(); err != nil {
		return nil, nil, err
	}
	if s.DebugRegs, err = c.GetDebugRegs(); err != nil {
		return nil, nil, err
	}
	if khz, err := c.TSCKHz(); err == nil {
		s.TSCKHz = khz
	}
	return s, skipped, nil
}

// RestoreState puts back a state SaveState read, on a vCPU created with
// the same CPUID (set CPUID first: it decides which MSRs and XSAVE
// features exist). The order is the one the kernel needs: TSC frequency
// before the TSC MSR; special registers (APIC base, x2APIC mode) before
// the LAPIC; the LAPIC before the MSRs (the TSC-deadline MSR only sticks
// in TSC-deadline mode); events last. MSRs the kernel refuses are skipped
// and returned; any other failure is an error, and the vCPU must then be
// discarded.
func (c *VCPU) RestoreState(s *VCPUState) (refused []uint32, err error) {
	if len(s.MSRs) > MaxSavedMSRs {
		return nil, fmt.Errorf("kvm: vCPU state has %d MSRs, at most %d", len(s.MSRs), MaxSavedMSRs)
	}
	if s.TSCKHz != 0 {
		if cur, err := c.TSCKHz(); err != nil || cur != s.TSCKHz {
			if err := c.SetTSCKHz(s.TSCKHz); err != nil {
				return nil, fmt.Errorf("the guest's TSC ran at %d kHz, this host's at %d kHz, and it cannot scale: %w", s.TSCKHz, cur, err)
			}
		}
	}
	if err := c.SetMPState(s.MPState); err != nil {
		return nil, err
	}
	if err := c.SetRegs(s.Regs); err != nil {
		return nil, err
	}
	if err := c.SetSregs(s.Sregs); err != nil {
		return nil, err
	}
	switch {
	case s.XSave != nil:
		if !c.hasXSave {
			return nil, fmt.Errorf("kvm: the state has an XSAVE area and this host's KVM has no XSAVE")
		}
		if err := c.SetXSave(s.XSave); err != nil {
			return nil, err
		}
		if s.XCRs != nil {
			if err := c.SetXCRs(*s.XCRs); err != nil {
				return nil, err
			}
		}
	case s.FPU != nil:
		if err := c.SetFPU(*s.FPU); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("kvm: the vCPU state has neither an XSAVE area nor FPU registers")
	}
	if err := c.SetLAPIC(s.LAPIC); err != nil {
		return nil, err
	}
	if refused, err = c.writeMSRs(s.MSRs); err != nil {
		return nil, err
	}
	if err := c.SetDebugRegs(s.DebugRegs); err != nil {
		return nil, err
	}
	if err := c.SetVCPUEvents(s.Events); err != nil {
		return refused, err
	}
	return refused, nil
}

// IRQChipDataSize is the size of one controller's state in GetIRQChip
// and SetIRQChip.
const IRQChipDataSize = irqchipDataSize

// GetIRQChip reads one in-kernel interrupt controller (IRQChipPICMaster,
// IRQChipPICSlave or IRQChipIOAPIC) as the kernel's struct kvm_pic_state
// or kvm_ioapic_state, padded to IRQChipDataSize bytes. The bytes are
// opaque to vio; SetIRQChip takes them back.
func (vm *VM) GetIRQChip(chip uint32) ([]byte, error) {
	r := irqchipRaw{ID: chip}
	if _, err := ioctlPtr(vm.fd, ioctlGetIRQChip, &r); err != nil {
		return nil, fmt.Errorf("kvm: KVM_GET_IRQCHIP %d: %w", chip, err)
	}
	return r.Chip[:], nil
}

// SetIRQChip writes a controller's state read by GetIRQChip.
func (vm *VM) SetIRQChip(chip uint32, data []byte) error {
	if len(data) != IRQChipDataSize {
		return fmt.Errorf("kvm: KVM_SET_IRQCHIP %d: %d bytes of state, want %d", chip, len(data), IRQChipDataSize)
	}
	r := irqchipRaw{ID: chip}
	copy(r.Chip[:], data)
	if _, err := ioctlPtr(vm.fd, ioctlSetIRQChip, &r); err != nil {
		return fmt.Errorf("kvm: KVM_SET_IRQCHIP %d: %w", chip, err)
	}
	return nil
}

// GetPIT2 reads the in-kernel i8254's state.
func (vm *VM) GetPIT2() (PITState2, error) {
	var p PITState2
	_, err := ioctlPtr(vm.fd, ioctlGetPIT2, &p)
	return p, ioctlError("KVM_GET_PIT2", err)
}

// SetPIT2 writes the in-kernel i8254's state.
func (vm *VM) SetPIT2(p PITState2) error {
	_, err := ioctlPtr(vm.fd, ioctlSetPIT2, &p)
	return ioctlError("KVM_SET_PIT2", err)
}
