package vmm

import (
	"fmt"
	"time"

	"github.com/viovmm/vio/kvm"
	"github.com/viovmm/vio/state"
)

// The sections of what KVM holds in the kernel: each vCPU, the interrupt
// controllers, the PIT and the clock. Each decodes its section (a hostile
// file) and checks its sizes before anything reaches the kernel, which
// checks the values themselves.

// cpuState is section "cpuN", kind kvm-vcpu: kvm.VCPUState.
type cpuState struct {
	cpu  *kvm.VCPU
	msrs []uint32 // what to save: KVM_GET_MSR_INDEX_LIST
	log  *VM
}

var _ state.Snapshottable = (*cpuState)(nil)

func (*cpuState) StateKind() string    { return "kvm-vcpu" }
func (*cpuState) StateVersion() uint32 { return 1 }
func (*cpuState) StateSample() any     { return kvm.VCPUState{} }

func (c *cpuState) MarshalState() ([]byte, error) {
	s, skipped, err := c.cpu.SaveState(c.msrs)
	if err != nil {
		return nil, err
	}
	if len(skipped) > 0 {
		c.log.log.Debug("MSRs KVM lists but will not read for this vCPU", "vcpu", c.cpu.ID(), "msrs", fmt.Sprintf("%#x", skipped))
	}
	return state.Marshal(s)
}

// maxXSave bounds a saved XSAVE area (today's largest, with AMX, is about
// 11 KiB).
const maxXSave = 1 << 20

func decodeCPUState(data []byte) (*kvm.VCPUState, error) {
	var s kvm.VCPUState
	if err := state.Unmarshal(data, &s); err != nil {
		return nil, err
	}
	switch {
	case len(s.MSRs) > kvm.MaxSavedMSRs:
		return nil, fmt.Errorf("%w: %d MSRs, at most %d", state.ErrInvalid, len(s.MSRs), kvm.MaxSavedMSRs)
	case len(s.XSave) > maxXSave:
		return nil, fmt.Errorf("%w: XSAVE area of %d bytes, at most %d", state.ErrInvalid, len(s.XSave), maxXSave)
	case s.XSave == nil && s.FPU == nil:
		return nil, fmt.Errorf("%w: neither an XSAVE area nor FPU registers", state.ErrInvalid)
	case s.XCRs != nil && int(s.XCRs.NrXcrs) > len(s.XCRs.Xcrs):
		return nil, fmt.Errorf("%w: %d XCRs, at most %d", state.ErrInvalid, s.XCRs.NrXcrs, len(s.XCRs.Xcrs))
	case s.MPState > kvm.MPStateSIPIReceived+4: // the kernel's list ends at AP_RESET_HOLD (9)
		return nil, fmt.Errorf("%w: MP state %d", state.ErrInvalid, s.MPState)
	}
	return &s, nil
}

func (c *cpuState) UnmarshalState(_ uint32, data []byte) error {
	s, err := decodeCPUState(data)
	if err != nil {
		return err
	}
	refused, err := c.cpu.RestoreState(s)
	if err != nil {
		return err
	}
	if len(refused) > 0 {
		c.log.log.Warn("MSRs this host's KVM would not restore", "vcpu", c.cpu.ID(), "msrs", fmt.Sprintf("%#x", refused))
	}
	return nil
}

// irqchipState is section "irqchip", kind kvm-irqchip: the two PICs and
// the IOAPIC as the kernel's opaque state.
type irqchipState struct{ vm *kvm.VM }

// IRQChipState is the irqchip section's data.
type IRQChipState struct {
	PICMaster, PICSlave, IOAPIC []byte
}

var _ state.Snapshottable = (*irqchipState)(nil)

func (*irqchipState) StateKind() string    { return "kvm-irqchip" }
func (*irqchipState) StateVersion() uint32 { return 1 }
func (*irqchipState) StateSample() any     { return IRQChipState{} }

var irqchips = []uint32{kvm.IRQChipPICMaster, kvm.IRQChipPICSlave, kvm.IRQChipIOAPIC}

func (c *irqchipState) MarshalState() ([]byte, error) {
	var s IRQChipState
	for i, p := range []*[]byte{&s.PICMaster, &s.PICSlave, &s.IOAPIC} {
		b, err := c.vm.GetIRQChip(irqchips[i])
		if err != nil {
			return nil, err
		}
		*p = b
	}
	return state.Marshal(s)
}

func decodeIRQChipState(data []byte) (*IRQChipState, error) {
	var s IRQChipState
	if err := state.Unmarshal(data, &s); err != nil {
		return nil, err
	}
	for _, b := range [][]byte{s.PICMaster, s.PICSlave, s.IOAPIC} {
		if len(b) != kvm.IRQChipDataSize {
			return nil, fmt.Errorf("%w: an interrupt controller's state is %d bytes, want %d", state.ErrInvalid, len(b), kvm.IRQChipDataSize)
		}
	}
	return &s, nil
}

func (c *irqchipState) UnmarshalState(_ uint32, data []byte) error {
	s, err := decodeIRQChipState(data)
	if err != nil {
		return err
	}
	for i, b := range [][]byte{s.PICMaster, s.PICSlave, s.IOAPIC} {
		if err := c.vm.SetIRQChip(irqchips[i], b); err != nil {
			return err
		}
	}
	return nil
}

// pitState is section "pit", kind kvm-pit: kvm.PITState2.
type pitState struct{ vm *kvm.VM }

var _ state.Snapshottable = (*pitState)(nil)

func (*pitState) StateKind() string    { return "kvm-pit" }
func (*pitState) StateVersion() uint32 { return 1 }
func (*pitState) StateSample() any     { return kvm.PITState2{} }

func (p *pitState) MarshalState() ([]byte, error) {
	s, err := p.vm.GetPIT2()
	if err != nil {
		return nil, err
	}
	return state.Marshal(s)
}

func (p *pitState) UnmarshalState(_ uint32, data []byte) error {
	var s kvm.PITState2
	if err := state.Unmarshal(data, &s); err != nil {
		return err
	}
	return p.vm.SetPIT2(s)
}

// clockState is section "clock", kind kvm-clock: kvmclock as Pause froze
// it and the host's wall-clock time of that pause. A restored VM starts
// paused with this clock; its first Resume advances it by the time since
// PausedAt (see VM.Resume).
type clockState struct{ v *VM }

// ClockState is the clock section's data.
type ClockState struct {
	Clock    uint64 // kvmclock, ns
	PausedAt int64  // host CLOCK_REALTIME at the pause, Unix ns
}

var _ state.Snapshottable = (*clockState)(nil)

func (*clockState) StateKind() string    { return "kvm-clock" }
func (*clockState) StateVersion() uint32 { return 1 }
func (*clockState) StateSample() any     { return ClockState{} }

// MarshalState is called by Snapshot with pauseMu held and the VM paused.
func (c *clockState) MarshalState() ([]byte, error) {
	if c.v.clock == nil {
		return nil, fmt.Errorf("the VM is not paused")
	}
	return state.Marshal(ClockState{Clock: c.v.clock.Clock, PausedAt: c.v.pausedAt.UnixNano()})
}

func (c *clockState) UnmarshalState(_ uint32, data []byte) error {
	var s ClockState
	if err := state.Unmarshal(data, &s); err != nil {
		return err
	}
	c.v.clock = &kvm.ClockData{Clock: s.Clock}
	c.v.pausedAt = time.Unix(0, s.PausedAt)
	c.v.restored = true
	return nil
}
