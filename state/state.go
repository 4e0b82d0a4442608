// Package state is how vio saves and restores device state, the device
// side of snapshot/restore and live migration: the two small contracts a
// stateful component implements (Snapshottable, Pausable) and the
// versioned container that holds one section per component (Snapshot,
// Encode, Decode). docs/state-format.md describes the format.
//
// Each stateful component keeps its state in its own exported, plain
// State struct with SaveState() (State, error) and RestoreState(State)
// error; Snapshottable adapts that to a section of the container. A state
// file is hostile input: Decode bounds every size, and every RestoreState
// validates its State as strictly as the guest-facing path validates what
// a driver programs (a queue address outside RAM, a queue size that is no
// power of two, an MSI-X vector out of range are refused with an error,
// never a panic).
//
// The order of a save: stop the vCPUs, Pause every Pausable device (so no
// request is in flight and none is lost or applied twice), save guest
// memory and every component. A restore builds the same machine from the
// same configuration, restores guest memory first, then each component,
// and resumes the vCPUs.
package state

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
)

// Snapshottable is a component whose state goes into one section of a
// snapshot.
//
// StateKind names what the section holds ("virtio-blk", "uart16550"); a
// section of another kind is refused at restore. StateVersion is the
// version of the component's State this vio writes; it changes whenever
// the State's meaning or fields change. MarshalState returns the State as
// JSON. UnmarshalState restores from a section of the given version (at
// most StateVersion: Snapshot.Restore refuses newer ones); it must treat
// data as hostile and leave the component unchanged when it returns an
// error, wherever it can (at least: never half-applied in a way that
// panics later).
type Snapshottable interface {
	StateKind() string
	StateVersion() uint32
	MarshalState() ([]byte, error)
	UnmarshalState(version uint32, data []byte) error
}

// Pausable is a device that can be brought to a point where nothing is in
// flight.
//
// Pause stops taking new work (requests the driver makes available while
// paused stay in the ring) and returns once every request already taken
// has completed and its used-ring entry is written; a chain the device
// holds without having started on it (a receive buffer waiting for data)
// is handed back to the ring or completed. After Pause returns nil, no
// goroutine of the device touches guest memory or raises an interrupt
// until Resume, and its queues can be saved. If ctx ends first, Pause
// resumes the device and returns ctx's error. Pause on a paused or
// inactive device returns nil at once.
//
// Resume lets the device take work again, including what was made
// available while it was paused. Resume on a device that is not paused
// does nothing. A device reset ends a pause too.
type Pausable interface {
	Pause(ctx context.Context) error
	Resume()
}

// Marshal is the JSON encoding every section uses.
func Marshal(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("state: encode: %w", err)
	}
	return b, nil
}

// Unmarshal decodes a section strictly: one JSON value, no field the
// State does not have (a section from a build with other fields must carry
// another version).
func Unmarshal(data []byte, v any) error {
	if len(data) > MaxSectionSize {
		return fmt.Errorf("%w: section of %d bytes, the limit is %d", ErrCorrupt, len(data), MaxSectionSize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: data after the section's value", ErrCorrupt)
	}
	return nil
}

// Errors. Restore paths wrap ErrInvalid for a State that is well-formed
// but impossible (an address outside RAM, a size out of range).
var (
	ErrCorrupt  = errors.New("state: corrupt snapshot")
	ErrNewer    = errors.New("state: snapshot from a newer vio")
	ErrMismatch = errors.New("state: snapshot does not match this machine")
	ErrInvalid  = errors.New("state: invalid device state")
	ErrInFlight = errors.New("state: requests in flight")
)

// Save is the body of a MarshalState whose SaveState can fail:
// state.Save(d.SaveState()).
func Save[S any](s S, err error) ([]byte, error) {
	if err != nil {
		return nil, err
	}
	return Marshal(s)
}

// Load is the body of an UnmarshalState: a section of version (at most
// latest, the component's StateVersion) decoded strictly into a fresh S and
// handed to restore. Snapshot.Restore checks the version before a component
// sees the data; Load checks it again for callers that restore a component
// directly.
func Load[S any](version, latest uint32, data []byte, restore func(S) error) error {
	switch {
	case version == 0:
		return fmt.Errorf("%w: state version 0", ErrCorrupt)
	case version > latest:
		return fmt.Errorf("%w: state version %d, this vio reads up to %d: upgrade vio", ErrNewer, version, latest)
	}
	var s S
	if err := Unmarshal(data, &s); err != nil {
		return err
	}
	return restore(s)
}
