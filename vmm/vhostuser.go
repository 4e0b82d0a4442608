package vmm

import (
	"errors"
	"fmt"
	"time"

	"github.com/viovmm/vio/devices/virtio/vhostnet"
	"github.com/viovmm/vio/devices/virtio/vufront"
	"github.com/viovmm/vio/memory"
)

// Snapshots and migration of vhost-user devices (docs/vhost-user.md,
// docs/migration.md "vhost-user devices"). The rings' state is the
// back-end's: pausing a device stops its rings with GET_VRING_BASE and
// keeps where they stopped for the device's section. A VM restored from
// a snapshot, or built by a migration's destination, builds its
// vhost-user devices without connecting (Deferred) and takes their
// back-ends once the state is restored: the source may still hold them,
// and back-ends serve one front-end at a time. A migration's source lets
// its back-ends go once its devices are paused for the stop-and-copy, as
// it does its disks' images, and takes them back if the migration fails.
// While pre-copy runs, each back-end marks the pages it writes in a
// dirty log of the device's, which every collection of dirty pages takes.

// The kernel's vhost-net NICs (vhostnet.go) are handled the same way:
// their rings are the kernel's, stopped when the device pauses, started
// again once the TAP is attached (Take), and the kernel keeps the same
// dirty log format.

// ringsElsewhere is a device whose rings are served outside vio: a
// vhost-user device (*vufront.Device) or a vhost-net NIC
// (*vhostnet.Device).
type ringsElsewhere interface {
	StateKind() string
	// CanLog says why the rings' server cannot log the guest memory it
	// writes; StartLog, TakeLog and StopLog run that log.
	CanLog() error
	StartLog(end uint64) error
	TakeLog(gpa, pages uint64, dst []uint64) error
	StopLog()
	// Release lets the host resource go for a migration's destination
	// (the device paused); Take takes it (back) and starts the rings.
	Release() error
	Take() error
}

var (
	_ ringsElsewhere = (*vufront.Device)(nil)
	_ ringsElsewhere = (*vhostnet.Device)(nil)
)

// vhostUserDevice is one device of the VM whose rings are served
// elsewhere.
type vhostUserDevice struct {
	name string
	dev  ringsElsewhere
}

// kind names the device in messages.
func (d vhostUserDevice) kind() string {
	if _, ok := d.dev.(*vhostnet.Device); ok {
		return "vhost-net NIC"
	}
	return "vhost-user device"
}

// vhostUserDevices lists the VM's vhost-user devices and vhost-net NICs.
func (v *VM) vhostUserDevices() []vhostUserDevice {
	var out []vhostUserDevice
	for _, d := range v.pciDevices {
		if vu, ok := d.dev.(ringsElsewhere); ok {
			out = append(out, vhostUserDevice{d.name, vu})
		}
	}
	return out
}

// checkVhostUserLog refuses a pre-copy migration of a VM with a
// vhost-user device whose back-end cannot log the pages it writes.
func (v *VM) checkVhostUserLog() error {
	for _, d := range v.vhostUserDevices() {
		if err := d.dev.CanLog(); err != nil {
			return snapErr(ErrNotSaveable, "cannot migrate by copying RAM: %s %s (%s) cannot report the guest memory its back-end writes: %v, which pre-copy needs; migrate it locally (local, with shared memory, to a vio on this host), or use a back-end that offers them (vio serve-disk, qemu-storage-daemon, a kernel with VHOST_F_LOG_ALL)", d.kind(), d.name, d.dev.StateKind(), err)
		}
	}
	return nil
}

// releaseVhostUser lets every vhost-user device's back-end go, for a
// migration's destination to take. The devices are paused. On error the
// ones released are taken back.
func (v *VM) releaseVhostUser() error {
	devs := v.vhostUserDevices()
	for i, d := range devs {
		if err := d.dev.Release(); err != nil {
			for _, r := range devs[:i] {
				if terr := r.dev.Take(); terr != nil {
					v.log.Warn("taking a vhost-user back-end back", "device", r.name, "err", terr)
				}
			}
			return fmt.Errorf("cannot release %s %s for the destination: %w", d.kind(), d.name, err)
		}
	}
	if len(devs) > 0 {
		v.log.Info("vhost-user back-ends released for the migration's destination", "devices", len(devs))
	}
	return nil
}

// takeVhostUser connects every vhost-user device that has no back-end
// (built Deferred, or released) and, unless paused, starts its rings. It
// tries them all; the error names the first that failed.
func (v *VM) takeVhostUser() error {
	// Devices plugged from now on connect at once.
	v.vhostDeferred = false
	start := time.Now()
	devs := v.vhostUserDevices()
	var first error
	for _, d := range devs {
		if err := d.dev.Take(); err != nil && first == nil {
			first = fmt.Errorf("%s %s: %w", d.kind(), d.name, err)
		}
	}
	if first == nil && len(devs) > 0 {
		v.log.Info("vhost-user back-ends taken", "devices", len(devs), "took", time.Since(start))
	}
	return first
}

// ramEnd is the first guest physical address past guest RAM: what a
// dirty log must cover.
func (v *VM) ramEnd() uint64 {
	var end uint64
	for _, r := range v.mem.Regions() {
		end = max(end, r.End())
	}
	return end
}

// startVhostUserLogs starts every vhost-user device's dirty log; on error
// the ones started are stopped.
func (v *VM) startVhostUserLogs() error {
	devs := v.vhostUserDevices()
	for i, d := range devs {
		if err := d.dev.StartLog(v.ramEnd()); err != nil {
			for _, s := range devs[:i] {
				s.dev.StopLog()
			}
			return fmt.Errorf("%s %s: %w", d.kind(), d.name, err)
		}
	}
	return nil
}

// takeVhostUserLogs ORs into bitmap, region i's dirty bitmap, the pages
// of the region the vhost-user back-ends wrote since the last call.
func (v *VM) takeVhostUserLogs(i int, bitmap []uint64) error {
	regs := v.mem.Regions()
	if i < 0 || i >= len(regs) {
		return fmt.Errorf("no RAM region %d", i)
	}
	r := regs[i]
	pages := r.Size() / memory.DirtyPageSize
	var errs []error
	for _, d := range v.vhostUserDevices() {
		if err := d.dev.TakeLog(r.GPA, pages, bitmap); err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", d.kind(), d.name, err))
		}
	}
	return errors.Join(errs...)
}

func (v *VM) stopVhostUserLogs() {
	for _, d := range v.vhostUserDevices() {
		d.dev.StopLog()
	}
}
