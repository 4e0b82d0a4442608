package vmm

import (
	"errors"
	"fmt"
	"time"
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
	v.clock, v.pausedAt = &c, time.Now()
	return nil
}

// Resume restores the clock Pause saved and lets the vCPUs run again.
func (v *VM) Resume() error {
	v.pauseMu.Lock()
	defer v.pauseMu.Unlock()
	if v.clock == nil {
		return ErrNotPaused
	}
	if err := v.unholdLocked(); err != nil {
		return err
	}
	// Only the clock value is restored: with KVM_CLOCK_REALTIME set KVM
	// would advance it by the wall-clock time the pause took, which is
	// the jump this is meant to avoid.
	c := *v.clock
	c.Flags, c.Realtime, c.TSC = 0, 0, 0
	if v.restored {
		// A VM restored from a snapshot is not the one that paused: its
		// clock moves on by the time since that pause (the snapshot's
		// age included), so that the guest's wall clock is right again,
		// as Cloud Hypervisor does. Measured here, in userspace, rather
		// than with KVM_CLOCK_REALTIME, which only hosts with a stable
		// TSC clocksource offer.
		if d := time.Since(v.pausedAt); d > 0 {
			c.Clock += uint64(d.Nanoseconds())
		}
	}
	if err := v.kvm.SetClock(c); err != nil {
		return fmt.Errorf("restoring the guest clock: %w", err)
	}
	if v.restored {
		// Tell the guest it was stopped, so that its soft-lockup
		// watchdog does not blame the clock's jump on a hung CPU.
		// EINVAL means a vCPU never enabled kvmclock: nothing to tell.
		for _, cpu := range v.cpus {
			_ = cpu.KVMClockCtrl()
		}
		v.restored = false
	}
	v.clock = nil
	v.group.Resume()
	return nil
}
