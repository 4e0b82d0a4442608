package kvm

import (
	"fmt"
)

// Exit is a view of a vCPU's latest exit, read from the kvm_run page. It is
// valid from the return of Run until the next Run. Data slices it returns
// alias the kvm_run page: writing into them (for an IO or MMIO read) is how
// the VMM hands the value back to the guest, which receives it on the next
// Run.
//
// The kernel fills kvm_run, but the values in it (ports, addresses, counts)
// come from the guest. The accessors check every offset and length against
// the mapping and report a malformed exit as an error.
type Exit struct {
	c *VCPU
}

// Reason returns kvm_run.exit_reason.
func (e Exit) Reason() ExitReason { return ExitReason(e.c.head().ExitReason) }

// IO is a port I/O exit (ExitIO).
type IO struct {
	Out  bool   // true for OUT/OUTS (guest writes), false for IN/INS
	Size int    // bytes per access: 1, 2 or 4
	Port uint16 // first port
	// Count is the number of accesses; more than 1 for string I/O
	// (INS/OUTS with REP), all to the same Port.
	Count int
	// Data holds Count accesses of Size bytes, back to back, inside the
	// kvm_run mapping. For OUT the guest's values are here; for IN the VMM
	// fills it.
	Data []byte
}

// IO decodes an ExitIO. It fails if the exit is not an IO exit or if its
// data area does not lie inside the kvm_run mapping.
func (e Exit) IO() (IO, error) {
	if r := e.Reason(); r != ExitIO {
		return IO{}, fmt.Errorf("kvm: exit reason %v is not IO", r)
	}
	v := exitView[runIO](e.c.run)
	io := IO{Out: v.Direction == exitIOOut, Size: int(v.Size), Port: v.Port, Count: int(v.Count)}
	switch io.Size {
	case 1, 2, 4:
	default:
		return IO{}, fmt.Errorf("kvm: IO exit with access size %d", io.Size)
	}
	n := uint64(v.Count) * uint64(v.Size)
	if v.Count == 0 || v.Offset < runHeadSize || v.Offset > uint64(len(e.c.run)) || n > uint64(len(e.c.run))-v.Offset {
		return IO{}, fmt.Errorf("kvm: IO exit data %#x+%d×%d outside the %d-byte kvm_run mapping",
			v.Offset, v.Count, v.Size, len(e.c.run))
	}
	io.Data = e.c.run[v.Offset : v.Offset+n : v.Offset+n]
	return io, nil
}

// MMIO is a memory-mapped I/O exit (ExitMMIO): a guest access to a guest
// physical address that no memory slot backs (or a write to a read-only
// slot).
type MMIO struct {
	Addr  uint64 // guest physical address
	Write bool
	// Data is the access's Len bytes inside kvm_run (at most 8). For a
	// write it holds the value; for a read the VMM fills it.
	Data []byte
}

// MMIO decodes an ExitMMIO.
func (e Exit) MMIO() (MMIO, error) {
	if r := e.Reason(); r != ExitMMIO {
		return MMIO{}, fmt.Errorf("kvm: exit reason %v is not MMIO", r)
	}
	v := exitView[runMMIO](e.c.run)
	if v.Len == 0 || v.Len > uint32(len(v.Data)) {
		return MMIO{}, fmt.Errorf("kvm: MMIO exit at %#x with length %d", v.PhysAddr, v.Len)
	}
	return MMIO{Addr: v.PhysAddr, Write: v.IsWrite != 0, Data: v.Data[:v.Len:v.Len]}, nil
}

// SystemEvent is an ExitSystemEvent: the guest asked for a power
// transition through a channel KVM handles (PSCI on Arm, a Hyper-V or
// Xen call, or an SEV termination request on x86).
type SystemEvent struct {
	Type SystemEventType
	Data []uint64 // event-specific words (a copy)
}

// SystemEvent decodes an ExitSystemEvent.
func (e Exit) SystemEvent() (SystemEvent, error) {
	if r := e.Reason(); r != ExitSystemEvent {
		return SystemEvent{}, fmt.Errorf("kvm: exit reason %v is not a system event", r)
	}
	v := exitView[runSystemEvent](e.c.run)
	n := min(int(v.Ndata), len(v.Data))
	return SystemEvent{Type: SystemEventType(v.Type), Data: append([]uint64(nil), v.Data[:n]...)}, nil
}

// FailEntry is an ExitFailEntry: the hardware refused to enter the guest,
// almost always because of invalid register state set by the VMM.
type FailEntry struct {
	HardwareReason uint64 // VMX/SVM specific
	CPU            uint32 // host CPU
}

// FailEntry decodes an ExitFailEntry.
func (e Exit) FailEntry() FailEntry {
	v := exitView[runFailEntry](e.c.run)
	return FailEntry{HardwareReason: v.EntryFailureReason, CPU: v.CPU}
}

// Internal is an ExitInternalError: KVM could not handle something
// (typically an instruction it had to emulate and could not).
type Internal struct {
	Suberror InternalError
	Data     []uint64 // suberror-specific words (a copy)
}

// Internal decodes an ExitInternalError.
func (e Exit) Internal() Internal {
	v := exitView[runInternal](e.c.run)
	n := min(int(v.Ndata), len(v.Data))
	return Internal{Suberror: InternalError(v.Suberror), Data: append([]uint64(nil), v.Data[:n]...)}
}

// HardwareExitReason is the hardware's reason for an ExitUnknown.
func (e Exit) HardwareExitReason() uint64 { return exitView[runHW](e.c.run).ExitReason }

// Exception returns the vector and error code of an ExitException.
func (e Exit) Exception() (vector, code uint32) {
	v := exitView[runEx](e.c.run)
	return v.Exception, v.Code
}

var exitNames = map[ExitReason]string{
	ExitUnknown: "unknown", ExitException: "exception", ExitIO: "io", ExitHypercall: "hypercall",
	ExitDebug: "debug", ExitHLT: "hlt", ExitMMIO: "mmio", ExitIRQWindowOpen: "irq-window-open",
	ExitShutdown: "shutdown", ExitFailEntry: "fail-entry", ExitIntr: "intr", ExitSetTPR: "set-tpr",
	ExitTPRAccess: "tpr-access", ExitNMI: "nmi", ExitInternalError: "internal-error",
	ExitWatchdog: "watchdog", ExitSystemEvent: "system-event", ExitIOAPICEOI: "ioapic-eoi",
	ExitHyperV: "hyperv", ExitX86RDMSR: "rdmsr", ExitX86WRMSR: "wrmsr",
	ExitDirtyRingFull: "dirty-ring-full", ExitAPResetHold: "ap-reset-hold",
	ExitX86BusLock: "bus-lock", ExitXen: "xen", ExitNotify: "notify",
}

func (r ExitReason) String() string {
	if s, ok := exitNames[r]; ok {
		return s
	}
	return fmt.Sprintf("exit(%d)", uint32(r))
}

func (t SystemEventType) String() string {
	switch t {
	case SystemEventShutdown:
		return "shutdown"
	case SystemEventReset:
		return "reset"
	case SystemEventCrash:
		return "crash"
	case SystemEventWakeup:
		return "wakeup"
	case SystemEventSuspend:
		return "suspend"
	case SystemEventSEVTerm:
		return "sev-term"
	}
	return fmt.Sprintf("system-event(%d)", uint32(t))
}

func (s InternalError) String() string {
	switch s {
	case InternalErrorEmulation:
		return "emulation failure"
	case InternalErrorSimulEx:
		return "simultaneous exceptions"
	case InternalErrorDeliveryEv:
		return "exit during event delivery"
	case InternalErrorUnexpectedExitReason:
		return "unexpected exit reason"
	}
	return fmt.Sprintf("internal-error(%d)", uint32(s))
}
