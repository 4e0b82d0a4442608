package throttle

import (
	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/filter"
)

// Disk is one throttled back-end: each request waits for its group's
// buckets, then goes to the child. Flush, discard and write zeroes cost an
// op and no bytes.
type Disk struct {
	filter.Base
	g *Group
	// Guarded by g.mu.
	draining int
	closed   bool
}

var _ filter.Interposer = (*Disk)(nil)

// New returns child throttled by limits of its own, with the child's
// capabilities. The returned back-end owns child (Close closes it).
func New(child block.Backend, l Limits, clock Clock) (block.Backend, error) {
	g, err := NewGroup("", l, clock)
	if err != nil {
		return nil, err
	}
	return NewInGroup(child, g), nil
}

// NewInGroup returns child throttled by the shared group g.
func NewInGroup(child block.Backend, g *Group) block.Backend {
	d := &Disk{Base: filter.Base{Child: child}, g: g}
	return filter.View(d, filter.CapsOf(child))
}

// Of returns the throttle behind a back-end made by New or NewInGroup, or
// nil.
func Of(b block.Backend) *Disk {
	d, _ := filter.Unwrap(b).(*Disk)
	return d
}

// Group returns the group that limits d; change its limits at run time
// with SetLimits.
func (d *Disk) Group() *Group { return d.g }

func vlen(bufs [][]byte) int64 {
	var n int64
	for _, b := range bufs {
		n += int64(len(b))
	}
	return n
}

func (d *Disk) ReadAt(p []byte, off int64) (int, error) {
	if err := d.g.acquire(d, int64(len(p))); err != nil {
		return 0, err
	}
	return d.Child.ReadAt(p, off)
}

func (d *Disk) WriteAt(p []byte, off int64) (int, error) {
	if err := d.g.acquire(d, int64(len(p))); err != nil {
		return 0, err
	}
	return d.Child.WriteAt(p, off)
}

func (d *Disk) ReadvAt(bufs [][]byte, off int64) (int, error) {
	if err := d.g.acquire(d, vlen(bufs)); err != nil {
		return 0, err
	}
	return block.ReadvAt(d.Child, bufs, off)
}

func (d *Disk) WritevAt(bufs [][]byte, off int64) (int, error) {
	if err := d.g.acquire(d, vlen(bufs)); err != nil {
		return 0, err
	}
	return block.WritevAt(d.Child, bufs, off)
}

func (d *Disk) Flush() error {
	if err := d.g.acquire(d, 0); err != nil {
		return err
	}
	return d.Child.Flush()
}

func (d *Disk) Discard(off, n int64) error {
	if err := d.g.acquire(d, 0); err != nil {
		return err
	}
	return d.Base.Discard(off, n)
}

func (d *Disk) WriteZeroes(off, n int64, unmap bool) error {
	if err := d.g.acquire(d, 0); err != nil {
		return err
	}
	return d.Base.WriteZeroes(off, n, unmap)
}

// Resize is a control operation, not I/O: it is not throttled.
func (d *Disk) Resize(size int64) error {
	if d.isClosed() {
		return ErrClosed
	}
	return d.Base.Resize(size)
}

func (d *Disk) isClosed() bool {
	d.g.mu.Lock()
	defer d.g.mu.Unlock()
	return d.closed
}

// Drain fails d's waiting requests with ErrDrained, and while drained any
// request of d that would have to wait; requests that fit still go. It
// forwards to the child too.
func (d *Disk) Drain(on bool) {
	g := d.g
	g.mu.Lock()
	if on {
		d.draining++
		if d.draining == 1 {
			g.fail(d, ErrDrained)
		}
	} else if d.draining > 0 {
		d.draining--
	}
	g.mu.Unlock()
	d.Base.Drain(on)
}

// Close fails d's waiting requests with ErrClosed and closes the child.
func (d *Disk) Close() error {
	g := d.g
	g.mu.Lock()
	if d.closed {
		g.mu.Unlock()
		return ErrClosed
	}
	d.closed = true
	g.fail(d, ErrClosed)
	g.mu.Unlock()
	return d.Child.Close()
}
