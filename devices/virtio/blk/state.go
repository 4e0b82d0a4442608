package blk

import (
	"context"
	"fmt"

	"github.com/viovmm/vio/state"
)

// State is virtio-blk's own state (the queues are the transport's).
type State struct {
	// WritebackCache is the writeback field (VIRTIO_BLK_F_CONFIG_WCE).
	WritebackCache bool
	// Capacity is the disk's size in sectors when saved; a restore
	// refuses a disk of another size.
	Capacity uint64
}

// StateVersion is the version of State this package writes.
const StateVersion = 1

var (
	_ state.Snapshottable = (*Device)(nil)
	_ state.Pausable      = (*Device)(nil)
)

// Pause implements state.Pausable: each queue stops taking requests,
// waits for those on the back-end and returns them to the used ring.
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

// SaveState returns the device's state.
func (d *Device) SaveState() State {
	return State{WritebackCache: d.wce.Load(), Capacity: d.capacity.Load()}
}

// RestoreState restores the device's state. The disk must be the one the
// snapshot was taken with (at least, of its size).
func (d *Device) RestoreState(s State) error {
	if c := d.capacity.Load(); s.Capacity != c {
		return fmt.Errorf("%w: the disk has %d sectors, the snapshot's had %d: attach the disk the snapshot was taken with", state.ErrMismatch, c, s.Capacity)
	}
	d.wce.Store(s.WritebackCache)
	return nil
}

// StateKind implements state.Snapshottable.
func (*Device) StateKind() string { return "virtio-blk" }

// StateSample is a State for the codec's warm-up (state.Sampler).
func (*Device) StateSample() any { return State{} }

// StateVersion implements state.Snapshottable.
func (*Device) StateVersion() uint32 { return StateVersion }

// MarshalState implements state.Snapshottable.
func (d *Device) MarshalState() ([]byte, error) { return state.Marshal(d.SaveState()) }

// UnmarshalState implements state.Snapshottable.
func (d *Device) UnmarshalState(version uint32, data []byte) error {
	return state.Load(version, d.StateVersion(), data, d.RestoreState)
}
