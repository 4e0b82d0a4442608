package vcpu

import (
	"fmt"

	"github.com/viovmm/vio/kvm"
)

// Kind classifies an Event.
type Kind int

const (
	// Halt: the guest executed HLT and KVM returned to userspace (only
	// without an in-kernel local APIC; with one, KVM waits for the
	// interrupt itself).
	Halt Kind = iota + 1
	// Shutdown: the guest triple-faulted (KVM_EXIT_SHUTDOWN). On a PC
	// this is a reset.
	Shutdown
	// System: the guest requested a power transition through KVM
	// (KVM_EXIT_SYSTEM_EVENT); see Event.System for shutdown, reset or
	// crash.
	System
	// FailEntry: the hardware refused to enter the guest
	// (KVM_EXIT_FAIL_ENTRY); Event.FailEntry has the hardware's reason.
	FailEntry
	// InternalError: KVM could not continue (KVM_EXIT_INTERNAL_ERROR);
	// Event.Internal says why.
	InternalError
	// Unhandled: an exit this package does not handle; Event.Reason.
	Unhandled
	// Error: KVM_RUN failed or an exit was malformed; Event.Err.
	Error
)

func (k Kind) String() string {
	switch k {
	case Halt:
		return "halt"
	case Shutdown:
		return "shutdown"
	case System:
		return "system-event"
	case FailEntry:
		return "fail-entry"
	case InternalError:
		return "internal-error"
	case Unhandled:
		return "unhandled-exit"
	case Error:
		return "error"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Event is an exit the vCPU loop cannot resolve by itself and reports to
// the VM's owner. Only the fields for its Kind are set.
type Event struct {
	VCPU   int            // the vCPU's id
	Kind   Kind           //
	Reason kvm.ExitReason // the exit reason (all kinds but Error)

	System    kvm.SystemEvent // Kind System
	FailEntry kvm.FailEntry   // Kind FailEntry
	Internal  kvm.Internal    // Kind InternalError
	Err       error           // Kind Error
	// State is where the vCPU stood (Kind Shutdown): a triple fault
	// leaves no guest message behind, so these registers are the only
	// account of it a user gets. Empty if they could not be read.
	State string
}

func (e Event) String() string {
	switch e.Kind {
	case System:
		return fmt.Sprintf("vCPU %d: system event %v %#x", e.VCPU, e.System.Type, e.System.Data)
	case FailEntry:
		return fmt.Sprintf("vCPU %d: entry failed, hardware reason %#x on host CPU %d",
			e.VCPU, e.FailEntry.HardwareReason, e.FailEntry.CPU)
	case InternalError:
		return fmt.Sprintf("vCPU %d: KVM internal error: %v %#x", e.VCPU, e.Internal.Suberror, e.Internal.Data)
	case Shutdown:
		if e.State == "" {
			return fmt.Sprintf("vCPU %d: triple fault", e.VCPU)
		}
		return fmt.Sprintf("vCPU %d: triple fault at %s", e.VCPU, e.State)
	case Unhandled:
		return fmt.Sprintf("vCPU %d: unhandled exit %v", e.VCPU, e.Reason)
	case Error:
		return fmt.Sprintf("vCPU %d: %v", e.VCPU, e.Err)
	}
	return fmt.Sprintf("vCPU %d: %v", e.VCPU, e.Kind)
}

// Action is what a Handler tells the vCPU loop to do next.
type Action int

const (
	// Stop ends this vCPU's loop; its goroutine and thread exit.
	Stop Action = iota
	// Continue re-enters the guest.
	Continue
	// Park parks this vCPU as if Pause had been called on it; it runs
	// again after Resume.
	Park
)

// Handler receives a vCPU's events. It is called on the vCPU's own thread,
// synchronously, so the vCPU stays out of the guest until it returns. It
// must not call Pause or Stop on its own vCPU (or a Group containing it):
// those wait for the vCPU to park, which it cannot do while inside the
// handler. Return Park or Stop instead, and hand VM-wide reactions (reset
// all vCPUs, shut the VM down) to another goroutine.
//
// A nil Handler stops the vCPU on every event.
type Handler func(Event) Action

// faultState formats the registers that place a triple fault: where the
// vCPU was, its stack, the last page-fault address, its paging and its
// interrupt table (a fault while delivering a fault is what ends in a
// triple fault).
func faultState(r kvm.Regs, s kvm.Sregs) string {
	if r.Rip == 0xfff0 && s.Cs.Selector == 0xf000 && s.Cr0&1 == 0 {
		// KVM on AMD reinitializes the vCPU when it reports the
		// shutdown (the VMCB is undefined after one): what is left is
		// the reset vector, not where the guest was.
		return "the reset vector: KVM had already reset the vCPU (as on AMD hosts), so where it faulted is lost"
	}
	return fmt.Sprintf("RIP=%#x RSP=%#x CS=%#x CR0=%#x CR2=%#x CR3=%#x CR4=%#x EFER=%#x IDT=%#x+%#x",
		r.Rip, r.Rsp, s.Cs.Selector, s.Cr0, s.Cr2, s.Cr3, s.Cr4, s.Efer, s.Idt.Base, s.Idt.Limit)
}
