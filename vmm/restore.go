package vmm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/arch/x86"
	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/kvm"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/migration"
	"github.com/viovmm/vio/state"
)

// RestoreOptions tune Restore.
type RestoreOptions struct {
	// Prefault reads all of guest RAM into private memory before the
	// guest runs. Without it (the default) guest RAM is mapped from the
	// snapshot's memory file copy-on-write, and each page is read when
	// the guest first touches it: the restore takes milliseconds, the
	// first touches cost a page fault each, and the file must not change
	// while the VM runs.
	Prefault bool
}

// snapshotSource is what a restore builds from.
type snapshotSource struct {
	dir  string
	snap *state.Snapshot
	opts RestoreOptions
	// incoming: a migration's destination; RAM starts zero (or is the
	// source's, shared, in a local migration) and the state comes later
	// (see NewIncoming).
	incoming bool
	shared   *migration.SharedRAM
}

// ReadSnapshotConfig reads the VM config a snapshot was taken with.
func ReadSnapshotConfig(dir string) (*config.VM, error) {
	st, err := os.Stat(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, snapErr(ErrSnapshotRequest, "the snapshot source %s does not exist", dir)
	}
	if err != nil {
		return nil, snapErr(ErrSnapshotRequest, "cannot read the snapshot source: %v", err)
	}
	if !st.IsDir() {
		return nil, snapErr(ErrSnapshotRequest, "the snapshot source %s is not a directory", dir)
	}
	b, err := os.ReadFile(filepath.Join(dir, SnapshotConfig))
	if err != nil {
		return nil, snapErr(ErrSnapshotRequest, "%s is not a vio snapshot: it has no readable %s", dir, SnapshotConfig)
	}
	cfg, err := config.Decode(b)
	if err != nil {
		return nil, snapErr(ErrSnapshotRequest, "the snapshot's %s: %v", SnapshotConfig, err)
	}
	return cfg, nil
}

// Restore builds, in this process, the VM whose snapshot is in dir: the
// machine its config describes, with no payload loaded, guest RAM from the
// snapshot's memory file and every component's state. The VM is paused:
// Start starts its vCPUs parked, and Resume runs the guest from where the
// snapshot was taken, its clock moved on by the time since (see Resume).
func Restore(dir string, stdio IO, opts Options, ro RestoreOptions) (*VM, *config.VM, error) {
	cfg, err := ReadSnapshotConfig(dir)
	if err != nil {
		return nil, nil, err
	}
	f, err := os.Open(filepath.Join(dir, SnapshotState))
	if err != nil {
		return nil, nil, snapErr(ErrSnapshotRequest, "%s is not a vio snapshot: it has no readable %s file", dir, SnapshotState)
	}
	snap, err := state.Decode(f)
	f.Close()
	if errors.Is(err, state.ErrNewer) {
		return nil, nil, snapErr(ErrSnapshotRequest, "%v", err)
	}
	if err != nil {
		return nil, nil, snapErr(ErrSnapshotRequest, "the snapshot's state file: %v", err)
	}
	v, err := assemble(cfg, stdio, opts, &snapshotSource{dir: dir, snap: snap, opts: ro})
	if err != nil {
		return nil, nil, err
	}
	return v, cfg, nil
}

// setupMemoryFrom maps guest RAM from the snapshot's memory file. Shared
// RAM (memory shared=on: a vhost-user back-end maps it, a same-host
// migration hands it over) must be a memfd again, so the file is copied
// into a fresh one (copySharedMemory) rather than mapped.
func (v *VM) setupMemoryFrom(src *snapshotSource) error {
	if v.cfg.Memory.Shared {
		return v.copySharedMemory(src)
	}
	layout, err := x86.RAMLayout(uint64(v.cfg.Memory.Size))
	if err != nil {
		return err
	}
	name := filepath.Join(src.dir, SnapshotMemory)
	f, err := os.Open(name)
	if err != nil {
		return snapErr(ErrSnapshotRequest, "the snapshot has no readable memory file: %v", errors.Unwrap(err))
	}
	defer f.Close() // a private mapping keeps the file itself
	st, err := f.Stat()
	if err != nil {
		return err
	}
	regions := make([]memory.FileRegion, len(layout))
	var off uint64
	for i, l := range layout {
		regions[i] = memory.FileRegion{GPA: l.GPA, Size: l.Size, Offset: off}
		off += l.Size
	}
	if uint64(st.Size()) != off {
		return snapErr(ErrSnapshotRequest, "the snapshot's memory file is %d bytes, but its config's %s of RAM needs %d: the snapshot is damaged or incomplete", st.Size(), config.FormatSize(v.cfg.Memory.Size), off)
	}
	if v.mem, err = memory.NewFromFile(int(f.Fd()), regions, memory.Private); err != nil {
		return err
	}
	if src.opts.Prefault {
		for _, r := range v.mem.Regions() {
			prefault(r.Data)
		}
	}
	for i, r := range v.mem.Regions() {
		if err := v.kvm.SetUserMemoryRegion(kvm.MemoryRegion{Slot: uint32(i), GPA: r.GPA, Host: r.Data}); err != nil {
			return fmt.Errorf("registering guest RAM at %#x with KVM: %w", r.GPA, err)
		}
	}
	return nil
}

// copySharedMemory builds shared guest RAM (a memfd, setupMemory) and
// reads the snapshot's memory file into it: its data extents only
// (SEEK_DATA), and of those only the chunks that are not zero, so that
// the memfd's untouched pages stay unallocated as the source's were.
func (v *VM) copySharedMemory(src *snapshotSource) error {
	name := filepath.Join(src.dir, SnapshotMemory)
	f, err := os.Open(name)
	if err != nil {
		return snapErr(ErrSnapshotRequest, "the snapshot has no readable memory file: %v", errors.Unwrap(err))
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if err := v.setupMemory(); err != nil {
		return err
	}
	var total uint64
	for _, r := range v.mem.Regions() {
		total += r.Size()
	}
	if uint64(st.Size()) != total {
		return snapErr(ErrSnapshotRequest, "the snapshot's memory file is %d bytes, but its config's %s of RAM needs %d: the snapshot is damaged or incomplete", st.Size(), config.FormatSize(v.cfg.Memory.Size), total)
	}
	buf, zero := make([]byte, memoryChunk), make([]byte, memoryChunk)
	var off int64
	fd := int(f.Fd())
	for _, r := range v.mem.Regions() {
		end := off + int64(r.Size())
		for pos := off; pos < end; {
			data, err := unix.Seek(fd, pos, unix.SEEK_DATA)
			if errors.Is(err, unix.ENXIO) || err == nil && data >= end {
				break // holes to the region's end
			}
			if err != nil {
				data = pos // no SEEK_DATA here: read it all
			}
			hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
			if err != nil || hole > end {
				hole = end
			}
			for c := data; c < hole; {
				n := min(int64(len(buf)), hole-c)
				b := buf[:n]
				if _, err := f.ReadAt(b, c); err != nil {
					return fmt.Errorf("reading the snapshot's memory: %w", err)
				}
				if !bytes.Equal(b, zero[:n]) {
					copy(r.Data[c-off:], b)
				}
				c += n
			}
			pos = hole
		}
		off = end
	}
	return nil
}

// prefault copies every page of a private file mapping into memory now
// (MADV_POPULATE_WRITE, Linux 5.14), or at least reads it ahead.
func prefault(b []byte) {
	if err := unix.Madvise(b, unix.MADV_POPULATE_WRITE); err != nil {
		_ = unix.Madvise(b, unix.MADV_WILLNEED)
	}
}

// restore applies the snapshot to a VM built from its config. The order:
// the PIT and interrupt controllers, then the vCPUs (their LAPICs must be
// in place before a device can raise an MSI), the clock (applied by
// Resume), each PCI function's transport then its device, the BARs where
// the guest put them, the legacy devices. Every section must be used.
func (v *VM) restore(src *snapshotSource) error {
	comps, err := v.restoreComponents()
	if err != nil {
		return err
	}
	start := time.Now()
	var times sectionTimes
	for _, c := range comps {
		t0 := time.Now()
		if err := src.snap.Restore(c.id, c.c); err != nil {
			return snapshotRestoreError(err)
		}
		if c.id == lastPCISection(v) {
			v.pciRoot.Resync()
		}
		times.add(c.id, time.Since(t0))
	}
	if len(v.pciDevices) == 0 {
		v.pciRoot.Resync()
	}
	if left := src.snap.Unrestored(); len(left) > 0 {
		return snapErr(ErrSnapshotRequest, "the snapshot has state for %q, which this machine does not have: restore with the configuration the snapshot was taken with", left)
	}
	// The vCPUs start parked: the VM is paused until Resume.
	v.group.Pause()
	v.log.Info("restored from snapshot", "dir", src.dir, "sections", len(comps))
	v.log.Debug("state restored", "took", time.Since(start), "slowest", times.slowest(4))
	return nil
}

func snapshotRestoreError(err error) error {
	if errors.Is(err, state.ErrNewer) || errors.Is(err, state.ErrMismatch) || errors.Is(err, state.ErrCorrupt) || errors.Is(err, state.ErrInvalid) {
		return snapErr(ErrSnapshotRequest, "cannot restore: %v", err)
	}
	return fmt.Errorf("cannot restore: %w", err)
}

// lastPCISection is the id after whose restore the BARs are resynced.
func lastPCISection(v *VM) string {
	if len(v.pciDevices) == 0 {
		return ""
	}
	d := v.pciDevices[len(v.pciDevices)-1]
	if s, ok := d.dev.(state.Snapshottable); ok {
		return d.name + "/" + s.StateKind()
	}
	return d.name + "/pci"
}

// restoreComponents is components in restore order.
func (v *VM) restoreComponents() ([]component, error) {
	all, err := v.components()
	if err != nil {
		return nil, err
	}
	rank := func(id string) int {
		switch {
		case id == "pit" || id == "irqchip":
			return 0
		case len(id) > 3 && id[:3] == "cpu":
			return 1
		case id == "clock":
			return 2
		}
		for _, d := range v.pciDevices {
			if len(id) > len(d.name) && id[:len(d.name)+1] == d.name+"/" {
				return 3
			}
		}
		return 4
	}
	var out []component
	for r := 0; r <= 4; r++ {
		for _, c := range all {
			if rank(c.id) == r {
				out = append(out, c)
			}
		}
	}
	for _, d := range v.pciDevices {
		if _, ok := d.dev.(state.Snapshottable); !ok {
			return nil, snapErr(ErrNotSaveable, "cannot restore: device %s (%s) cannot restore its state yet", d.name, deviceKind(d))
		}
	}
	return out, nil
}
