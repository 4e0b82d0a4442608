package balloon

import (
	"context"

	"github.com/viovmm/vio/state"
)

// State is virtio-balloon's own state: the host's target and the pages
// the driver says it holds (the queues are the transport's). The pages
// themselves need no saving: a released page reads as zeros, which is
// what the snapshot holds for it.
type State struct {
	NumPages uint32
	Actual   uint32
}

// StateVersion is the version of State this package writes.
const StateVersion = 1

var (
	_ state.Snapshottable = (*Device)(nil)
	_ state.Pausable      = (*Device)(nil)
)

// Pause implements state.Pausable. Requests are served whole on the
// device's goroutine, so nothing is in flight between them; the
// statistics buffer the driver lent is handed back, which the driver
// takes as a request for fresh statistics and answers after the resume.
func (d *Device) Pause(ctx context.Context) error {
	d.mu.Lock()
	run := d.run
	d.mu.Unlock()
	if run == nil {
		return nil
	}
	return run.gate.Pause(ctx)
}

// Resume implements state.Pausable.
func (d *Device) Resume() {
	d.mu.Lock()
	run := d.run
	d.mu.Unlock()
	if run != nil {
		run.gate.Resume()
	}
}

// StateKind implements state.Snapshottable.
func (*Device) StateKind() string { return "virtio-balloon" }

// StateSample is a State for the codec's warm-up (state.Sampler).
func (*Device) StateSample() any { return State{} }

// StateVersion implements state.Snapshottable.
func (*Device) StateVersion() uint32 { return StateVersion }

// MarshalState implements state.Snapshottable.
func (d *Device) MarshalState() ([]byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return state.Marshal(State{NumPages: d.numPages, Actual: d.actual})
}

// UnmarshalState implements state.Snapshottable.
func (d *Device) UnmarshalState(version uint32, data []byte) error {
	return state.Load(version, StateVersion, data, func(s State) error {
		d.mu.Lock()
		d.numPages, d.actual = s.NumPages, s.Actual
		d.mu.Unlock()
		return nil
	})
}
