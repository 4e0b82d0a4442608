package vmm

import (
	"errors"
	"fmt"
	"time"

	"github.com/viovmm/vio/state"
)

// A migration hands the VM's host resources over at the switchover: the
// disks' images (diskhandoff.go), the NICs' TAPs (nethandoff.go) and the
// vhost-user back-ends (vhostuser.go). This file releases and takes them
// together, and holds a source VM that a migration left without them.

// takeError is takeResources' error: what failed, and which kinds of
// resource could not be taken, for the sentences that report it.
type takeError struct {
	what string // "disks", "TAP devices" or "disks and TAP devices"
	err  error
}

func (e *takeError) Error() string { return e.err.Error() }
func (e *takeError) Unwrap() error { return e.err }

// resourcesOf names what a failed take could not open: "disks" for an
// error that does not say (a Machine other than *VM).
func resourcesOf(err error) string {
	var te *takeError
	if errors.As(err, &te) {
		return te.what
	}
	return "disks"
}

// takeResources takes back every host resource a migration released:
// the NICs' TAPs (first: until then the host's frames for the guest are
// dropped), the disks' images, and the vhost-user back-ends (vhostuser.go:
// their rings start once the devices resume, or here on a destination,
// whose devices were never paused). It tries them all.
func (v *VM) takeResources() error {
	nerr := v.takeNICs()
	derr := v.takeDisks()
	if verr := v.takeVhostUser(); verr != nil {
		if nerr == nil && derr == nil {
			return &takeError{"vhost-user back-ends", verr}
		}
		derr = errors.Join(derr, verr)
	}
	switch {
	case nerr == nil && derr == nil:
		return nil
	case nerr == nil:
		return &takeError{"disks", derr}
	case derr == nil:
		return &takeError{"TAP devices", nerr}
	}
	return &takeError{"disks and TAP devices", fmt.Errorf("%w; %w", derr, nerr)}
}

// releaseResources hands the host resources a migration's destination
// opens again over: the disks' images (releaseDisks) and then the NICs'
// TAPs (releaseNICs: last, since the host's frames for the guest are
// dropped from then on). Call it with the vCPUs and the devices paused.
// On error everything is taken back (or stays released if it cannot be,
// as the error then says too).
func (v *VM) releaseResources() error {
	if err := v.releaseDisks(); err != nil {
		return err
	}
	if err := v.releaseNICs(); err != nil {
		if terr := v.takeResources(); terr != nil {
			return fmt.Errorf("%w; and %w", err, terr)
		}
		return err
	}
	if err := v.releaseVhostUser(); err != nil {
		if terr := v.takeResources(); terr != nil {
			return fmt.Errorf("%w; and %w", err, terr)
		}
		return err
	}
	return nil
}

// TakeResources takes the host resources of a VM that NewIncoming built, once
// its state is restored and before it resumes: it opens the disks' images
// and attaches the NICs' TAPs, which the migration's source has released
// by then. Until it returns, requests and frames of the restored devices
// wait. Devices plugged later open theirs at once.
func (v *VM) TakeResources() error {
	start := time.Now()
	if err := v.takeResources(); err != nil {
		return err
	}
	v.disksInactive = false
	v.log.Info("disks and TAP devices taken from the migration's source", "disks", len(v.handoffs()), "nics", len(v.nicHandoffs()), "took", time.Since(start))
	return nil
}

// holdForResume records that a migration left the VM paused with its
// devices paused and its disks and TAPs released (its outcome unknown, or
// they could not be taken back): Resume takes them and resumes the
// devices first.
func (v *VM) holdForResume(devices []state.Pausable) {
	v.pauseMu.Lock()
	defer v.pauseMu.Unlock()
	v.held = &devices
}

// unholdLocked takes the disks and TAPs back and resumes the devices of a
// VM a migration left held; v.pauseMu is held. If one cannot be opened
// the VM stays as it is.
func (v *VM) unholdLocked() error {
	if v.held == nil {
		return nil
	}
	if err := v.takeResources(); err != nil {
		return fmt.Errorf("cannot resume: the %s a migration released could not be opened again (%w), so the VM stays paused; check that it does not run at the migration's destination", resourcesOf(err), err)
	}
	for _, p := range *v.held {
		p.Resume()
	}
	v.held = nil
	return nil
}
