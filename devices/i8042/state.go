package i8042

import (
	"fmt"

	"github.com/viovmm/vio/state"
)

// State is the controller's and the keyboard's state.
type State struct {
	CommandByte    uint8
	OutputPort     uint8
	LastWasCommand bool
	Pending        uint8 // controller command awaiting its data byte
	KeyboardArg    uint8 // keyboard command awaiting its argument
	ScanSet        uint8
	Output         []OutputByte // bytes waiting at port 0x60, oldest first
}

// OutputByte is one byte of the output queue.
type OutputByte struct {
	Byte uint8
	Aux  bool
}

var _ state.Snapshottable = (*Controller)(nil)

// SaveState returns the controller's state.
func (c *Controller) SaveState() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := State{CommandByte: c.ctr, OutputPort: c.outPort, LastWasCommand: c.lastCmd, Pending: c.pending,
		KeyboardArg: c.kbdArg, ScanSet: c.scanSet}
	for _, o := range c.queue {
		s.Output = append(s.Output, OutputByte{o.b, o.aux})
	}
	return s
}

// RestoreState restores the controller and drives IRQ 1 to match.
func (c *Controller) RestoreState(s State) error {
	switch {
	case len(s.Output) > maxQueue:
		return fmt.Errorf("%w: i8042 output queue of %d bytes, at most %d", state.ErrInvalid, len(s.Output), maxQueue)
	case s.ScanSet < 1 || s.ScanSet > 3:
		return fmt.Errorf("%w: scan code set %d", state.ErrInvalid, s.ScanSet)
	}
	switch s.Pending {
	case 0, CmdWriteCTR, CmdWriteOutPort, CmdWriteKbdOut, CmdWriteAuxOut, CmdWriteAux:
	default:
		return fmt.Errorf("%w: pending controller command %#x", state.ErrInvalid, s.Pending)
	}
	switch s.KeyboardArg {
	case 0, 0xed, 0xf0, 0xf3:
	default:
		return fmt.Errorf("%w: pending keyboard command %#x", state.ErrInvalid, s.KeyboardArg)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ctr, c.outPort, c.lastCmd, c.pending, c.kbdArg, c.scanSet = s.CommandByte, s.OutputPort, s.LastWasCommand, s.Pending, s.KeyboardArg, s.ScanSet
	c.queue = c.queue[:0]
	for _, o := range s.Output {
		c.queue = append(c.queue, outByte{o.Byte, o.Aux})
	}
	if c.level && c.irq != nil {
		_ = c.irq.SetLevel(false)
	}
	c.level = false
	c.update()
	return nil
}

// StateKind implements state.Snapshottable.
func (*Controller) StateKind() string { return "i8042" }

// StateSample is a State for the codec's warm-up (state.Sampler).
func (*Controller) StateSample() any { return State{} }

// StateVersion implements state.Snapshottable.
func (*Controller) StateVersion() uint32 { return 1 }

// MarshalState implements state.Snapshottable.
func (c *Controller) MarshalState() ([]byte, error) { return state.Marshal(c.SaveState()) }

// UnmarshalState implements state.Snapshottable.
func (c *Controller) UnmarshalState(version uint32, data []byte) error {
	return state.Load(version, c.StateVersion(), data, c.RestoreState)
}
