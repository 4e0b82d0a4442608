package vmm

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/nbd"
	"github.com/viovmm/vio/block/raw"
	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/migration"
)

// The destination's side of a disk copy (diskcopy.go has the source's):
// for each disk the source copies, it opens its own image (the config's
// path, or the one vm.receive-migration's disk_paths gives, which on one
// host must differ from the source's), writable and locked, checks that
// it has the source disk's size, and serves it over NBD on the
// connections that reach the migration's listener with the migration's
// token (migration.Listener), until the state arrives. Then it stops the
// server and closes the images (a flush each), and the VM opens them
// again as any migrated disk (TakeResources), with their locks: from
// there on nothing differs from a disk on shared storage.

// diskExports is the images served to the source.
type diskExports struct {
	srv  *nbd.Server
	imgs []block.Backend
	ids  []string
	log  *slog.Logger
	done bool
}

// exportDrain bounds the wait for the requests the server has read when
// it stops (the source has flushed and disconnected by then).
const exportDrain = 10 * time.Second

// openExports opens the destination's image of each of disks, as cfg
// (paths already moved by disk_paths) describes it.
func openExports(cfg *config.VM, disks []migration.Disk, log *slog.Logger) (*diskExports, error) {
	e := &diskExports{log: log}
	var exports []nbd.Export
	for _, want := range disks {
		i := slices.IndexFunc(cfg.Disks, func(d config.Disk) bool { return d.ID == want.ID })
		if i < 0 {
			e.close()
			return nil, fmt.Errorf("the source asks to copy disk %q, which its config does not have", want.ID)
		}
		d := cfg.Disks[i] // a copy: openDisk pins the format into it
		if err := copyable(&d); err != nil {
			e.close()
			return nil, err
		}
		be, err := openExport(&d, want.Size, log)
		if err != nil {
			e.close()
			return nil, err
		}
		e.imgs, e.ids = append(e.imgs, be), append(e.ids, d.ID)
		exports = append(exports, nbd.Export{Name: d.ID, Backend: be, Description: "copy of disk " + d.ID})
	}
	srv, err := nbd.NewServer(exports...)
	if err != nil {
		e.close()
		return nil, err
	}
	// A connection per disk, and as many again for a reconnect each.
	srv.MaxConns = 2 * len(exports)
	srv.Logf = func(f string, a ...any) { log.Warn(fmt.Sprintf(f, a...)) }
	e.srv = srv
	return e, nil
}

// openExport opens one image to take the copy, with one sentence for
// each reason it cannot.
func openExport(d *config.Disk, size int64, log *slog.Logger) (block.Backend, error) {
	cache, _, err := diskCache(d)
	if err != nil {
		return nil, fmt.Errorf("disk %s: %w", d.ID, err)
	}
	// Asked first: the image layers' own errors do not all say it.
	if _, err := os.Stat(d.Path); errors.Is(err, fs.ErrNotExist) {
		format := "raw"
		if d.ImageType == config.ImageQcow2 {
			format = "qcow2"
		}
		return nil, fmt.Errorf("disk %s: there is no image at %s here to copy it into: create an empty one of %d bytes there (vio image create -f %s %s %d) before migrating", d.ID, d.Path, size, format, d.Path, size)
	}
	be, err := openDisk(d, cache, func(msg string) { log.Warn(msg, "disk", d.ID) })
	switch {
	case errors.Is(err, raw.ErrLocked):
		return nil, fmt.Errorf("disk %s: the image %s here is in use by another process (on one host, the source's own: give the copy another path with disk_paths)", d.ID, d.Path)
	case err != nil:
		return nil, fmt.Errorf("disk %s: opening the image %s here to copy it into: %w", d.ID, d.Path, err)
	}
	if be.Size() != size {
		got := be.Size()
		be.Close()
		return nil, fmt.Errorf("disk %s: the image %s here is %d bytes, the source's disk %d: create it with exactly the source's size", d.ID, d.Path, got, size)
	}
	return be, nil
}

// stop ends the copy: no request is served any more, and each image is
// closed (flushed). An image that fails its flush may lack what the
// source wrote: the error fails the migration.
func (e *diskExports) stop() error {
	if e.done {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), exportDrain)
	defer cancel()
	if e.srv != nil {
		e.srv.Shutdown(ctx)
	}
	return e.close()
}

func (e *diskExports) close() error {
	e.done = true
	var first error
	for i, be := range e.imgs {
		if err := be.Close(); err != nil && first == nil {
			first = fmt.Errorf("disk %s: closing its copy: %w", e.ids[i], err)
		}
	}
	e.imgs = nil
	return first
}

// applyDiskPaths moves the disks vm.receive-migration's disk_paths names
// to their paths here. Each must be a disk the source copies: another
// file than the source's could only hold its data if it was copied.
func applyDiskPaths(cfg *config.VM, paths map[string]string, copied []migration.Disk) error {
	for id, p := range paths {
		i := slices.IndexFunc(cfg.Disks, func(d config.Disk) bool { return d.ID == id })
		if i < 0 {
			return fmt.Errorf("disk_paths names disk %q, which the migrating VM does not have", id)
		}
		if !slices.ContainsFunc(copied, func(d migration.Disk) bool { return d.ID == id }) {
			return fmt.Errorf("disk_paths gives disk %s a path of its own here, but the source does not copy it: add it to the source's copy_disks, or leave it out of disk_paths if both hosts see its image", id)
		}
		cfg.Disks[i].Path = p
	}
	return nil
}
