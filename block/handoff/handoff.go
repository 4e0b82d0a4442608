// Package handoff lets a disk's image change hands between two processes
// while the guest's disk stays the same: at a live migration's switchover
// the source releases its images (flushes them, drops its locks) and the
// destination takes them, as QEMU's inactive images do.
//
// A Disk sits between a front-end (virtio-blk) and the image stack a
// Backend opener returns. The front-end is built once, on facts of the
// disk (its size, whether it is read-only, which optional capabilities it
// offers the guest); the image under it may be closed (Deactivate) and
// opened again (Activate) any number of times, by the opener, and must
// keep those facts. While no image is open, requests wait: a destination
// whose device was restored with requests on its rings serves them once
// the image is its own, and a source never sees an error for a request
// the switchover interrupted.
package handoff

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/filter"
)

// Opener opens the image stack, locks included; each call returns a new
// Backend on the same storage.
type Opener func() (block.Backend, error)

// Facts are what a front-end learned from its disk when it was built and
// keeps relying on while the guest runs.
type Facts struct {
	Size     int64
	ReadOnly bool
	// Caps are the optional capabilities the front-end sees. An image
	// that lacks one the facts have is served anyway, within the
	// contract: a discard does nothing (it is advisory) and zeroes are
	// written as data.
	Caps filter.Caps
}

// FactsOf returns the facts of an open back-end.
func FactsOf(b block.Backend) Facts {
	r, ok := b.(block.ReadOnlyReporter)
	return Facts{Size: b.Size(), ReadOnly: ok && r.ReadOnly(), Caps: filter.CapsOf(b)}
}

// check refuses an image that would break what the front-end promised
// the guest: another size (the guest's file systems end where the
// capacity it read says), or read-only under a writable disk.
func (f Facts) check(b block.Backend) error {
	if s := b.Size(); s != f.Size {
		return fmt.Errorf("the image is now %d bytes, but the guest's disk is %d", s, f.Size)
	}
	if r, ok := b.(block.ReadOnlyReporter); ok && r.ReadOnly() && !f.ReadOnly {
		return errors.New("the image opened read-only, but the guest's disk is writable")
	}
	return nil
}

// ErrInactive is matched by a control operation (Resize) on a Disk whose
// image is released: it would wait for as long as another process owns
// the image, so it fails instead.
var ErrInactive = errors.New("the disk's image is released to a migration's destination")

// ErrInterposed is matched by a Resize while an interposer stands in
// front of the image (a migration copying the disk): the copy's
// destination would have to grow with it.
var ErrInterposed = errors.New("the disk is being copied to a migration's destination")

// Disk is one disk whose image can be released and taken back.
type Disk struct {
	open Opener
	ro   bool
	size atomic.Int64 // the guest's capacity; Resize moves it

	// swap is held for reading by each request while it is on be, and
	// for writing while be changes: Deactivate closes an image only once
	// no request is left on it.
	swap sync.RWMutex
	// mu guards be (written with swap held too, so either lock reads
	// it), changed, drained and closed.
	mu sync.Mutex
	be block.Backend // nil while inactive; img, or an interposer over it
	// img is the image the opener returned; it differs from be while an
	// interposer (Interpose) stands in front of it.
	img block.Backend
	// changed is closed, and replaced, when be, drained or closed
	// change: the requests waiting for an image wait on it.
	changed chan struct{}
	drained int // Drain calls in force
	closed  bool
}

var (
	_ filter.Interposer = (*Disk)(nil)
	_ block.TryReader   = (*Disk)(nil)
)

// New returns a Disk serving be, which open can open again, with be's
// facts. The returned Backend has exactly be's optional capabilities;
// reach the Disk with Of. The Disk owns be.
func New(be block.Backend, open Opener) block.Backend {
	f := FactsOf(be)
	d := newDisk(f, open)
	d.be, d.img = be, be
	return filter.View(d, f.Caps)
}

// NewInactive returns a Disk with no image yet, for a front-end built on
// facts learned elsewhere: its requests wait until Activate opens the
// image with open.
func NewInactive(f Facts, open Opener) block.Backend {
	return filter.View(newDisk(f, open), f.Caps)
}

func newDisk(f Facts, open Opener) *Disk {
	d := &Disk{open: open, ro: f.ReadOnly, changed: make(chan struct{})}
	d.size.Store(f.Size)
	return d
}

// Of returns the Disk behind a Backend New or NewInactive returned, or
// nil.
func Of(b block.Backend) *Disk {
	d, _ := filter.Unwrap(b).(*Disk)
	return d
}

// Active reports whether the Disk has its image open.
func (d *Disk) Active() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.be != nil
}

// Deactivate releases the image: it flushes it and closes it, which drops
// its locks, once no request is on it. Requests from then on wait for
// Activate. If the flush fails the image stays open and in use, and the
// error says so: what the guest wrote may not be on the storage, so no
// one else may take the image. Deactivating an inactive Disk does
// nothing.
func (d *Disk) Deactivate() error {
	d.swap.Lock()
	defer d.swap.Unlock()
	d.mu.Lock()
	be, closed := d.be, d.closed
	d.mu.Unlock()
	if closed {
		return block.ErrClosed
	}
	if be == nil {
		return nil
	}
	// Flush before Close even though Close flushes: a failed flush must
	// leave the image open, not half released.
	if err := be.Flush(); err != nil {
		return fmt.Errorf("flushing the image before releasing it: %w", err)
	}
	d.mu.Lock()
	img := d.img
	d.be, d.img = nil, nil
	d.mu.Unlock()
	return closeStack(be, img)
}

// closeStack closes an interposer (if be is one) and then the image
// under it: the interposer was given a view of img whose Close leaves it
// open, so the image is closed once, here, and last.
func closeStack(be, img block.Backend) error {
	var ierr error
	if be != img {
		ierr = be.Close()
	}
	if err := img.Close(); err != nil {
		return fmt.Errorf("closing the image: %w", err)
	}
	if ierr != nil {
		return fmt.Errorf("closing what stood in front of the image: %w", ierr)
	}
	return nil
}

// Activate opens the image (again) and lets the requests waiting for it
// through. The image must have the Disk's size and be writable if the
// Disk is; if not, or if it cannot be opened, the Disk stays inactive.
// Activating an active Disk does nothing.
func (d *Disk) Activate() error {
	d.swap.Lock()
	defer d.swap.Unlock()
	d.mu.Lock()
	active, closed := d.be != nil, d.closed
	d.mu.Unlock()
	if closed {
		return block.ErrClosed
	}
	if active {
		return nil
	}
	be, err := d.open()
	if err != nil {
		return err
	}
	if err := (Facts{Size: d.size.Load(), ReadOnly: d.ro}).check(be); err != nil {
		be.Close()
		return err
	}
	d.mu.Lock()
	d.be, d.img = be, be
	// A drain in force (a reset under way) holds for the new image too.
	if dr, ok := be.(block.Drainer); ok {
		for range d.drained {
			dr.Drain(true)
		}
	}
	d.wakeLocked()
	d.mu.Unlock()
	return nil
}

// wakeLocked tells the waiting requests that something changed; d.mu is
// held.
func (d *Disk) wakeLocked() {
	close(d.changed)
	d.changed = make(chan struct{})
}

// acquire returns the image with swap held for reading (release lets go
// of it), waiting while there is none.
func (d *Disk) acquire() (block.Backend, error) {
	d.swap.RLock()
	if be := d.be; be != nil {
		return be, nil
	}
	d.swap.RUnlock()
	for {
		// changed is read before be is checked: an Activate in between
		// closes this channel, so the wakeup cannot be missed.
		d.mu.Lock()
		changed, closed, drained := d.changed, d.closed, d.drained > 0
		d.mu.Unlock()
		d.swap.RLock()
		if be := d.be; be != nil {
			return be, nil
		}
		d.swap.RUnlock()
		switch {
		case closed:
			return nil, block.ErrClosed
		case drained:
			return nil, block.ErrDrained
		}
		if waitHook != nil {
			waitHook()
		}
		<-changed
	}
}

// waitHook, if set (by tests), is called by each request that is about
// to wait for an image.
var waitHook func()

func (d *Disk) release() { d.swap.RUnlock() }

func (d *Disk) ReadAt(p []byte, off int64) (int, error) {
	be, err := d.acquire()
	if err != nil {
		return 0, err
	}
	defer d.release()
	return be.ReadAt(p, off)
}

func (d *Disk) WriteAt(p []byte, off int64) (int, error) {
	be, err := d.acquire()
	if err != nil {
		return 0, err
	}
	defer d.release()
	return be.WriteAt(p, off)
}

func (d *Disk) ReadvAt(bufs [][]byte, off int64) (int, error) {
	be, err := d.acquire()
	if err != nil {
		return 0, err
	}
	defer d.release()
	return block.ReadvAt(be, bufs, off)
}

// TryReadvAt implements block.TryReader: a try never waits, so it gives
// up (ErrWouldBlock) while there is no image or while one is changing
// hands, and passes the try on to the image otherwise. An image that can
// never serve tries is reported as such, since the image opened after a
// migration is opened the same way; an interposer in front of it (a
// migration copying the disk) only stands there for a while, so its
// refusal is ErrWouldBlock.
func (d *Disk) TryReadvAt(bufs [][]byte, off int64) (int, error) {
	if !d.swap.TryRLock() {
		return 0, block.ErrWouldBlock
	}
	defer d.swap.RUnlock()
	be, img := d.be, d.img
	if be == nil {
		return 0, block.ErrWouldBlock
	}
	t, ok := be.(block.TryReader)
	if !ok {
		if be == img {
			return 0, errNoTry
		}
		return 0, block.ErrWouldBlock
	}
	n, err := t.TryReadvAt(bufs, off)
	if be != img && errors.Is(err, errors.ErrUnsupported) {
		err = block.ErrWouldBlock
	}
	return n, err
}

// errNoTry is TryReadvAt's answer over an image that cannot serve tries.
var errNoTry = fmt.Errorf("the disk's image cannot serve reads without waiting: %w", errors.ErrUnsupported)

func (d *Disk) WritevAt(bufs [][]byte, off int64) (int, error) {
	be, err := d.acquire()
	if err != nil {
		return 0, err
	}
	defer d.release()
	return block.WritevAt(be, bufs, off)
}

func (d *Disk) Flush() error {
	be, err := d.acquire()
	if err != nil {
		return err
	}
	defer d.release()
	return be.Flush()
}

// Discard is passed on; an image without discard ignores it, which a
// discard allows.
func (d *Disk) Discard(off, n int64) error {
	be, err := d.acquire()
	if err != nil {
		return err
	}
	defer d.release()
	if dc, ok := be.(block.Discarder); ok {
		return dc.Discard(off, n)
	}
	return block.CheckRange(off, n, be.Size())
}

// zeroChunk is what an image without WriteZeroes is given at a time.
var zeroChunk = make([]byte, 64<<10)

// WriteZeroes is passed on; an image without it gets the zeroes as data.
func (d *Disk) WriteZeroes(off, n int64, unmap bool) error {
	be, err := d.acquire()
	if err != nil {
		return err
	}
	defer d.release()
	if z, ok := be.(block.ZeroWriter); ok {
		return z.WriteZeroes(off, n, unmap)
	}
	if err := block.CheckRange(off, n, be.Size()); err != nil {
		return err
	}
	for n > 0 {
		k := min(n, int64(len(zeroChunk)))
		if _, err := be.WriteAt(zeroChunk[:k], off); err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return nil
}

// Resize resizes the image; it fails with ErrInactive while there is
// none, rather than wait for it.
func (d *Disk) Resize(size int64) error {
	d.swap.RLock()
	defer d.swap.RUnlock()
	d.mu.Lock()
	be, closed := d.be, d.closed
	d.mu.Unlock()
	switch {
	case closed:
		return block.ErrClosed
	case be == nil:
		return ErrInactive
	case be != d.img:
		return ErrInterposed
	}
	r, ok := be.(block.Resizer)
	if !ok {
		return fmt.Errorf("the image cannot be resized: %w", errors.ErrUnsupported)
	}
	if err := r.Resize(size); err != nil {
		return err
	}
	// The next image opened must have the new size. Concurrent resizes
	// of one disk are the caller's to order, as on any back-end.
	d.size.Store(be.Size())
	return nil
}

// Size is the guest's capacity, image or not.
func (d *Disk) Size() int64 { return d.size.Load() }

// ReadOnly is the front-end's fact, image or not.
func (d *Disk) ReadOnly() bool { return d.ro }

// Drain fails the requests waiting for an image with block.ErrDrained,
// and passes the drain on to the image.
func (d *Disk) Drain(on bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if on {
		d.drained++
	} else if d.drained > 0 {
		d.drained--
	} else {
		return
	}
	if dr, ok := d.be.(block.Drainer); ok {
		dr.Drain(on)
	}
	d.wakeLocked()
}

// Close closes the image, if one is open, and fails the requests waiting
// for one with block.ErrClosed.
func (d *Disk) Close() error {
	d.swap.Lock()
	defer d.swap.Unlock()
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return block.ErrClosed
	}
	be, img := d.be, d.img
	d.be, d.img, d.closed = nil, nil, true
	d.wakeLocked()
	d.mu.Unlock()
	if be != nil {
		return closeStack(be, img)
	}
	return nil
}

// Interpose puts an interposer in front of the open image while the guest
// runs: wrap gets the image behind a view whose Close only flushes (the
// Disk keeps owning the image) and returns the back-end every request goes
// to from then on. It switches once no request is on the image, so the
// interposer sees every request that starts after it. A migration that
// copies the disk puts a mirror there (vmm/diskcopy.go).
//
// The interposer must honour the capabilities the front-end was built
// with, or serve without them within the contract (as an image without
// them is: a discard ignored, zeroes written as data); Resize fails with
// ErrInterposed while it stands. Deactivate and Close close it, then the
// image; Activate opens the bare image. It fails with ErrInactive while
// no image is open, when an interposer is there already and while a
// reset drains the disk; if wrap fails, nothing changes. Drains reach
// the image through the interposer, which must pass them on.
func (d *Disk) Interpose(wrap func(img block.Backend) (block.Backend, error)) error {
	d.swap.Lock()
	defer d.swap.Unlock()
	d.mu.Lock()
	be, img, closed, drained := d.be, d.img, d.closed, d.drained
	d.mu.Unlock()
	switch {
	case closed:
		return block.ErrClosed
	case be == nil:
		return ErrInactive
	case be != img:
		return errors.New("the disk has an interposer already")
	case drained > 0:
		// The image counts the drains in force, and an interposer that
		// passes drains on would count them again.
		return errors.New("the disk is being reset by the guest; try again")
	}
	front, err := wrap(filter.View(&keepOpen{filter.Base{Child: img}}, filter.CapsOf(img)))
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.be = front
	d.mu.Unlock()
	return nil
}

// Withdraw takes the interposer out, once no request is on it, and closes
// it (leaving the image open: its Close error is returned, but requests
// go to the image from then on either way). Without an interposer, or
// with no image open, it does nothing.
func (d *Disk) Withdraw() error {
	d.swap.Lock()
	defer d.swap.Unlock()
	d.mu.Lock()
	front, img := d.be, d.img
	if front == nil || front == img {
		d.mu.Unlock()
		return nil
	}
	d.be = img
	d.mu.Unlock()
	return front.Close()
}

// Interposed reports whether an interposer stands in front of the image.
func (d *Disk) Interposed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.be != d.img
}

// keepOpen is the image as an interposer sees it: closing it flushes, and
// the Disk closes the image itself.
type keepOpen struct{ filter.Base }

func (k *keepOpen) Close() error { return k.Child.Flush() }
