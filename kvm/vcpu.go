package kvm

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"
)

// VCPU is one virtual CPU: its file descriptor and its mmapped kvm_run page.
//
// Run and the Get/Set state calls should come from a single OS thread (see
// the package comment). SetImmediateExit alone is safe from any goroutine:
// it is how another thread kicks the vCPU out of Run.
type VCPU struct {
	fd  int
	id  int
	run []byte // the kvm_run mapping, VCPUMmapSize bytes

	hasXSave  bool // KVM_GET/SET_XSAVE work (CapXSave)
	xsaveSize int  // the XSAVE area's size per CapXSave2, 0 without it

	holdP bool // Run keeps the goroutine's P through KVM_RUN (SetHoldP)
}

// SetHoldP makes Run enter the guest without telling the Go scheduler
// that the thread is in a system call, so the goroutine keeps its P while
// the guest runs. Call it only from the goroutine that calls Run, and only
// if a P has been set aside for it (GOMAXPROCS raised by one), or the rest
// of the program loses a P to the guest.
func (c *VCPU) SetHoldP(on bool) { c.holdP = on }

// ID returns the id the vCPU was created with.
func (c *VCPU) ID() int { return c.id }

// FD returns the vCPU's file descriptor.
func (c *VCPU) FD() int { return c.fd }

// Close unmaps kvm_run and closes the descriptor. The vCPU must not be
// running.
func (c *VCPU) Close() error {
	var err error
	if c.run != nil {
		err = unix.Munmap(c.run)
		c.run = nil
	}
	if cerr := closeFD(&c.fd); err == nil {
		err = cerr
	}
	return err
}

// Run enters the guest (KVM_RUN) and returns at the next exit that needs
// userspace; Exit describes it. An error wrapping unix.EINTR means a signal
// or immediate_exit interrupted the run before or during guest execution
// (exit reason ExitIntr): not a failure, the caller decides whether to run
// again. unix.EAGAIN may be returned while a vCPU waits for INIT/SIPI.
func (c *VCPU) Run() error {
	var err error
	if c.holdP {
		err = ioctlRaw(c.fd, ioctlRun, 0)
	} else {
		_, err = ioctl(c.fd, ioctlRun, 0)
	}
	if err != nil {
		return err // unwrapped: hot path, and callers match it with errors.Is
	}
	return nil
}

// SetImmediateExit sets kvm_run.immediate_exit. While it is set, KVM_RUN
// returns EINTR at once instead of entering the guest. Safe from any
// goroutine.
func (c *VCPU) SetImmediateExit(on bool) {
	c.setFlagByte(8, on)
}

// ImmediateExit reports kvm_run.immediate_exit.
func (c *VCPU) ImmediateExit() bool { return c.flagsWord().Load()&0xff00 != 0 }

// SetRequestInterruptWindow sets kvm_run.request_interrupt_window: with a
// userspace irqchip, ask for an exit as soon as the guest can take an
// interrupt.
func (c *VCPU) SetRequestInterruptWindow(on bool) { c.setFlagByte(0, on) }

func (c *VCPU) setFlagByte(shift uint, on bool) {
	w := c.flagsWord()
	for {
		old := w.Load()
		nw := old &^ (0xff << shift)
		if on {
			nw |= 1 << shift
		}
		if old == nw || w.CompareAndSwap(old, nw) {
			return
		}
	}
}

// ReadyForInterruptInjection reports kvm_run.ready_for_interrupt_injection
// after an exit.
func (c *VCPU) ReadyForInterruptInjection() bool { return c.head().ReadyForInterruptInjection != 0 }

// IFFlag reports kvm_run.if_flag (the guest's RFLAGS.IF) after an exit.
func (c *VCPU) IFFlag() bool { return c.head().IfFlag != 0 }

// Exit returns the view of the latest exit. It is valid until the next Run.
func (c *VCPU) Exit() Exit { return Exit{c: c} }

// GetRegs reads the general-purpose registers (KVM_GET_REGS).
func (c *VCPU) GetRegs() (Regs, error) {
	var r Regs
	_, err := ioctlPtr(c.fd, ioctlGetRegs, &r)
	return r, ioctlError("KVM_GET_REGS", err)
}

// SetRegs writes the general-purpose registers (KVM_SET_REGS).
func (c *VCPU) SetRegs(r Regs) error {
	_, err := ioctlPtr(c.fd, ioctlSetRegs, &r)
	return ioctlError("KVM_SET_REGS", err)
}

// GetSregs reads the segment, descriptor-table and control registers.
func (c *VCPU) GetSregs() (Sregs, error) {
	var s Sregs
	_, err := ioctlPtr(c.fd, ioctlGetSregs, &s)
	return s, ioctlError("KVM_GET_SREGS", err)
}

// SetSregs writes the segment, descriptor-table and control registers.
func (c *VCPU) SetSregs(s Sregs) error {
	_, err := ioctlPtr(c.fd, ioctlSetSregs, &s)
	return ioctlError("KVM_SET_SREGS", err)
}

// GetFPU reads the x87/SSE state (KVM_GET_FPU).
func (c *VCPU) GetFPU() (FPU, error) {
	var f FPU
	_, err := ioctlPtr(c.fd, ioctlGetFPU, &f)
	return f, ioctlError("KVM_GET_FPU", err)
}

// SetFPU writes the x87/SSE state (KVM_SET_FPU); a booting VMM sets
// FCW=0x37f and MXCSR=0x1f80, the reset values.
func (c *VCPU) SetFPU(f FPU) error {
	_, err := ioctlPtr(c.fd, ioctlSetFPU, &f)
	return ioctlError("KVM_SET_FPU", err)
}

// maxMSRs bounds one KVM_GET/SET_MSRS call (the kernel's limit is
// KVM_MAX_MSR_ENTRIES, 256).
const maxMSRs = 256

func encodeMSRs(entries []MSREntry) ([]byte, error) {
	if len(entries) > maxMSRs {
		return nil, fmt.Errorf("kvm: %d MSRs in one call, at most %d", len(entries), maxMSRs)
	}
	buf := make([]byte, 0, sizeofMSRsHead+len(entries)*sizeofMSREntry)
	buf = binary.NativeEndian.AppendUint32(buf, uint32(len(entries)))
	buf = binary.NativeEndian.AppendUint32(buf, 0)
	return binary.Append(buf, binary.NativeEndian, entries)
}

// GetMSRs reads the MSRs whose indices are given. The kernel stops at the
// first MSR it cannot read; that is reported as an error naming it.
func (c *VCPU) GetMSRs(indices ...uint32) ([]MSREntry, error) {
	entries := make([]MSREntry, len(indices))
	for i, idx := range indices {
		entries[i].Index = idx
	}
	buf, err := encodeMSRs(entries)
	if err != nil {
		return nil, err
	}
	n, err := ioctlBytes(c.fd, ioctlGetMSRs, buf)
	if err != nil {
		return nil, ioctlError("KVM_GET_MSRS", err)
	}
	if int(n) < len(entries) {
		return nil, fmt.Errorf("kvm: KVM_GET_MSRS: MSR %#x not readable", indices[n])
	}
	if _, err := binary.Decode(buf[sizeofMSRsHead:], binary.NativeEndian, entries); err != nil {
		return nil, err
	}
	return entries, nil
}

// SetMSRs writes MSRs. The kernel stops at the first MSR it refuses; that is
// reported as an error naming it.
func (c *VCPU) SetMSRs(entries []MSREntry) error {
	buf, err := encodeMSRs(entries)
	if err != nil {
		return err
	}
	n, err := ioctlBytes(c.fd, ioctlSetMSRs, buf)
	if err != nil {
		return ioctlError("KVM_SET_MSRS", err)
	}
	if int(n) < len(entries) {
		return fmt.Errorf("kvm: KVM_SET_MSRS: MSR %#x refused", entries[n].Index)
	}
	return nil
}

func decodeCPUID(buf []byte) ([]CPUIDEntry, error) {
	n := binary.NativeEndian.Uint32(buf)
	if uint64(n)*sizeofCPUIDEntry > uint64(len(buf)-sizeofCPUID2Head) {
		return nil, fmt.Errorf("kvm: kernel reported %d CPUID entries, more than the buffer holds", n)
	}
	entries := make([]CPUIDEntry, n)
	if _, err := binary.Decode(buf[sizeofCPUID2Head:], binary.NativeEndian, entries); err != nil {
		return nil, err
	}
	return entries, nil
}

// SetCPUID2 sets what CPUID returns in the guest (KVM_SET_CPUID2). Call it
// before the first Run; later changes are refused by current kernels.
func (c *VCPU) SetCPUID2(entries []CPUIDEntry) error {
	if len(entries) > maxCPUIDEntries {
		return fmt.Errorf("kvm: KVM_SET_CPUID2: %d entries, at most %d", len(entries), maxCPUIDEntries)
	}
	buf := make([]byte, 0, sizeofCPUID2Head+len(entries)*sizeofCPUIDEntry)
	buf = binary.NativeEndian.AppendUint32(buf, uint32(len(entries)))
	buf = binary.NativeEndian.AppendUint32(buf, 0)
	buf, err := binary.Append(buf, binary.NativeEndian, entries)
	if err != nil {
		return err
	}
	_, err = ioctlBytes(c.fd, ioctlSetCPUID2, buf)
	return ioctlError("KVM_SET_CPUID2", err)
}

// GetLAPIC reads the local APIC's register page (KVM_GET_LAPIC).
func (c *VCPU) GetLAPIC() (LAPICState, error) {
	var l LAPICState
	_, err := ioctlPtr(c.fd, ioctlGetLAPIC, &l)
	return l, ioctlError("KVM_GET_LAPIC", err)
}

// SetLAPIC writes the local APIC's register page (KVM_SET_LAPIC).
func (c *VCPU) SetLAPIC(l LAPICState) error {
	_, err := ioctlPtr(c.fd, ioctlSetLAPIC, &l)
	return ioctlError("KVM_SET_LAPIC", err)
}

// Reg returns the 32-bit APIC register at byte offset off (0x20 is the ID,
// 0x350 LVT LINT0, ...). Out-of-range offsets read as 0.
func (l *LAPICState) Reg(off int) uint32 {
	if off < 0 || off+4 > len(l.Regs) {
		return 0
	}
	return binary.LittleEndian.Uint32(l.Regs[off:])
}

// SetReg sets the 32-bit APIC register at byte offset off; out-of-range
// offsets are ignored.
func (l *LAPICState) SetReg(off int, v uint32) {
	if off < 0 || off+4 > len(l.Regs) {
		return
	}
	binary.LittleEndian.PutUint32(l.Regs[off:], v)
}

// GetMPState reads the vCPU's multiprocessing state (MPState*).
func (c *VCPU) GetMPState() (uint32, error) {
	var s MPState
	_, err := ioctlPtr(c.fd, ioctlGetMPState, &s)
	return s.State, ioctlError("KVM_GET_MP_STATE", err)
}

// SetMPState sets the vCPU's multiprocessing state, e.g. MPStateRunnable
// for an application processor started without INIT/SIPI.
func (c *VCPU) SetMPState(state uint32) error {
	s := MPState{State: state}
	_, err := ioctlPtr(c.fd, ioctlSetMPState, &s)
	return ioctlError("KVM_SET_MP_STATE", err)
}

// SetSignalMask sets the signal mask in force while the vCPU is in the guest
// (KVM_SET_SIGNAL_MASK); nil removes it, so the thread's own mask applies.
func (c *VCPU) SetSignalMask(set *unix.Sigset_t) error {
	if set == nil {
		_, err := ioctl(c.fd, ioctlSetSignalMask, 0)
		return ioctlError("KVM_SET_SIGNAL_MASK", err)
	}
	// struct kvm_signal_mask { __u32 len; __u8 sigset[]; } with the kernel's
	// 8-byte sigset.
	buf := make([]byte, 4+8)
	binary.NativeEndian.PutUint32(buf, 8)
	binary.NativeEndian.PutUint64(buf[4:], set.Val[0])
	_, err := ioctlBytes(c.fd, ioctlSetSignalMask, buf)
	return ioctlError("KVM_SET_SIGNAL_MASK", err)
}
