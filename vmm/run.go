package vmm

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/kvm"
	"github.com/viovmm/vio/vcpu"
)

// ExitReason says why a guest stopped running.
type ExitReason int

const (
	ExitPoweroff ExitReason = iota + 1 // the guest powered off
	ExitReboot                         // the guest asked for a reset
	ExitPanic                          // the guest kernel panicked
	ExitError                          // a vCPU hit an exit vio cannot handle
	ExitStopped                        // the VMM was asked to stop
)

func (r ExitReason) String() string {
	switch r {
	case ExitPoweroff:
		return "poweroff"
	case ExitReboot:
		return "reboot"
	case ExitPanic:
		return "panic"
	case ExitError:
		return "error"
	case ExitStopped:
		return "stopped"
	}
	return fmt.Sprintf("ExitReason(%d)", int(r))
}

// Exit is how and why a run ended.
type Exit struct {
	Reason ExitReason
	Detail string
	// Fault marks a reboot no one asked for: a vCPU triple-faulted.
	Fault bool
}

func (v *VM) notePanic(msg string) {
	v.exit(Exit{Reason: ExitPanic, Detail: msg})
}

// exit records the first decisive guest event; later ones are dropped.
func (v *VM) exit(e Exit) {
	select {
	case v.events <- e:
	default:
	}
}

// handleEvent runs on a vCPU thread: it turns what the vCPU loop cannot
// resolve into a VM-level exit and parks the vCPU.
func (v *VM) handleEvent(ev vcpu.Event) vcpu.Action {
	switch ev.Kind {
	case vcpu.Shutdown:
		// A triple fault: what a PC does is reset. The registers go in
		// the detail: the guest could say nothing about it.
		v.exit(Exit{Reason: ExitReboot, Detail: ev.String(), Fault: true})
	case vcpu.System:
		v.exit(systemEventExit(ev))
	case vcpu.Halt:
		// With the in-kernel LAPIC, HLT never reaches us unless the
		// guest halted with interrupts off for good.
		v.exit(Exit{Reason: ExitError, Detail: fmt.Sprintf("vCPU %d halted with no way to wake up", ev.VCPU)})
	default:
		v.exit(Exit{Reason: ExitError, Detail: ev.String()})
	}
	return vcpu.Park
}

func systemEventExit(ev vcpu.Event) Exit {
	switch ev.System.Type {
	case kvm.SystemEventShutdown:
		return Exit{Reason: ExitPoweroff, Detail: "system event: shutdown"}
	case kvm.SystemEventReset:
		return Exit{Reason: ExitReboot, Detail: "system event: reset"}
	case kvm.SystemEventCrash:
		return Exit{Reason: ExitPanic, Detail: "system event: crash"}
	}
	return Exit{Reason: ExitError, Detail: ev.String()}
}

// Run starts the vCPUs and blocks until the guest powers off, resets,
// panics or fails, or ctx is cancelled; then it stops every vCPU. A VM runs
// once: a reboot is a new VM (see Boot and Controller).
func (v *VM) Run(ctx context.Context) (Exit, error) {
	if err := v.Start(); err != nil {
		return Exit{}, err
	}
	return v.Wait(ctx.Done(), func() string { return context.Cause(ctx).Error() }), nil
}

// Start starts the vCPUs and returns at once.
func (v *VM) Start() error {
	if err := v.group.Start(); err != nil {
		v.group.Stop()
		return err
	}
	return nil
}

// Wait blocks until the guest powers off, resets, panics or fails, or stop
// is closed (then the exit is ExitStopped with why() as its detail); either
// way every vCPU has stopped when it returns.
func (v *VM) Wait(stop <-chan struct{}, why func() string) Exit {
	var e Exit
	select {
	case e = <-v.events:
		if e.Reason == ExitReboot {
			// A panicking guest with panic=N reboots right after its
			// banner; the console may have been a few bytes behind.
			select {
			case p := <-v.events:
				if p.Reason == ExitPanic {
					e = p
				}
			default:
			}
		}
	case <-stop:
		e = Exit{Reason: ExitStopped, Detail: why()}
	}
	v.stopVCPUs()
	v.exited.Store(&e)
	v.log.Info("guest stopped", "reason", e.Reason, "detail", e.Detail)
	if v.opts.Stats != nil {
		enc := json.NewEncoder(v.opts.Stats)
		enc.SetIndent("", "  ")
		enc.Encode(v.Stats())
	}
	return e
}

// Boot builds and runs a VM from cfg until the guest powers off, panics,
// fails or ctx ends. A guest reboot builds the VM afresh when the config
// says on_reboot=restart, the way a reset re-runs firmware. It is the
// Controller without an API: the same lifecycle, driven by one caller.
func Boot(ctx context.Context, cfg *config.VM, stdio IO, opts Options) (Exit, error) {
	c := NewController(Builder(stdio, opts), opts.Log)
	if err := c.Create(cfg); err != nil {
		return Exit{}, err
	}
	if err := c.Boot(); err != nil {
		return Exit{}, err
	}
	select {
	case <-c.Stopped():
	case <-ctx.Done():
		c.Stop(context.Cause(ctx).Error())
	}
	e, err := c.LastExit()
	c.Delete()
	return e, err
}
