package vmm

import (
	"fmt"
	"time"
)

// powerButtoner is a Machine with an ACPI power button (*VM is one).
type powerButtoner interface {
	PressPowerButton() error
}

// PowerButton presses the guest's power button: an ACPI-aware guest shuts
// down in good order and powers off, which ends the boot. It returns at
// once. The guest must be running: a paused guest cannot react.
func (c *Controller) PowerButton() error {
	c.op.Lock()
	defer c.op.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.needLocked("press the power button of", StateRunning); err != nil {
		return err
	}
	pb, ok := c.run.m.(powerButtoner)
	if !ok {
		return fmt.Errorf("%w: this machine has no power button", ErrNotImplemented)
	}
	return pb.PressPowerButton()
}

// StopGracefully presses the power button of a running guest and waits up
// to timeout for it to power off; a guest that does not is stopped like
// Stop, and so is a paused guest or one without a power button, at once.
// Closing now (a second signal) stops the guest at once too. It returns
// nil if the guest powered off by itself, otherwise an error saying why
// it had to be stopped.
func (c *Controller) StopGracefully(timeout time.Duration, why string, now <-chan struct{}) error {
	stopped := c.Stopped()
	if stopped == nil {
		return nil // never booted
	}
	if err := c.PowerButton(); err != nil {
		c.Stop(why)
		if e, _ := c.LastExit(); e.Reason == ExitPoweroff {
			return nil // it had powered off as the signal came
		}
		return fmt.Errorf("%s: stopped the guest at once: %w", why, err)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	var hard error
	select {
	case <-stopped:
	case <-now:
		hard = fmt.Errorf("%s, then again: stopped the guest at once", why)
	case <-t.C:
		hard = fmt.Errorf("%s: the guest did not power off within %v of the power button; stopped it", why, timeout)
	}
	if hard != nil {
		c.Stop(hard.Error())
	}
	if e, _ := c.LastExit(); e.Reason == ExitPoweroff {
		return nil // it made it after all
	}
	return hard
}

// PressPowerButton presses the fixed-feature power button: PWRBTN_STS is
// set, which raises the SCI once the guest has enabled the event (Linux's
// button driver does; it then reports KEY_POWER). It implements
// powerButtoner.
func (v *VM) PressPowerButton() error {
	if v.platform == nil || v.platform.pm == nil {
		return fmt.Errorf("%w: this machine has no power button", ErrNotImplemented)
	}
	v.platform.pm.PressPowerButton()
	return nil
}

var _ powerButtoner = (*VM)(nil)
