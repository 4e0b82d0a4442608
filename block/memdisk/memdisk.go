// Package memdisk is a read-only block.Backend over bytes in memory, for
// disks vio generates itself (a cloud-init seed): no file, nothing to
// clean up, and a guest cannot change it.
package memdisk

import (
	"fmt"
	"io"
	"sync/atomic"

	"github.com/viovmm/vio/block"
)

// Disk is a read-only in-memory disk. The zero value is an empty disk.
type Disk struct {
	data   []byte
	closed atomic.Bool
}

var _ block.Backend = (*Disk)(nil)

// New returns a disk whose contents are b (not copied: the caller must not
// change b afterwards).
func New(b []byte) *Disk { return &Disk{data: b} }

// ReadAt reads as block.Backend's contract says.
func (d *Disk) ReadAt(p []byte, off int64) (int, error) {
	if d.closed.Load() {
		return 0, block.ErrClosed
	}
	if off < 0 {
		return 0, fmt.Errorf("memdisk: negative offset %d", off)
	}
	if off >= int64(len(d.data)) {
		return 0, io.EOF
	}
	n := copy(p, d.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt always fails: the disk is read-only.
func (d *Disk) WriteAt(p []byte, off int64) (int, error) {
	if d.closed.Load() {
		return 0, block.ErrClosed
	}
	return 0, block.ErrReadOnly
}

// Flush has nothing to make durable.
func (d *Disk) Flush() error {
	if d.closed.Load() {
		return block.ErrClosed
	}
	return nil
}

// Size returns the disk's length.
func (d *Disk) Size() int64 { return int64(len(d.data)) }

// Close releases nothing; later calls fail with block.ErrClosed.
func (d *Disk) Close() error {
	d.closed.Store(true)
	return nil
}
