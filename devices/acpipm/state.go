package acpipm

import (
	"fmt"

	"github.com/viovmm/vio/state"
)

// State is the PM registers' state.
type State struct {
	SleepType  uint8 // SLP_TYP as last written
	WakeStatus bool
	// ButtonPressed: a power button press the guest has not read yet
	// (left out when false, so that older vio reads the usual state).
	ButtonPressed bool `json:",omitempty"`
}

var _ state.Snapshottable = (*Device)(nil)

// SaveState returns the registers.
func (d *Device) SaveState() State {
	d.mu.Lock()
	defer d.mu.Unlock()
	return State{SleepType: d.sleepType, WakeStatus: d.status&WakeStatus != 0, ButtonPressed: d.pressed}
}

// RestoreState restores the registers.
func (d *Device) RestoreState(s State) error {
	if s.SleepType > SleepTypeMask>>SleepTypeShift {
		return fmt.Errorf("%w: SLP_TYP %d", state.ErrInvalid, s.SleepType)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.sleepType, d.status, d.pressed = s.SleepType, 0, s.ButtonPressed
	if s.WakeStatus {
		d.status = WakeStatus
	}
	return nil
}

// StateKind implements state.Snapshottable.
func (*Device) StateKind() string { return "acpipm" }

// StateVersion implements state.Snapshottable.
func (*Device) StateVersion() uint32 { return 1 }

// MarshalState implements state.Snapshottable.
func (d *Device) MarshalState() ([]byte, error) { return state.Marshal(d.SaveState()) }

// UnmarshalState implements state.Snapshottable.
func (d *Device) UnmarshalState(version uint32, data []byte) error {
	return state.Load(version, d.StateVersion(), data, d.RestoreState)
}
