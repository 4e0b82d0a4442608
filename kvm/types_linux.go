//go:build ignore

// This file is the input to cgo -godefs; see gen.go. It is not compiled into
// the package. Every KVM struct and constant vio uses is named here once, and
// the generator turns the kernel's own header into Go definitions, so sizes,
// offsets and padding come from the compiler rather than from hand-copying.

package kvm

/*
#include <linux/kvm.h>
#include <stddef.h>

// kvm_run's exit information is an anonymous union of anonymous structs.
// Name the members vio reads so godefs can lay them out.
typedef typeof(((struct kvm_run *)0)->io) kvm_run_io;
typedef typeof(((struct kvm_run *)0)->mmio) kvm_run_mmio;
typedef typeof(((struct kvm_run *)0)->fail_entry) kvm_run_fail_entry;
typedef typeof(((struct kvm_run *)0)->internal) kvm_run_internal;
// system_event ends in a union of flags and data[16]; vio wants data.
struct kvm_run_system_event {
	__u32 type;
	__u32 ndata;
	__u64 data[16];
};
_Static_assert(sizeof(struct kvm_run_system_event) ==
	sizeof(((struct kvm_run *)0)->system_event), "system_event layout");
_Static_assert(offsetof(struct kvm_run_system_event, data) ==
	offsetof(typeof(((struct kvm_run *)0)->system_event), data), "system_event data");
typedef typeof(((struct kvm_run *)0)->hw) kvm_run_hw;
typedef typeof(((struct kvm_run *)0)->ex) kvm_run_ex;

// The routing entry's payload is a union too; the two kinds vio programs.
typedef typeof(((struct kvm_irq_routing_entry *)0)->u.irqchip) kvm_irq_routing_irqchip_t;
typedef typeof(((struct kvm_irq_routing_entry *)0)->u.msi) kvm_irq_routing_msi_t;

// The fixed part of kvm_run, up to the exit union; the union is reached by
// offset (runExitOffset) because godefs flattens unions to byte arrays.
struct kvm_run_head {
	__u8 request_interrupt_window;
	__u8 immediate_exit;
	__u8 padding1[6];
	__u32 exit_reason;
	__u8 ready_for_interrupt_injection;
	__u8 if_flag;
	__u16 flags;
	__u64 cr8;
	__u64 apic_base;
};
_Static_assert(sizeof(struct kvm_run_head) == offsetof(struct kvm_run, io), "kvm_run head");
_Static_assert(offsetof(struct kvm_run_head, exit_reason) == offsetof(struct kvm_run, exit_reason), "exit_reason");

// kvm_vcpu_events is made of anonymous structs, which godefs cannot name:
// the same bytes, flattened, checked against the kernel's layout.
struct kvm_vcpu_events_flat {
	__u8 exception_injected;
	__u8 exception_nr;
	__u8 exception_has_error_code;
	__u8 exception_pending;
	__u32 exception_error_code;
	__u8 interrupt_injected;
	__u8 interrupt_nr;
	__u8 interrupt_soft;
	__u8 interrupt_shadow;
	__u8 nmi_injected;
	__u8 nmi_pending;
	__u8 nmi_masked;
	__u8 nmi_pad;
	__u32 sipi_vector;
	__u32 flags;
	__u8 smi_smm;
	__u8 smi_pending;
	__u8 smi_inside_nmi;
	__u8 smi_latched_init;
	__u8 triple_fault_pending;
	__u8 reserved[26];
	__u8 exception_has_payload;
	__u64 exception_payload;
};
_Static_assert(sizeof(struct kvm_vcpu_events_flat) == sizeof(struct kvm_vcpu_events), "vcpu_events size");
_Static_assert(offsetof(struct kvm_vcpu_events_flat, flags) == offsetof(struct kvm_vcpu_events, flags), "vcpu_events flags");
_Static_assert(offsetof(struct kvm_vcpu_events_flat, smi_smm) == offsetof(struct kvm_vcpu_events, smi), "vcpu_events smi");
_Static_assert(offsetof(struct kvm_vcpu_events_flat, triple_fault_pending) == offsetof(struct kvm_vcpu_events, triple_fault), "vcpu_events triple_fault");
_Static_assert(offsetof(struct kvm_vcpu_events_flat, exception_payload) == offsetof(struct kvm_vcpu_events, exception_payload), "vcpu_events payload");

// kvm_msrs and kvm_cpuid2 end in flexible arrays: describe the fixed headers.
struct kvm_msrs_head { __u32 nmsrs; __u32 pad; };
struct kvm_cpuid2_head { __u32 nent; __u32 padding; };
struct kvm_irq_routing_head { __u32 nr; __u32 flags; };

enum {
	kvm_run_exit_offset = offsetof(struct kvm_run, io),
	kvm_run_head_size = sizeof(struct kvm_run_head),
	kvm_run_immediate_exit_offset = offsetof(struct kvm_run, immediate_exit),
	kvm_run_exit_reason_offset = offsetof(struct kvm_run, exit_reason),
	kvm_irq_routing_entry_u_offset = offsetof(struct kvm_irq_routing_entry, u),
};
*/
import "C"

// Struct layouts.
type (
	Regs                  C.struct_kvm_regs
	Sregs                 C.struct_kvm_sregs
	Segment               C.struct_kvm_segment
	DTable                C.struct_kvm_dtable
	FPU                   C.struct_kvm_fpu
	MSREntry              C.struct_kvm_msr_entry
	CPUIDEntry            C.struct_kvm_cpuid_entry2
	LAPICState            C.struct_kvm_lapic_state
	PITConfig             C.struct_kvm_pit_config
	MPState               C.struct_kvm_mp_state
	ClockData             C.struct_kvm_clock_data
	UserspaceMemoryRegion C.struct_kvm_userspace_memory_region
	XCR                   C.struct_kvm_xcr
	XCRs                  C.struct_kvm_xcrs
	VCPUEvents            C.struct_kvm_vcpu_events_flat
	DebugRegs             C.struct_kvm_debugregs
	PITState2             C.struct_kvm_pit_state2
	PITChannelState       C.struct_kvm_pit_channel_state
	irqchipRaw            C.struct_kvm_irqchip
	irqfd                 C.struct_kvm_irqfd
	ioeventfd             C.struct_kvm_ioeventfd
	irqLevel              C.struct_kvm_irq_level
	dirtyLog              C.struct_kvm_dirty_log
	irqRoutingEntry       C.struct_kvm_irq_routing_entry
	routePayloadIRQChip   C.kvm_irq_routing_irqchip_t
	routePayloadMSI       C.kvm_irq_routing_msi_t
	irqRoutingHead        C.struct_kvm_irq_routing_head
	msrsHead              C.struct_kvm_msrs_head
	cpuid2Head            C.struct_kvm_cpuid2_head
	runHead               C.struct_kvm_run_head
	runIO                 C.kvm_run_io
	runMMIO               C.kvm_run_mmio
	runFailEntry          C.kvm_run_fail_entry
	runInternal           C.kvm_run_internal
	runSystemEvent        C.struct_kvm_run_system_event
	runHW                 C.kvm_run_hw
	runEx                 C.kvm_run_ex
	statsHeader           C.struct_kvm_stats_header
	statsDesc             C.struct_kvm_stats_desc
	msi                   C.struct_kvm_msi
	enableCap             C.struct_kvm_enable_cap
)

// Layout facts the package checks its accessors against.
const (
	runExitOffset          = C.kvm_run_exit_offset
	runHeadSize            = C.kvm_run_head_size
	runImmediateExitOffset = C.kvm_run_immediate_exit_offset
	runExitReasonOffset    = C.kvm_run_exit_reason_offset
	irqRoutingEntryUOffset = C.kvm_irq_routing_entry_u_offset
	sizeofRun              = C.sizeof_struct_kvm_run
	sizeofMSREntry         = C.sizeof_struct_kvm_msr_entry
	sizeofCPUIDEntry       = C.sizeof_struct_kvm_cpuid_entry2
	sizeofIRQRoutingEntry  = C.sizeof_struct_kvm_irq_routing_entry
	sizeofStatsDesc        = C.sizeof_struct_kvm_stats_desc
	sizeofStatsHeader      = C.sizeof_struct_kvm_stats_header
	sizeofCPUID2Head       = C.sizeof_struct_kvm_cpuid2
	sizeofMSRsHead         = C.sizeof_struct_kvm_msrs
	sizeofIRQRoutingHead   = C.sizeof_struct_kvm_irq_routing
	sizeofSregs            = C.sizeof_struct_kvm_sregs
	sizeofXSave            = C.sizeof_struct_kvm_xsave
	sizeofIRQChip          = C.sizeof_struct_kvm_irqchip
	sizeofVCPUEvents       = C.sizeof_struct_kvm_vcpu_events
	sizeofPITState2        = C.sizeof_struct_kvm_pit_state2
)

// API version this package speaks (KVM_GET_API_VERSION must return it).
const APIVersion = C.KVM_API_VERSION

// ioctl request numbers.
const (
	ioctlGetAPIVersion       = C.KVM_GET_API_VERSION
	ioctlCreateVM            = C.KVM_CREATE_VM
	ioctlCheckExtension      = C.KVM_CHECK_EXTENSION
	ioctlGetVCPUMmapSize     = C.KVM_GET_VCPU_MMAP_SIZE
	ioctlGetSupportedCPUID   = C.KVM_GET_SUPPORTED_CPUID
	ioctlGetMSRIndexList     = C.KVM_GET_MSR_INDEX_LIST
	ioctlCreateVCPU          = C.KVM_CREATE_VCPU
	ioctlSetUserMemoryRegion = C.KVM_SET_USER_MEMORY_REGION
	ioctlSetTSSAddr          = C.KVM_SET_TSS_ADDR
	ioctlSetIdentityMapAddr  = C.KVM_SET_IDENTITY_MAP_ADDR
	ioctlCreateIRQChip       = C.KVM_CREATE_IRQCHIP
	ioctlCreatePIT2          = C.KVM_CREATE_PIT2
	ioctlIRQLine             = C.KVM_IRQ_LINE
	ioctlSetGSIRouting       = C.KVM_SET_GSI_ROUTING
	ioctlIRQFD               = C.KVM_IRQFD
	ioctlIOEventFD           = C.KVM_IOEVENTFD
	ioctlGetDirtyLog         = C.KVM_GET_DIRTY_LOG
	ioctlGetClock            = C.KVM_GET_CLOCK
	ioctlSetClock            = C.KVM_SET_CLOCK
	ioctlSignalMSI           = C.KVM_SIGNAL_MSI
	ioctlEnableCap           = C.KVM_ENABLE_CAP
	ioctlGetStatsFD          = C.KVM_GET_STATS_FD
	ioctlRun                 = C.KVM_RUN
	ioctlGetRegs             = C.KVM_GET_REGS
	ioctlSetRegs             = C.KVM_SET_REGS
	ioctlGetSregs            = C.KVM_GET_SREGS
	ioctlSetSregs            = C.KVM_SET_SREGS
	ioctlGetFPU              = C.KVM_GET_FPU
	ioctlSetFPU              = C.KVM_SET_FPU
	ioctlGetMSRs             = C.KVM_GET_MSRS
	ioctlSetMSRs             = C.KVM_SET_MSRS
	ioctlSetCPUID2           = C.KVM_SET_CPUID2
	ioctlGetCPUID2           = C.KVM_GET_CPUID2
	ioctlGetLAPIC            = C.KVM_GET_LAPIC
	ioctlSetLAPIC            = C.KVM_SET_LAPIC
	ioctlGetMPState          = C.KVM_GET_MP_STATE
	ioctlSetMPState          = C.KVM_SET_MP_STATE
	ioctlSetSignalMask       = C.KVM_SET_SIGNAL_MASK
	ioctlGetXSave            = C.KVM_GET_XSAVE
	ioctlGetXSave2           = C.KVM_GET_XSAVE2
	ioctlSetXSave            = C.KVM_SET_XSAVE
	ioctlGetXCRs             = C.KVM_GET_XCRS
	ioctlSetXCRs             = C.KVM_SET_XCRS
	ioctlGetVCPUEvents       = C.KVM_GET_VCPU_EVENTS
	ioctlSetVCPUEvents       = C.KVM_SET_VCPU_EVENTS
	ioctlGetDebugRegs        = C.KVM_GET_DEBUGREGS
	ioctlSetDebugRegs        = C.KVM_SET_DEBUGREGS
	ioctlGetTSCKHz           = C.KVM_GET_TSC_KHZ
	ioctlSetTSCKHz           = C.KVM_SET_TSC_KHZ
	ioctlKVMClockCtrl        = C.KVM_KVMCLOCK_CTRL
	ioctlGetIRQChip          = C.KVM_GET_IRQCHIP
	ioctlSetIRQChip          = C.KVM_SET_IRQCHIP
	ioctlGetPIT2             = C.KVM_GET_PIT2
	ioctlSetPIT2             = C.KVM_SET_PIT2
)

// ExitReason is kvm_run.exit_reason.
type ExitReason uint32

// Exit reasons (KVM_EXIT_*).
const (
	ExitUnknown       ExitReason = C.KVM_EXIT_UNKNOWN
	ExitException     ExitReason = C.KVM_EXIT_EXCEPTION
	ExitIO            ExitReason = C.KVM_EXIT_IO
	ExitHypercall     ExitReason = C.KVM_EXIT_HYPERCALL
	ExitDebug         ExitReason = C.KVM_EXIT_DEBUG
	ExitHLT           ExitReason = C.KVM_EXIT_HLT
	ExitMMIO          ExitReason = C.KVM_EXIT_MMIO
	ExitIRQWindowOpen ExitReason = C.KVM_EXIT_IRQ_WINDOW_OPEN
	ExitShutdown      ExitReason = C.KVM_EXIT_SHUTDOWN
	ExitFailEntry     ExitReason = C.KVM_EXIT_FAIL_ENTRY
	ExitIntr          ExitReason = C.KVM_EXIT_INTR
	ExitSetTPR        ExitReason = C.KVM_EXIT_SET_TPR
	ExitTPRAccess     ExitReason = C.KVM_EXIT_TPR_ACCESS
	ExitNMI           ExitReason = C.KVM_EXIT_NMI
	ExitInternalError ExitReason = C.KVM_EXIT_INTERNAL_ERROR
	ExitWatchdog      ExitReason = C.KVM_EXIT_WATCHDOG
	ExitSystemEvent   ExitReason = C.KVM_EXIT_SYSTEM_EVENT
	ExitIOAPICEOI     ExitReason = C.KVM_EXIT_IOAPIC_EOI
	ExitHyperV        ExitReason = C.KVM_EXIT_HYPERV
	ExitX86RDMSR      ExitReason = C.KVM_EXIT_X86_RDMSR
	ExitX86WRMSR      ExitReason = C.KVM_EXIT_X86_WRMSR
	ExitDirtyRingFull ExitReason = C.KVM_EXIT_DIRTY_RING_FULL
	ExitAPResetHold   ExitReason = C.KVM_EXIT_AP_RESET_HOLD
	ExitX86BusLock    ExitReason = C.KVM_EXIT_X86_BUS_LOCK
	ExitXen           ExitReason = C.KVM_EXIT_XEN
	ExitNotify        ExitReason = C.KVM_EXIT_NOTIFY
)

// Directions of an IO exit.
const (
	exitIOIn  = C.KVM_EXIT_IO_IN
	exitIOOut = C.KVM_EXIT_IO_OUT
)

// SystemEventType is kvm_run.system_event.type.
type SystemEventType uint32

// System event types (KVM_SYSTEM_EVENT_*).
const (
	SystemEventShutdown SystemEventType = C.KVM_SYSTEM_EVENT_SHUTDOWN
	SystemEventReset    SystemEventType = C.KVM_SYSTEM_EVENT_RESET
	SystemEventCrash    SystemEventType = C.KVM_SYSTEM_EVENT_CRASH
	SystemEventWakeup   SystemEventType = C.KVM_SYSTEM_EVENT_WAKEUP
	SystemEventSuspend  SystemEventType = C.KVM_SYSTEM_EVENT_SUSPEND
	SystemEventSEVTerm  SystemEventType = C.KVM_SYSTEM_EVENT_SEV_TERM
)

// InternalError is kvm_run.internal.suberror.
type InternalError uint32

// Internal error sub-codes (KVM_INTERNAL_ERROR_*).
const (
	InternalErrorEmulation            InternalError = C.KVM_INTERNAL_ERROR_EMULATION
	InternalErrorSimulEx              InternalError = C.KVM_INTERNAL_ERROR_SIMUL_EX
	InternalErrorDeliveryEv           InternalError = C.KVM_INTERNAL_ERROR_DELIVERY_EV
	InternalErrorUnexpectedExitReason InternalError = C.KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON
)

// Cap is a KVM capability number for CheckExtension.
type Cap int

// Capabilities vio asks about (KVM_CAP_*).
const (
	CapIRQChip            Cap = C.KVM_CAP_IRQCHIP
	CapHLT                Cap = C.KVM_CAP_HLT
	CapUserMemory         Cap = C.KVM_CAP_USER_MEMORY
	CapSetTSSAddr         Cap = C.KVM_CAP_SET_TSS_ADDR
	CapExtCPUID           Cap = C.KVM_CAP_EXT_CPUID
	CapNrVCPUs            Cap = C.KVM_CAP_NR_VCPUS
	CapMaxVCPUs           Cap = C.KVM_CAP_MAX_VCPUS
	CapNrMemslots         Cap = C.KVM_CAP_NR_MEMSLOTS
	CapPIT2               Cap = C.KVM_CAP_PIT2
	CapIOEventFD          Cap = C.KVM_CAP_IOEVENTFD
	CapIRQFD              Cap = C.KVM_CAP_IRQFD
	CapIRQRouting         Cap = C.KVM_CAP_IRQ_ROUTING
	CapSetIdentityMapAddr Cap = C.KVM_CAP_SET_IDENTITY_MAP_ADDR
	CapAdjustClock        Cap = C.KVM_CAP_ADJUST_CLOCK
	CapSignalMSI          Cap = C.KVM_CAP_SIGNAL_MSI
	CapImmediateExit      Cap = C.KVM_CAP_IMMEDIATE_EXIT
	CapBinaryStatsFD      Cap = C.KVM_CAP_BINARY_STATS_FD
	CapSplitIRQChip       Cap = C.KVM_CAP_SPLIT_IRQCHIP
	CapX2APICAPI          Cap = C.KVM_CAP_X2APIC_API
	CapTSCControl         Cap = C.KVM_CAP_TSC_CONTROL
	CapXSave              Cap = C.KVM_CAP_XSAVE
	CapXCRS               Cap = C.KVM_CAP_XCRS
	CapMPState            Cap = C.KVM_CAP_MP_STATE
	CapSyncMMU            Cap = C.KVM_CAP_SYNC_MMU
	CapXSave2             Cap = C.KVM_CAP_XSAVE2
	CapVCPUEvents         Cap = C.KVM_CAP_VCPU_EVENTS
	CapDebugRegs          Cap = C.KVM_CAP_DEBUGREGS
	CapGetTSCKHz          Cap = C.KVM_CAP_GET_TSC_KHZ
	CapKVMClockCtrl       Cap = C.KVM_CAP_KVMCLOCK_CTRL
	CapTSCDeadlineTimer   Cap = C.KVM_CAP_TSC_DEADLINE_TIMER
)

// Flags and kinds used by the typed wrappers.
const (
	memLogDirtyPages         = C.KVM_MEM_LOG_DIRTY_PAGES
	memReadonly              = C.KVM_MEM_READONLY
	irqfdFlagDeassign        = C.KVM_IRQFD_FLAG_DEASSIGN
	irqfdFlagResample        = C.KVM_IRQFD_FLAG_RESAMPLE
	ioeventfdDatamatch       = C.KVM_IOEVENTFD_FLAG_DATAMATCH
	ioeventfdPIO             = C.KVM_IOEVENTFD_FLAG_PIO
	ioeventfdDeassign        = C.KVM_IOEVENTFD_FLAG_DEASSIGN
	irqRoutingIRQChip        = C.KVM_IRQ_ROUTING_IRQCHIP
	irqRoutingMSI            = C.KVM_IRQ_ROUTING_MSI
	msiValidDevID            = C.KVM_MSI_VALID_DEVID
	pitSpeakerDummy          = C.KVM_PIT_SPEAKER_DUMMY
	clockTSCStable           = C.KVM_CLOCK_TSC_STABLE
	irqchipDataSize          = 512 // the union in struct kvm_irqchip (checked in layout_test.go)
	vcpuEventValidNMIPending = C.KVM_VCPUEVENT_VALID_NMI_PENDING
	vcpuEventValidSIPIVector = C.KVM_VCPUEVENT_VALID_SIPI_VECTOR
	statsTypeMask            = C.KVM_STATS_TYPE_MASK
	statsTypeCumulative      = C.KVM_STATS_TYPE_CUMULATIVE
	statsTypeInstant         = C.KVM_STATS_TYPE_INSTANT
	statsTypePeak            = C.KVM_STATS_TYPE_PEAK
)

// IRQ chip numbers for irqchip routes.
const (
	IRQChipPICMaster = C.KVM_IRQCHIP_PIC_MASTER
	IRQChipPICSlave  = C.KVM_IRQCHIP_PIC_SLAVE
	IRQChipIOAPIC    = C.KVM_IRQCHIP_IOAPIC
)

// MP states (KVM_MP_STATE_*).
const (
	MPStateRunnable      = C.KVM_MP_STATE_RUNNABLE
	MPStateUninitialized = C.KVM_MP_STATE_UNINITIALIZED
	MPStateInitReceived  = C.KVM_MP_STATE_INIT_RECEIVED
	MPStateHalted        = C.KVM_MP_STATE_HALTED
	MPStateSIPIReceived  = C.KVM_MP_STATE_SIPI_RECEIVED
)

// Sizes of x86 state.
const (
	LAPICRegsSize = C.KVM_APIC_REG_SIZE
	NrInterrupts  = C.KVM_NR_INTERRUPTS
)
