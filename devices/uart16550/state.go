package uart16550

import (
	"fmt"

	"github.com/viovmm/vio/state"
)

// State is a 16550A's registers, receive FIFO and interrupt latch.
type State struct {
	IER, LCR, MCR, LSRErrors, MSR, SCR, DLL, DLM uint8
	FIFOEnabled                                  bool
	Trigger                                      int    // receive FIFO trigger level: 1, 4, 8 or 14
	RxFIFO                                       []byte // oldest first
	THRInterrupt                                 bool
}

var _ state.Snapshottable = (*UART)(nil)

// SaveState returns the UART's state.
func (u *UART) SaveState() State {
	u.mu.Lock()
	defer u.mu.Unlock()
	s := State{IER: u.ier, LCR: u.lcr, MCR: u.mcr, LSRErrors: u.lsrErr, MSR: u.msr, SCR: u.scr, DLL: u.dll, DLM: u.dlm,
		FIFOEnabled: u.fifoOn, Trigger: u.trigger, THRInterrupt: u.thrIRQ}
	for i := range u.rxLen {
		s.RxFIFO = append(s.RxFIFO, u.rx[(u.rxHead+i)%FIFOSize])
	}
	return s
}

// RestoreState restores a saved UART and drives its IRQ line to match.
func (u *UART) RestoreState(s State) error {
	capacity := 1
	if s.FIFOEnabled {
		capacity = FIFOSize
	}
	switch {
	case s.IER&^ierMask != 0, s.MCR&^mcrMask != 0, s.LSRErrors&^lsrErrors != 0:
		return fmt.Errorf("%w: uart register bits IER %#x MCR %#x LSR %#x", state.ErrInvalid, s.IER, s.MCR, s.LSRErrors)
	case s.Trigger != 1 && s.Trigger != 4 && s.Trigger != 8 && s.Trigger != 14:
		return fmt.Errorf("%w: uart FIFO trigger level %d", state.ErrInvalid, s.Trigger)
	case len(s.RxFIFO) > capacity:
		return fmt.Errorf("%w: uart receive FIFO holds %d bytes, at most %d", state.ErrInvalid, len(s.RxFIFO), capacity)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.ier, u.lcr, u.mcr, u.lsrErr, u.msr, u.scr, u.dll, u.dlm = s.IER, s.LCR, s.MCR, s.LSRErrors, s.MSR, s.SCR, s.DLL, s.DLM
	u.fifoOn, u.trigger, u.thrIRQ = s.FIFOEnabled, s.Trigger, s.THRInterrupt
	u.rxHead, u.rxLen = 0, copy(u.rx[:], s.RxFIFO)
	// Force the call: the line's level in the new VM is unknown.
	u.level = !(u.iir()&IIRNone == 0 && u.mcr&MCROUT2 != 0 && u.mcr&MCRLoop == 0)
	u.update()
	u.signalSpace()
	return nil
}

// StateKind implements state.Snapshottable.
func (*UART) StateKind() string { return "uart16550" }

// StateSample is a State for the codec's warm-up (state.Sampler).
func (*UART) StateSample() any { return State{} }

// StateVersion implements state.Snapshottable.
func (*UART) StateVersion() uint32 { return 1 }

// MarshalState implements state.Snapshottable.
func (u *UART) MarshalState() ([]byte, error) { return state.Marshal(u.SaveState()) }

// UnmarshalState implements state.Snapshottable.
func (u *UART) UnmarshalState(version uint32, data []byte) error {
	return state.Load(version, u.StateVersion(), data, u.RestoreState)
}
