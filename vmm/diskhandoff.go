package vmm

import (
	"errors"
	"fmt"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/graph"
	"github.com/viovmm/vio/block/handoff"
	"github.com/viovmm/vio/block/image"
	"github.com/viovmm/vio/block/raw"
	"github.com/viovmm/vio/config"
)

// A migration hands the virtio disks' images over at the switchover
// (docs/migration.md, "Disks and other host resources"), as QEMU's
// inactive images do: both vios open the same files, and the image locks
// (block/raw/lock.go) let only one of them write. The source releases its
// images (flush, then close, which drops the locks) once its VM is paused
// for the stop-and-copy; the destination, which built its VM without
// opening them, opens them once the state is restored, just before the
// guest runs there. If the migration fails, the source opens them again
// before its guest runs. The device front-ends stay as they are
// throughout: a handoff.Disk under each holds its requests while there
// is no image.

// vmDisk is one virtio disk's image as the VM hands it over.
type vmDisk struct {
	id string
	h  *handoff.Disk
}

// openImage opens a disk's image stack, locked: its graph through the
// VM's graph builder, or its plain path as openDisk does (pinning a
// probed format into d).
func (v *VM) openImage(d *config.Disk, cache raw.CacheMode, warn func(string)) (block.Backend, error) {
	if d.Graph != nil {
		return v.graphs.Open(graph.Disk{ID: d.ID, Root: d.Graph, ReadOnly: d.Readonly, Cache: cache})
	}
	return openDisk(d, cache, warn)
}

// handoffDisk returns a disk's image stack under a handoff.Disk that can
// release it and open it again. A migration's destination opens nothing
// yet: the source still writes the image and holds its locks.
func (v *VM) handoffDisk(d *config.Disk, cache raw.CacheMode, warn func(string)) (block.Backend, *handoff.Disk, error) {
	// Reopened from a copy of the disk as first opened, with its format
	// pinned: a probe now could see what the guest wrote since.
	var pinned config.Disk
	reopen := func() (block.Backend, error) { return v.openImage(&pinned, cache, warn) }
	if v.disksInactive {
		f, err := v.probeDisk(d, cache)
		if err != nil {
			return nil, nil, err
		}
		pinned = *d
		be := handoff.NewInactive(f, reopen)
		return be, handoff.Of(be), nil
	}
	img, err := v.openImage(d, cache, warn)
	if err != nil {
		return nil, nil, err
	}
	pinned = *d
	be := handoff.New(img, reopen)
	return be, handoff.Of(be), nil
}

// probeDisk learns what a migration's destination must know of a disk to
// build its front-end (the virtio-blk device the guest negotiated with):
// its size, and which of discard, write zeroes and resize its image
// offers. It opens the image read-only and without locks (the source
// holds them, and even a reader's lock would conflict with its writer),
// and closes it at once: nothing read here is used once the guest runs,
// since metadata read while the source still writes (a qcow2 image's
// tables) would be stale by then; TakeResources opens the image for real.
//
// Why a probe rather than the facts in the device state: the front-end
// is built, and offers its features, before any state arrives; the state
// still checks the capacity (blk.State), and the restore of the PCI
// function checks that the features the guest negotiated are offered, so
// a disk that changed between the two sides fails the migration before
// the guest runs. Read-only or not is the config's to say: the probe is
// read-only by construction.
func (v *VM) probeDisk(d *config.Disk, cache raw.CacheMode) (handoff.Facts, error) {
	var be block.Backend
	var err error
	if d.Graph != nil {
		// A builder of its own, unlocked and with no events: the probe's
		// nodes must not stand for the disk's in the VM's registry.
		b := graph.NewBuilder(graph.Options{Groups: v.cfg.RateLimitGroupMap(), ChildCache: cache})
		be, err = b.Open(graph.Disk{ID: d.ID, Root: d.Graph, ReadOnly: true, Cache: cache})
	} else {
		opts := image.OpenOptions{ReadOnly: true, Cache: cache, AllowBacking: d.AllowBacking}
		switch d.ImageType {
		case config.ImageRaw:
			opts.Format = image.Raw
		case config.ImageQcow2:
			opts.Format = image.Qcow2
		}
		be, _, err = image.OpenDisk(d.Path, opts, nil)
	}
	if err != nil {
		return handoff.Facts{}, err
	}
	f := handoff.FactsOf(be)
	be.Close()
	f.ReadOnly = d.Readonly || (d.Graph != nil && d.Graph.ReadOnly)
	return f, nil
}

// addHandoff records a disk the VM hands over at a migration.
func (v *VM) addHandoff(id string, h *handoff.Disk) {
	v.diskMu.Lock()
	v.disks = append(v.disks, vmDisk{id: id, h: h})
	v.diskMu.Unlock()
}

func (v *VM) handoffs() []vmDisk {
	v.diskMu.Lock()
	defer v.diskMu.Unlock()
	return append([]vmDisk(nil), v.disks...)
}

// releaseDisks flushes every disk's image and closes it, dropping its
// locks, for a migration's destination to open. Call it with the vCPUs
// and the devices paused: no request is in flight, and none starts. On
// error every disk is taken back (or stays released if it cannot be, as
// the error then says too).
func (v *VM) releaseDisks() error {
	start := time.Now()
	disks := v.handoffs()
	for _, d := range disks {
		err := d.h.Deactivate()
		if err == nil || errors.Is(err, block.ErrClosed) { // closed: a removed disk
			continue
		}
		err = fmt.Errorf("cannot release disk %s for the destination: %w", d.id, err)
		if terr := v.takeDisks(); terr != nil {
			return fmt.Errorf("%w; and %w", err, terr)
		}
		return err
	}
	// Timed: it is part of the migration's downtime.
	v.log.Info("disks released for the migration's destination", "disks", len(disks), "took", time.Since(start))
	return nil
}

// takeDisks opens every released disk's image again, with its locks. It
// tries them all; the error names the first that failed.
func (v *VM) takeDisks() error {
	var first error
	for _, d := range v.handoffs() {
		err := d.h.Activate()
		if err == nil || errors.Is(err, block.ErrClosed) {
			continue
		}
		if first == nil {
			first = fmt.Errorf("disk %s: %w", d.id, err)
		}
	}
	return first
}
