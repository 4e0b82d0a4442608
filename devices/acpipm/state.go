package acpipm

import (
	"fmt"

	"github.com/viovmm/vio/state"
)

// State is the PM registers' state (version 2). The SCI's level is not
// saved: it follows from the registers, and RestoreState drives it.
type State struct {
	PM1Status  uint16
	PM1Enable  uint16
	PM1Control uint16 // BM_RLD and SLP_TYP; SCI_EN is implied
	GPE0Status uint8
	GPE0Enable uint8
}

var _ state.Snapshottable = (*Device)(nil)

// SaveState returns the registers.
func (d *Device) SaveState() State {
	d.mu.Lock()
	defer d.mu.Unlock()
	return State{PM1Status: d.pm1Status, PM1Enable: d.pm1Enable, PM1Control: d.pm1Control,
		GPE0Status: d.gpeStatus, GPE0Enable: d.gpeEnable}
}

// RestoreState restores the registers and drives the SCI to match them:
// a level the guest has not acknowledged yet is raised again in the new
// VM, whose line starts low.
func (d *Device) RestoreState(s State) error {
	switch {
	case s.PM1Status&^PM1StatusBits != 0:
		return fmt.Errorf("%w: PM1_STS %#x has undefined bits", state.ErrInvalid, s.PM1Status)
	case s.PM1Enable&^PM1EnableBits != 0:
		return fmt.Errorf("%w: PM1_EN %#x has undefined bits", state.ErrInvalid, s.PM1Enable)
	case s.PM1Control&^pm1ControlKept != 0:
		return fmt.Errorf("%w: PM1_CNT %#x has bits that do not persist", state.ErrInvalid, s.PM1Control)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.pm1Status, d.pm1Enable, d.pm1Control = s.PM1Status, s.PM1Enable, s.PM1Control
	d.gpeStatus, d.gpeEnable = s.GPE0Status, s.GPE0Enable
	// Force the call: the line's level in this VM is unknown.
	d.level = !(d.pm1Status&d.pm1Enable&sciEvents != 0 || d.gpeStatus&d.gpeEnable != 0)
	d.update()
	return nil
}

// StateKind implements state.Snapshottable.
func (*Device) StateKind() string { return "acpipm" }

// StateSample is a State for the codec's warm-up (state.Sampler).
func (*Device) StateSample() any { return State{} }

// StateVersion implements state.Snapshottable. Version 1 was the
// register block of a hardware-reduced platform.
func (*Device) StateVersion() uint32 { return 2 }

// MarshalState implements state.Snapshottable.
func (d *Device) MarshalState() ([]byte, error) { return state.Marshal(d.SaveState()) }

// ErrHardwareReduced is what restoring a version 1 state returns.
var ErrHardwareReduced = fmt.Errorf("%w: the snapshot is of a guest booted on vio's former hardware-reduced ACPI platform, whose tables name power-management registers and a hot-plug interrupt this vio no longer has; boot the guest afresh with this vio", state.ErrMismatch)

// UnmarshalState implements state.Snapshottable. A version 1 section
// comes from a vio whose ACPI platform was hardware-reduced: the guest in
// that snapshot drives sleep control/status registers at ports this
// device now uses for PM1, and waits for the power button and hot plug on
// a GED interrupt that no longer exists. No mapping of the old registers
// makes that guest work, so it is refused.
func (d *Device) UnmarshalState(version uint32, data []byte) error {
	if version == 1 {
		return ErrHardwareReduced
	}
	return state.Load(version, d.StateVersion(), data, d.RestoreState)
}
