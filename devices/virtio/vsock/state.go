package vsock

import (
	"context"
	"fmt"

	"github.com/viovmm/vio/state"
)

// State is the device's own state (the queues are the transport's). A
// stream's state lives partly in host sockets, which a snapshot cannot
// carry, so a device with open connections refuses to be saved: the
// connections are the user's to close first. What is saved is the guest's
// context id, which a restore checks against the configuration.
type State struct {
	CID uint64
}

// StateVersion is the version of State this package writes.
const StateVersion = 1

var (
	_ state.Snapshottable = (*Device)(nil)
	_ state.Pausable      = (*Device)(nil)
)

// Pause implements state.Pausable: the device goroutine finishes the
// packet at hand and parks. Connections' goroutines go on reading and
// writing host sockets, but nothing reaches the guest until Resume.
func (d *Device) Pause(ctx context.Context) error {
	d.mu.Lock()
	run := d.run
	d.mu.Unlock()
	if run == nil {
		return nil
	}
	err := run.gate.Pause(ctx)
	run.paused.Store(err == nil)
	return err
}

// Resume implements state.Pausable.
func (d *Device) Resume() {
	d.mu.Lock()
	run := d.run
	d.mu.Unlock()
	if run != nil {
		run.paused.Store(false)
		run.gate.Resume()
	}
}

// SaveState returns the device's state; an active device must be paused
// and have no connections.
func (d *Device) SaveState() (State, error) {
	d.mu.Lock()
	run := d.run
	d.mu.Unlock()
	if run != nil {
		if !run.paused.Load() {
			return State{}, fmt.Errorf("%w: virtio-vsock is running; pause it before saving", state.ErrInFlight)
		}
		if n := run.nconns.Load(); n > 0 {
			return State{}, fmt.Errorf("%w: virtio-vsock has %d open connections, which a snapshot cannot carry: close them and save again", state.ErrInFlight, n)
		}
	}
	return State{CID: d.cfg.CID}, nil
}

// RestoreState checks a saved state against this device.
func (d *Device) RestoreState(s State) error {
	if s.CID != d.cfg.CID {
		return fmt.Errorf("%w: virtio-vsock guest cid %d, but this vsock has cid %d: configure cid=%d", state.ErrMismatch, s.CID, d.cfg.CID, s.CID)
	}
	return nil
}

// StateKind implements state.Snapshottable.
func (*Device) StateKind() string { return "virtio-vsock" }

// StateSample is a State for the codec's warm-up (state.Sampler).
func (*Device) StateSample() any { return State{} }

// StateVersion implements state.Snapshottable.
func (*Device) StateVersion() uint32 { return StateVersion }

// MarshalState implements state.Snapshottable.
func (d *Device) MarshalState() ([]byte, error) {
	s, err := d.SaveState()
	if err != nil {
		return nil, err
	}
	return state.Marshal(s)
}

// UnmarshalState implements state.Snapshottable.
func (d *Device) UnmarshalState(version uint32, data []byte) error {
	return state.Load(version, StateVersion, data, d.RestoreState)
}
