package kvm

import (
	"encoding/binary"
	"testing"
)

// ioctlSize extracts the argument size the kernel's _IOW/_IOR macros encoded
// into a request number.
func ioctlSize(req uintptr) int { return int(req>>16) & 0x3fff }

// TestLayouts cross-checks two independent outputs of the generator: the
// Go struct sizes godefs produced, and the sizes the C preprocessor baked
// into the ioctl numbers. A mismatch means a struct would be passed to the
// kernel with the wrong length.
func TestLayouts(t *testing.T) {
	for _, c := range []struct {
		name string
		req  uintptr
		v    any
	}{
		{"KVM_GET_REGS", ioctlGetRegs, Regs{}},
		{"KVM_SET_REGS", ioctlSetRegs, Regs{}},
		{"KVM_GET_SREGS", ioctlGetSregs, Sregs{}},
		{"KVM_SET_SREGS", ioctlSetSregs, Sregs{}},
		{"KVM_GET_FPU", ioctlGetFPU, FPU{}},
		{"KVM_SET_FPU", ioctlSetFPU, FPU{}},
		{"KVM_GET_LAPIC", ioctlGetLAPIC, LAPICState{}},
		{"KVM_SET_LAPIC", ioctlSetLAPIC, LAPICState{}},
		{"KVM_GET_MP_STATE", ioctlGetMPState, MPState{}},
		{"KVM_SET_MP_STATE", ioctlSetMPState, MPState{}},
		{"KVM_GET_CLOCK", ioctlGetClock, ClockData{}},
		{"KVM_SET_CLOCK", ioctlSetClock, ClockData{}},
		{"KVM_CREATE_PIT2", ioctlCreatePIT2, PITConfig{}},
		{"KVM_SET_USER_MEMORY_REGION", ioctlSetUserMemoryRegion, UserspaceMemoryRegion{}},
		{"KVM_IRQFD", ioctlIRQFD, irqfd{}},
		{"KVM_IOEVENTFD", ioctlIOEventFD, ioeventfd{}},
		{"KVM_IRQ_LINE", ioctlIRQLine, irqLevel{}},
		{"KVM_ENABLE_CAP", ioctlEnableCap, enableCap{}},
		{"KVM_SIGNAL_MSI", ioctlSignalMSI, msi{}},
		{"KVM_SET_GSI_ROUTING", ioctlSetGSIRouting, irqRoutingHead{}},
		{"KVM_SET_MSRS", ioctlSetMSRs, msrsHead{}},
		{"KVM_SET_CPUID2", ioctlSetCPUID2, cpuid2Head{}},
		{"KVM_GET_XCRS", ioctlGetXCRs, XCRs{}},
		{"KVM_SET_XCRS", ioctlSetXCRs, XCRs{}},
		{"KVM_GET_VCPU_EVENTS", ioctlGetVCPUEvents, VCPUEvents{}},
		{"KVM_SET_VCPU_EVENTS", ioctlSetVCPUEvents, VCPUEvents{}},
		{"KVM_GET_DEBUGREGS", ioctlGetDebugRegs, DebugRegs{}},
		{"KVM_SET_DEBUGREGS", ioctlSetDebugRegs, DebugRegs{}},
		{"KVM_GET_IRQCHIP", ioctlGetIRQChip, irqchipRaw{}},
		{"KVM_SET_IRQCHIP", ioctlSetIRQChip, irqchipRaw{}},
		{"KVM_GET_PIT2", ioctlGetPIT2, PITState2{}},
		{"KVM_SET_PIT2", ioctlSetPIT2, PITState2{}},
	} {
		if got, want := binary.Size(c.v), ioctlSize(c.req); got != want {
			t.Errorf("%s: Go struct %T is %d bytes, ioctl encodes %d", c.name, c.v, got, want)
		}
	}
	for _, c := range []struct {
		name string
		got  int
		want int
	}{
		{"kvm_run head", binary.Size(runHead{}), runHeadSize},
		{"kvm_msr_entry", binary.Size(MSREntry{}), sizeofMSREntry},
		{"kvm_cpuid_entry2", binary.Size(CPUIDEntry{}), sizeofCPUIDEntry},
		{"kvm_irq_routing_entry", binary.Size(irqRoutingEntry{}), sizeofIRQRoutingEntry},
		{"kvm_stats_desc", binary.Size(statsDesc{}), sizeofStatsDesc},
		{"kvm_stats_header", binary.Size(statsHeader{}), sizeofStatsHeader},
		{"kvm_sregs", binary.Size(Sregs{}), sizeofSregs},
		{"kvm_xsave", sizeofXSave, ioctlSize(ioctlGetXSave)},
		{"kvm_vcpu_events", binary.Size(VCPUEvents{}), sizeofVCPUEvents},
		{"kvm_pit_state2", binary.Size(PITState2{}), sizeofPITState2},
		{"kvm_irqchip", binary.Size(irqchipRaw{}), sizeofIRQChip},
		{"kvm_irqchip union", len(irqchipRaw{}.Chip), irqchipDataSize},
		{"routing entry union offset", binary.Size(irqRoutingEntry{}) - len(irqRoutingEntry{}.U), irqRoutingEntryUOffset},
	} {
		if c.got != c.want {
			t.Errorf("%s: %d bytes, want %d", c.name, c.got, c.want)
		}
	}
	// Every exit view must fit in kvm_run after the head.
	for name, n := range map[string]int{
		"io": binary.Size(runIO{}), "mmio": binary.Size(runMMIO{}), "fail_entry": binary.Size(runFailEntry{}),
		"internal": binary.Size(runInternal{}), "system_event": binary.Size(runSystemEvent{}),
	} {
		if runExitOffset+n > sizeofRun {
			t.Errorf("exit view %s (%d bytes) overruns kvm_run", name, n)
		}
	}
	if runImmediateExitOffset != 1 || runExitReasonOffset != 8 {
		t.Errorf("immediate_exit at %d, exit_reason at %d: flagsWord and head assume 1 and 8",
			runImmediateExitOffset, runExitReasonOffset)
	}
}
