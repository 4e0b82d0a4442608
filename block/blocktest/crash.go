package blocktest

import (
	"math/rand/v2"
	"sync"

	"github.com/viovmm/vio/block"
)

// CrashDisk is an in-memory back-end with a volatile write cache, for
// testing what survives a power cut. Reads see every write at once; a
// write becomes durable only when a later Flush completes. Crash returns
// what a disk could hold after power was cut at that moment: the durable
// state plus an arbitrary subset of the writes (and resizes) not yet
// flushed, applied in issue order.
//
// FreezeAfter models the machine dying: after the given number of
// operations, further writes, resizes and flushes still succeed (the
// software above cannot tell) but no longer reach the disk.
type CrashDisk struct {
	mu       sync.Mutex
	view     []byte // what reads return
	durable  []byte
	pending  []crashOp
	ops      int
	freezeAt int // 0: never
	closed   bool
}

type crashOp struct {
	off    int64
	data   []byte // nil for a resize
	resize int64
}

var (
	_ block.Backend = (*CrashDisk)(nil)
	_ block.Resizer = (*CrashDisk)(nil)
)

// NewCrashDisk returns an empty disk of size bytes, all durable zeroes.
func NewCrashDisk(size int64) *CrashDisk {
	return &CrashDisk{view: make([]byte, size), durable: make([]byte, size)}
}

// FreezeAfter makes operations after the n-th (counting writes, resizes
// and flushes from the start) vanish.
func (d *CrashDisk) FreezeAfter(n int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.freezeAt = n
}

// Frozen reports whether the disk has stopped persisting.
func (d *CrashDisk) Frozen() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.frozen()
}

func (d *CrashDisk) frozen() bool { return d.freezeAt > 0 && d.ops >= d.freezeAt }

// Ops returns the number of writes, resizes and flushes so far.
func (d *CrashDisk) Ops() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ops
}

// Crash returns a possible on-disk state after a power cut now: the
// durable bytes plus each unflushed operation kept with probability 1/2.
func (d *CrashDisk) Crash(rng *rand.Rand) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	img := append([]byte(nil), d.durable...)
	for _, o := range d.pending {
		if rng.IntN(2) == 0 {
			continue
		}
		img = applyOp(img, o)
	}
	return img
}

func applyOp(img []byte, o crashOp) []byte {
	if o.data == nil {
		if o.resize <= int64(len(img)) {
			return img[:o.resize]
		}
		return append(img, make([]byte, o.resize-int64(len(img)))...)
	}
	if end := o.off + int64(len(o.data)); end > int64(len(img)) {
		img = append(img, make([]byte, end-int64(len(img)))...) // a write past EOF extends a file
	}
	copy(img[o.off:], o.data)
	return img
}

func (d *CrashDisk) record(o crashOp) {
	if !d.frozen() {
		d.pending = append(d.pending, o)
	}
	d.ops++
}

func (d *CrashDisk) ReadAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return 0, block.ErrClosed
	}
	return readAt(d.view, p, off)
}

func (d *CrashDisk) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return 0, block.ErrClosed
	}
	if err := block.CheckRange(off, int64(len(p)), int64(len(d.view))); err != nil {
		return 0, err
	}
	copy(d.view[off:], p)
	d.record(crashOp{off: off, data: append([]byte{}, p...)})
	return len(p), nil
}

func (d *CrashDisk) Resize(size int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return block.ErrClosed
	}
	if size < 0 {
		return block.ErrOutOfRange
	}
	d.view = applyOp(d.view, crashOp{data: nil, resize: size})
	d.record(crashOp{resize: size})
	return nil
}

func (d *CrashDisk) Flush() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return block.ErrClosed
	}
	if !d.frozen() {
		for _, o := range d.pending {
			d.durable = applyOp(d.durable, o)
		}
		d.pending = d.pending[:0]
	}
	d.ops++
	return nil
}

func (d *CrashDisk) Size() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return int64(len(d.view))
}

// Close does not flush: a disk has no close. The state stays available
// to Crash.
func (d *CrashDisk) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return block.ErrClosed
	}
	d.closed = true
	return nil
}
