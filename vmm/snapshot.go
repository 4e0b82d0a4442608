package vmm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/viovmm/vio/state"
	"github.com/viovmm/vio/virtio"
)

// A snapshot is a directory with three files (docs/snapshot.md):
const (
	SnapshotConfig = "config.json" // the VM config, as vm.create takes it
	SnapshotState  = "state"       // the state container (docs/state-format.md)
	SnapshotMemory = "memory"      // guest RAM: each region in turn, sparse where zero
)

// Errors of Snapshot and Restore, matched with errors.Is; the error's text
// is the sentence to show.
var (
	// ErrSnapshotRequest: the destination or source cannot be used
	// (exists, missing, not a snapshot, from a newer vio, another machine).
	ErrSnapshotRequest = errors.New("unusable snapshot location")
	// ErrNotSaveable: a device of the VM cannot save its state yet.
	ErrNotSaveable = errors.New("a device cannot be saved")
)

// snapshotError is a sentence that matches one of the errors above.
type snapshotError struct {
	kind error
	msg  string
}

func (e *snapshotError) Error() string        { return e.msg }
func (e *snapshotError) Is(target error) bool { return target == e.kind }

func snapErr(kind error, format string, a ...any) error {
	return &snapshotError{kind: kind, msg: fmt.Sprintf(format, a...)}
}

// component is one section of a snapshot: its id and the part that saves
// and restores it.
type component struct {
	id string
	c  state.Snapshottable
}

// pauseDevicesTimeout bounds how long Snapshot waits for the devices to
// finish the requests they have taken.
const pauseDevicesTimeout = 30 * time.Second

// Snapshot writes the paused VM to dir, which must not exist or be empty:
// its config, the state of every component and guest RAM. The VM stays
// paused. Devices that implement state.Pausable are paused while it is
// saved, so that no request is in flight (and none is in the snapshot).
func (v *VM) Snapshot(dir string) error {
	v.pauseMu.Lock()
	defer v.pauseMu.Unlock()
	if v.clock == nil {
		return errors.New("cannot snapshot a running VM: pause it first")
	}
	if err := v.checkSaveable("snapshot", "to take snapshots"); err != nil {
		return err
	}
	if err := prepareDestination(dir); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), pauseDevicesTimeout)
	defer cancel()
	var paused []state.Pausable
	defer func() {
		for _, p := range paused {
			p.Resume()
		}
	}()
	devices := v.pciDevices
	if v.held != nil {
		// A migration left them paused, and paused they stay until
		// Resume has the disks back.
		devices = nil
	}
	for _, d := range devices {
		if err := d.transport.Pause(ctx); err != nil {
			return fmt.Errorf("pausing device %s: %w", d.name, err)
		}
		paused = append(paused, d.transport)
	}

	snap, err := v.saveState(nil)
	if err != nil {
		return err
	}
	var stateBuf bytes.Buffer
	if err := snap.Encode(&stateBuf); err != nil {
		return err
	}
	// No pass-through device: checkSaveable refused those plugged, and
	// one the build had that was removed since must not come back.
	saved := *v.cfg
	saved.Devices = nil
	cfg, err := json.MarshalIndent(&saved, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding the VM config: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			for _, f := range []string{SnapshotConfig, SnapshotState, SnapshotMemory} {
				os.Remove(filepath.Join(dir, f))
			}
		}
	}()
	if err := writeFileSync(filepath.Join(dir, SnapshotConfig), cfg); err != nil {
		return err
	}
	if err := writeFileSync(filepath.Join(dir, SnapshotState), stateBuf.Bytes()); err != nil {
		return err
	}
	if err := v.writeMemory(filepath.Join(dir, SnapshotMemory)); err != nil {
		return err
	}
	ok = true
	v.log.Info("snapshot written", "dir", dir, "sections", len(snap.Sections()))
	return nil
}

// checkSaveable refuses to save a VM with a part that cannot save its
// state: verb is what was asked ("snapshot", "migrate"), goal ends the
// advice ("to take snapshots"). Snapshot and migration share it, so both
// refuse the same VMs with the same sentence.
func (v *VM) checkSaveable(verb, goal string) error {
	if err := v.hotplugChanged(verb); err != nil {
		return err
	}
	for _, d := range v.pciDevices {
		if d.transport.SRIOV() != nil {
			return snapErr(ErrNotSaveable, "cannot %s: disk %s has SR-IOV virtual functions, which cannot save their state yet; drop its vfs= %s", verb, d.name, goal)
		}
		if _, ok := d.dev.(state.Snapshottable); !ok {
			return snapErr(ErrNotSaveable, "cannot %s: device %s (%s) cannot save its state yet; remove it from the VM config %s", verb, d.name, deviceKind(d), goal)
		}
	}
	// The emulated devices keep their state outside the virtio model
	// and cannot save it yet.
	if len(v.e1000s) > 0 {
		return snapErr(ErrNotSaveable, "cannot %s: the e1000 NIC %s cannot save its state yet; use a virtio-net NIC %s", verb, v.e1000s[0].name, goal)
	}
	if v.ide != nil {
		return snapErr(ErrNotSaveable, "cannot %s: the IDE controller cannot save its state yet; use virtio disks %s", verb, goal)
	}
	if v.iommu != nil {
		return snapErr(ErrNotSaveable, "cannot %s: the emulated IOMMU cannot save its state yet; start the VM without iommu %s", verb, goal)
	}
	v.hp.mu.Lock()
	pts := append([]*ptDevice(nil), v.ptDevices...)
	v.hp.mu.Unlock()
	for _, d := range pts {
		if d.cfg.Failover == "" {
			return snapErr(ErrNotSaveable, "cannot %s: pass-through device %s (%s) keeps its state in hardware vio cannot save; remove it (vm.remove-device %s) or make it the failover primary of a standby NIC %s", verb, d.cfg.ID, d.cfg.BDF(), d.cfg.ID, goal)
		}
	}
	// Failover primaries: a migration unplugs them first (failover.go);
	// a snapshot has no guest running to let them go.
	if verb != "migrate" && len(pts) > 0 {
		d := pts[0]
		return snapErr(ErrNotSaveable, "cannot %s: pass-through device %s (%s) is the failover primary of NIC %s and keeps its state in hardware; with the VM running, remove it (vm.remove-device %s: the guest's traffic moves to %s), then pause and %s, and add it back after (vm.add-device)", verb, d.cfg.ID, d.cfg.BDF(), d.cfg.Failover, d.cfg.ID, d.cfg.Failover, verb)
	}
	return nil
}

// saveState saves every component of the paused VM, devices paused;
// times, if set, gets each section's time.
func (v *VM) saveState(times *sectionTimes) (*state.Snapshot, error) {
	snap := state.New()
	comps, err := v.components()
	if err != nil {
		return nil, err
	}
	for _, c := range comps {
		t0 := time.Now()
		if err := snap.Save(c.id, c.c); err != nil {
			return nil, err
		}
		if times != nil {
			times.add(c.id, time.Since(t0))
		}
	}
	return snap, nil
}

func deviceKind(d *pciDevice) string {
	switch d.dev.Type() {
	case virtio.TypeNet:
		return "virtio-net"
	case virtio.TypeBlock:
		return "virtio-blk"
	case 3:
		return "virtio-console"
	case 4:
		return "virtio-rng"
	case virtio.TypeBalloon:
		return "virtio-balloon"
	}
	return fmt.Sprintf("virtio device type %d", d.dev.Type())
}

// prepareDestination creates dir, or accepts it empty.
func prepareDestination(dir string) error {
	ents, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return snapErr(ErrSnapshotRequest, "cannot create the snapshot directory %s: %v", dir, errors.Unwrap(err))
		}
		return nil
	case err != nil:
		return snapErr(ErrSnapshotRequest, "cannot use %s as the snapshot directory: %v", dir, err)
	case len(ents) > 0:
		return snapErr(ErrSnapshotRequest, "the snapshot destination %s exists and is not empty: name a new or empty directory", dir)
	}
	return nil
}

func writeFileSync(name string, b []byte) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// memoryChunk is the unit in which zero RAM is skipped: large enough that
// the comparison runs at memory speed, small enough that a guest's
// scattered pages leave most of an idle guest's RAM a hole.
const memoryChunk = 64 << 10

// writeMemory writes every region in turn; chunks of zeros become holes.
func (v *VM) writeMemory(name string) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	zero := make([]byte, memoryChunk)
	var off int64
	for _, r := range v.mem.Regions() {
		for i := 0; i < len(r.Data); i += memoryChunk {
			b := r.Data[i:min(i+memoryChunk, len(r.Data))]
			if !bytes.Equal(b, zero[:len(b)]) {
				if _, err := f.WriteAt(b, off+int64(i)); err != nil {
					return fmt.Errorf("writing guest RAM: %w", err)
				}
			}
		}
		off += int64(len(r.Data))
	}
	if err := f.Truncate(off); err != nil {
		return fmt.Errorf("writing guest RAM: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("writing guest RAM: %w", err)
	}
	return f.Close()
}

// components lists every section of this VM in save order, with ids
// derived from the config. Restore looks sections up by id, in its own
// order.
func (v *VM) components() ([]component, error) {
	var cs []component
	msrs, err := v.msrIndex()
	if err != nil {
		return nil, err
	}
	for _, c := range v.cpus {
		cs = append(cs, component{fmt.Sprintf("cpu%d", c.ID()), &cpuState{cpu: c, msrs: msrs, log: v}})
	}
	cs = append(cs,
		component{"irqchip", &irqchipState{vm: v.kvm}},
		component{"pit", &pitState{vm: v.kvm}},
		component{"clock", &clockState{v: v}},
	)
	for _, d := range v.pciDevices {
		cs = append(cs, component{d.name + "/pci", d.transport})
		if s, ok := d.dev.(state.Snapshottable); ok {
			cs = append(cs, component{d.name + "/" + s.StateKind(), s})
		}
	}
	cs = append(cs,
		component{"com1", v.platform.serial},
		component{"i8042", v.platform.kbd},
		component{"cmos", v.platform.cmos},
		component{"acpipm", v.platform.pm},
	)
	return cs, nil
}
