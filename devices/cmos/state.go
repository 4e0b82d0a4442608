package cmos

import (
	"fmt"
	"time"

	"github.com/viovmm/vio/state"
)

// State is the CMOS's index register, NMI mask, RAM and guest clock.
type State struct {
	Index  uint8
	NMIOff bool
	RAM    []byte // 128 bytes
	// Offset is guest time minus host time: the guest's clock keeps
	// running from where it was relative to the host's wall clock.
	Offset time.Duration
}

var _ state.Snapshottable = (*CMOS)(nil)

// SaveState returns the CMOS's state.
func (c *CMOS) SaveState() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return State{Index: c.index, NMIOff: c.nmiOff, RAM: append([]byte(nil), c.ram[:]...), Offset: c.offset}
}

// RestoreState restores the CMOS.
func (c *CMOS) RestoreState(s State) error {
	if len(s.RAM) != ramSize || s.Index >= ramSize {
		return fmt.Errorf("%w: CMOS RAM of %d bytes, index %#x", state.ErrInvalid, len(s.RAM), s.Index)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.index, c.nmiOff, c.offset = s.Index, s.NMIOff, s.Offset
	copy(c.ram[:], s.RAM)
	return nil
}

// StateKind implements state.Snapshottable.
func (*CMOS) StateKind() string { return "cmos" }

// StateSample is a State for the codec's warm-up (state.Sampler).
func (*CMOS) StateSample() any { return State{} }

// StateVersion implements state.Snapshottable.
func (*CMOS) StateVersion() uint32 { return 1 }

// MarshalState implements state.Snapshottable.
func (c *CMOS) MarshalState() ([]byte, error) { return state.Marshal(c.SaveState()) }

// UnmarshalState implements state.Snapshottable.
func (c *CMOS) UnmarshalState(version uint32, data []byte) error {
	return state.Load(version, c.StateVersion(), data, c.RestoreState)
}
