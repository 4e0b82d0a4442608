package vmm

import (
	"errors"
	"fmt"
)

// ErrNotPaused reports a Resume of a VM that Pause did not pause.
var ErrNotPaused = errors.New("the VM is not paused")

// Pause takes every vCPU out of the guest and freezes the guest's clock:
// kvmclock is saved here and put back by Resume, so the guest's monotonic
// time does not jump by the length of the pause (its wall clock then lags
// by that much, as after a suspend, until NTP or the agent corrects it).
// Device workers keep draining requests already queued; the guest cannot
// queue more. Pausing a paused VM does nothing.
func (v *VM) Pause() error {
	v.pauseMu.Lock()
	defer v.pauseMu.Unlock()
	if v.clock != nil {
		return nil
	}
	v.group.Pause()
	c, err := v.kvm.GetClock()
	if err != nil {
		v.group.Resume()
		return fmt.Errorf("saving the guest clock: %w", err)
	}
	v.clock = &c
	return nil
}

// Resume restores the clock Pause saved and lets the vCPUs run again.
func (v *VM) Resume() error {
	v.pauseMu.Lock()
	defer v.pauseMu.Unlock()
	if v.clock == nil {
		return ErrNotPaused
	}
	// Only the clock value is restored: with KVM_CLOCK_REALTIME set KVM
	// would advance it by the wall-clock time the pause took, which is
	// the jump this is meant to avoid.
	c := *v.clock
	c.Flags, c.Realtime, c.TSC = 0, 0, 0
	if err := v.kvm.SetClock(c); err != nil {
		return fmt.Errorf("restoring the guest clock: %w", err)
	}
	v.clock = nil
	v.group.Resume()
	return nil
}
