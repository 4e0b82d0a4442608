package queuetest

import (
	"errors"
	"time"

	"github.com/viovmm/vio/irq"
)

// Interrupt is an irq.Trigger a test waits on instead of polling: give it
// to Queue.SetInterrupt (with no EVENT_IDX and interrupts enabled, the
// device signals after every batch it completes).
type Interrupt struct{ c chan struct{} }

var _ irq.Trigger = (*Interrupt)(nil)

// NewInterrupt returns an interrupt with nothing pending.
func NewInterrupt() *Interrupt { return &Interrupt{c: make(chan struct{}, 1)} }

// Trigger implements irq.Trigger; interrupts not yet waited for coalesce.
func (i *Interrupt) Trigger() error {
	select {
	case i.c <- struct{}{}:
	default:
	}
	return nil
}

// ErrStalled is returned by WaitFor when the device stopped interrupting
// before the condition held.
var ErrStalled = errors.New("queuetest: no interrupt brought the expected state")

// WaitFor returns once done reports true, checking it first and then at
// every interrupt; limit bounds a device that hangs (it is never a
// synchronization).
func (i *Interrupt) WaitFor(done func() bool, limit time.Duration) error {
	t := time.NewTimer(limit)
	defer t.Stop()
	for !done() {
		select {
		case <-i.c:
		case <-t.C:
			return ErrStalled
		}
	}
	return nil
}
