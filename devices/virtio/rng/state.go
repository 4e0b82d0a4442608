package rng

import (
	"context"

	"github.com/viovmm/vio/state"
)

// State is virtio-rng's own state: none (the queue is the transport's).
// The section exists so that a VMM saves every device alike and a
// restore checks the kind.
type State struct{}

// StateVersion is the version of State this package writes.
const StateVersion = 1

var (
	_ state.Snapshottable = (*Device)(nil)
	_ state.Pausable      = (*Device)(nil)
)

// Pause implements state.Pausable: the request being served completes,
// or, if the source is blocked, goes back to the ring untouched
// (Queue.Unget) — so a source that blocks cannot hold a pause.
func (d *Device) Pause(ctx context.Context) error {
	d.mu.Lock()
	gate := d.gate
	d.mu.Unlock()
	if gate == nil {
		return nil
	}
	return gate.Pause(ctx)
}

// Resume implements state.Pausable.
func (d *Device) Resume() {
	d.mu.Lock()
	gate := d.gate
	d.mu.Unlock()
	if gate != nil {
		gate.Resume()
	}
}

// StateKind implements state.Snapshottable.
func (*Device) StateKind() string { return "virtio-rng" }

// StateSample is a State for the codec's warm-up (state.Sampler).
func (*Device) StateSample() any { return State{} }

// StateVersion implements state.Snapshottable.
func (*Device) StateVersion() uint32 { return StateVersion }

// MarshalState implements state.Snapshottable.
func (*Device) MarshalState() ([]byte, error) { return state.Marshal(State{}) }

// UnmarshalState implements state.Snapshottable.
func (*Device) UnmarshalState(version uint32, data []byte) error {
	return state.Load(version, StateVersion, data, func(State) error { return nil })
}
