package console

import (
	"context"
	"fmt"
	"time"

	"github.com/viovmm/vio/state"
)

// State is the console's own state (the queues are the transport's).
// There is one port and no MULTIPORT, so no port is opened or closed by
// control messages: the port is open while the device runs.
type State struct {
	// Cols and Rows are the console size the driver sees (0 without
	// VIRTIO_CONSOLE_F_SIZE).
	Cols, Rows uint16
	// Pending is input read from the host side and not yet given to the
	// guest. Input the reading goroutine holds when the device is saved
	// is not in it: it is treated as input that arrives after the save.
	Pending []byte `json:",omitempty"`
}

// StateVersion is the version of State this package writes.
const StateVersion = 1

// MaxPending bounds State.Pending. A device holds at most a chunk (4 KiB)
// of input; restores may add one each, so allow a few.
const MaxPending = 64 << 10

var (
	_ state.Snapshottable = (*Device)(nil)
	_ state.Pausable      = (*Device)(nil)
)

// Pause implements state.Pausable: output taken from the guest is
// written and its used entry pushed; a receive chain held is handed back
// with Queue.Unget. Input keeps being read ahead by one chunk and waits
// in the device. The output is buffered (see New), so a blocking output
// writer holds neither the pause nor a reset.
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

// SaveState returns the device's state; an active device must be paused.
func (d *Device) SaveState() (State, error) {
	sz := d.size.Load()
	s := State{Cols: uint16(sz), Rows: uint16(sz >> 16)}
	d.mu.Lock()
	defer d.mu.Unlock()
	pending := d.pending
	if run := d.run; run != nil {
		if !run.paused.Load() {
			return State{}, fmt.Errorf("%w: virtio-console is running; pause it before saving", state.ErrInFlight)
		}
		pending = run.rxs.pending
	}
	s.Pending = append([]byte(nil), pending...)
	return s, nil
}

// RestoreState restores the device's state, after the transport's
// section. Restored input goes to the guest before any read since.
func (d *Device) RestoreState(s State) error {
	if d.features&FeatureSize == 0 && (s.Cols != 0 || s.Rows != 0) {
		return fmt.Errorf("%w: console size %dx%d, but this console has no size: configure one", state.ErrMismatch, s.Cols, s.Rows)
	}
	if d.features&FeatureSize != 0 && (s.Cols == 0 || s.Rows == 0) {
		return fmt.Errorf("%w: console size %dx%d", state.ErrInvalid, s.Cols, s.Rows)
	}
	if len(s.Pending) > MaxPending {
		return fmt.Errorf("%w: %d bytes of pending input, at most %d", state.ErrInvalid, len(s.Pending), MaxPending)
	}
	d.mu.Lock()
	run := d.run
	d.mu.Unlock()
	if run != nil && len(s.Pending) > 0 && !run.paused.Load() {
		// The receive goroutine owns the pending input: stop it to add.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := d.Pause(ctx)
		cancel()
		if err != nil {
			return fmt.Errorf("console: pause to restore pending input: %w", err)
		}
		defer d.Resume()
	}
	d.size.Store(uint32(s.Cols) | uint32(s.Rows)<<16)
	if len(s.Pending) == 0 {
		return nil
	}
	in := append([]byte(nil), s.Pending...)
	d.mu.Lock()
	defer d.mu.Unlock()
	if run != nil && d.run == run {
		run.rxs.pending = append(in, run.rxs.pending...)
	} else {
		d.pending = append(in, d.pending...)
	}
	return nil
}

// StateKind implements state.Snapshottable.
func (*Device) StateKind() string { return "virtio-console" }

// StateSample is a State for the codec's warm-up (state.Sampler).
func (*Device) StateSample() any { return State{} }

// StateVersion implements state.Snapshottable.
func (*Device) StateVersion() uint32 { return StateVersion }

// MarshalState implements state.Snapshottable.
func (d *Device) MarshalState() ([]byte, error) { return state.Save(d.SaveState()) }

// UnmarshalState implements state.Snapshottable.
func (d *Device) UnmarshalState(version uint32, data []byte) error {
	return state.Load(version, d.StateVersion(), data, d.RestoreState)
}
