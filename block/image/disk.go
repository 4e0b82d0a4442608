package image

import (
	"errors"
	"fmt"
	"sync"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/raw"
)

// OpenDisk opens the image behind a guest's disk and returns the format it
// was opened as, which the caller pins (records in its configuration) so
// that it is never probed again for this disk: a guest that rewrites the
// first sector of its raw disk must not turn it into a qcow2 image naming
// a host file as backing at the next open.
//
// A format in opts is used as given. Without one the rules are:
//   - a read-only disk is probed (the guest cannot write its header);
//   - a writable disk that probes as raw is opened as raw with GuardHead,
//     so the guest cannot make it probe otherwise for a later user who
//     again gives no format;
//   - a writable disk that probes as qcow2 is opened as qcow2, and warn is
//     told to ask the user to say so (as QEMU warns for probed images).
//
// An NBD export is always raw.
func OpenDisk(path string, opts OpenOptions, warn func(msg string)) (block.Backend, string, error) {
	if opts.Format != "" || IsNBD(path) {
		b, err := Open(path, opts)
		if err != nil {
			return nil, "", err
		}
		return b, formatOf(b), nil
	}
	if opts.ReadOnly {
		b, err := Open(path, opts)
		if err != nil {
			return nil, "", err
		}
		return b, formatOf(b), nil
	}
	format, err := Probe(path)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", path, err)
	}
	opts.Format = format
	switch format {
	case Raw:
		opts.GuardHead = true
	case Qcow2:
		if warn != nil {
			warn(fmt.Sprintf("%s was probed as a qcow2 image; give its format (format=qcow2) so that it is never guessed", path))
		}
	}
	b, err := Open(path, opts)
	if err != nil {
		return nil, "", err
	}
	return b, format, nil
}

// headGuard is a raw image whose format was probed: it refuses writes that
// would make its first sector probe as another format (qcow2's magic, or a
// format vio refuses), as QEMU does for probed raw images. Without it, a
// guest could write a qcow2 header naming a backing file, and whoever
// opened the image next without giving a format would follow it.
type headGuard struct {
	*raw.File
	mu sync.Mutex // serialises writes touching the first sector
}

// probeLen is how much of an image Probe reads.
const probeLen = 512

var (
	_ block.Backend        = (*headGuard)(nil)
	_ block.VectorWriterAt = (*headGuard)(nil)
	// Reads are not guarded: the file's non-blocking reads pass through.
	_ block.TryReader = (*headGuard)(nil)
)

// ErrHeadGuarded is matched by a write refused by the guard.
var ErrHeadGuarded = errors.New("image: refusing a write that would make a probed raw image look like another format (give format=raw to allow it)")

func (g *headGuard) WriteAt(p []byte, off int64) (int, error) {
	return g.WritevAt([][]byte{p}, off)
}

func (g *headGuard) WritevAt(bufs [][]byte, off int64) (int, error) {
	if off >= probeLen || off < 0 {
		return g.File.WritevAt(bufs, off)
	}
	// Two writes to the first sector, each harmless alone, could together
	// form a header: check and write as one step.
	g.mu.Lock()
	defer g.mu.Unlock()
	head := make([]byte, min(probeLen, g.Size()))
	if _, err := g.File.ReadAt(head, 0); err != nil {
		return 0, err
	}
	pos := off
	for _, b := range bufs {
		if pos >= int64(len(head)) {
			break
		}
		pos += int64(copy(head[pos:], b))
	}
	if f, err := probeBytes(head); err != nil || f != Raw {
		return 0, ErrHeadGuarded
	}
	return g.File.WritevAt(bufs, off)
}
