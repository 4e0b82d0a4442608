package handoff

import (
	"bytes"
	"errors"
	"path/filepath"
	"sync"
	"testing"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/block/filter"
	"github.com/viovmm/vio/block/image"
	"github.com/viovmm/vio/block/raw"
)

// store is storage that outlives the back-ends opened on it, as an image
// file outlives its descriptors: open returns a new view each time, and
// closing a view leaves the storage alone. It logs what reaches it.
type store struct {
	mem *blocktest.Mem

	mu       sync.Mutex
	log      []string
	opens    int
	flushErr error // the views' Flush fails with it
}

func newStore(size int64) *store { return &store{mem: blocktest.NewMem(size)} }

func (s *store) note(op string) {
	s.mu.Lock()
	s.log = append(s.log, op)
	s.mu.Unlock()
}

func (s *store) ops() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.log...)
}

func (s *store) open() (block.Backend, error) {
	s.mu.Lock()
	s.opens++
	s.mu.Unlock()
	s.note("open")
	return &view{s: s}, nil
}

// view is one open of a store, with every capability Mem has.
type view struct {
	s      *store
	closed bool
}

func (v *view) ReadAt(p []byte, off int64) (int, error)  { return v.s.mem.ReadAt(p, off) }
func (v *view) WriteAt(p []byte, off int64) (int, error) { return v.s.mem.WriteAt(p, off) }
func (v *view) Size() int64                              { return v.s.mem.Size() }
func (v *view) Discard(off, n int64) error               { return v.s.mem.Discard(off, n) }
func (v *view) WriteZeroes(off, n int64, u bool) error   { return v.s.mem.WriteZeroes(off, n, u) }
func (v *view) Resize(size int64) error                  { return v.s.mem.Resize(size) }
func (v *view) Flush() error {
	v.s.mu.Lock()
	err := v.s.flushErr
	v.s.mu.Unlock()
	if err != nil {
		return err
	}
	v.s.note("flush")
	return nil
}
func (v *view) Close() error {
	if v.closed {
		return block.ErrClosed
	}
	v.closed = true
	v.s.note("close")
	return nil
}

// The contract holds for a Disk serving its first image and for one that
// was released and took a new image of the same storage.
func TestContract(t *testing.T) {
	t.Run("first", func(t *testing.T) {
		blocktest.Run(t, func(t *testing.T, size int64) block.Backend {
			s := newStore(size)
			be, _ := s.open()
			return New(be, s.open)
		})
	})
	t.Run("handed back", func(t *testing.T) {
		blocktest.Run(t, func(t *testing.T, size int64) block.Backend {
			s := newStore(size)
			be, _ := s.open()
			b := New(be, s.open)
			if err := Of(b).Deactivate(); err != nil {
				t.Fatal(err)
			}
			if err := Of(b).Activate(); err != nil {
				t.Fatal(err)
			}
			return b
		})
	})
}

// waiting returns a channel that hears of each request that starts to
// wait for an image, for the test's duration.
func waiting(t *testing.T) <-chan struct{} {
	c := make(chan struct{}, 16)
	waitHook = func() { c <- struct{}{} }
	t.Cleanup(func() { waitHook = nil })
	return c
}

// A request on a Disk without an image waits for Activate, then is
// served by the image Activate opened: nothing fails, nothing is lost.
func TestRequestsWaitForTheImage(t *testing.T) {
	waits := waiting(t)
	s := newStore(1 << 20)
	s.mem.WriteAt([]byte("written by the source"), 4096)
	b := NewInactive(Facts{Size: 1 << 20, Caps: filter.Caps{Discard: true, WriteZeroes: true, Resize: true}}, s.open)
	d := Of(b)
	if d.Active() {
		t.Fatal("an inactive Disk says it is active")
	}
	type result struct {
		data string
		err  error
	}
	read := make(chan result, 1)
	go func() {
		p := make([]byte, 21)
		_, err := b.ReadAt(p, 4096)
		read <- result{string(p), err}
	}()
	wrote := make(chan error, 1)
	go func() {
		_, err := b.WriteAt([]byte("written by the destination"), 8192)
		wrote <- err
	}()
	<-waits
	<-waits
	if len(s.ops()) != 0 {
		t.Fatalf("the storage was touched before Activate: %v", s.ops())
	}
	if err := d.Activate(); err != nil {
		t.Fatal(err)
	}
	if r := <-read; r.err != nil || r.data != "written by the source" {
		t.Fatalf("the waiting read got %q, %v", r.data, r.err)
	}
	if err := <-wrote; err != nil {
		t.Fatalf("the waiting write: %v", err)
	}
	got := make([]byte, 26)
	s.mem.ReadAt(got, 8192)
	if string(got) != "written by the destination" {
		t.Fatalf("the storage has %q after the waiting write", got)
	}
	if err := d.Activate(); err != nil || s.opens != 1 {
		t.Fatalf("a second Activate: %v, %d opens", err, s.opens)
	}
}

// A reset drains the device: requests waiting for an image fail with
// ErrDrained, and so do those that come while the drain holds; Close
// fails them with ErrClosed. A drain in force reaches the image Activate
// opens.
func TestWaitersDrainedAndClosed(t *testing.T) {
	waits := waiting(t)
	s := newStore(1 << 20)
	b := NewInactive(Facts{Size: 1 << 20}, s.open)
	errc := make(chan error, 1)
	go func() {
		_, err := b.ReadAt(make([]byte, 512), 0)
		errc <- err
	}()
	<-waits
	dr := b.(block.Drainer)
	dr.Drain(true)
	if err := <-errc; !errors.Is(err, block.ErrDrained) {
		t.Fatalf("a waiting request at the drain: %v", err)
	}
	if err := b.Flush(); !errors.Is(err, block.ErrDrained) {
		t.Fatalf("a request while drained: %v", err)
	}
	dr.Drain(false)
	go func() {
		errc <- b.Flush()
	}()
	<-waits
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, block.ErrClosed) {
		t.Fatalf("a waiting request at Close: %v", err)
	}
	if err := Of(b).Activate(); !errors.Is(err, block.ErrClosed) {
		t.Fatalf("Activate after Close: %v", err)
	}
	if len(s.ops()) != 0 {
		t.Fatalf("a Disk that never had an image touched the storage: %v", s.ops())
	}

	// Drained with no image, then activated: the image is drained too.
	s2 := newStore(1 << 20)
	var counted drainCount
	b2 := NewInactive(Facts{Size: 1 << 20}, func() (block.Backend, error) {
		be, _ := s2.open()
		return &drainCounting{Backend: be, n: &counted}, nil
	})
	b2.(block.Drainer).Drain(true)
	if err := Of(b2).Activate(); err != nil {
		t.Fatal(err)
	}
	if counted.get() != 1 {
		t.Fatalf("the image has %d drains in force after Activate, want 1", counted.get())
	}
	b2.(block.Drainer).Drain(false)
	if counted.get() != 0 {
		t.Fatalf("the image has %d drains in force after the drain ended", counted.get())
	}
	b2.Close()
}

type drainCount struct {
	mu sync.Mutex
	n  int
}

func (c *drainCount) get() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

type drainCounting struct {
	block.Backend
	n *drainCount
}

func (d *drainCounting) Drain(on bool) {
	d.n.mu.Lock()
	defer d.n.mu.Unlock()
	if on {
		d.n.n++
	} else {
		d.n.n--
	}
}

// Deactivate flushes the image before it closes it; a flush that fails
// leaves the image open and in use, and says so.
func TestDeactivateFlushesFirst(t *testing.T) {
	s := newStore(1 << 20)
	be, _ := s.open()
	b := New(be, s.open)
	d := Of(b)
	s.flushErr = errors.New("EIO")
	if err := d.Deactivate(); err == nil || !errors.Is(err, s.flushErr) {
		t.Fatalf("Deactivate with a failing flush: %v", err)
	}
	if !d.Active() {
		t.Fatal("the Disk let its image go after a failed flush")
	}
	if _, err := b.WriteAt([]byte("x"), 0); err != nil {
		t.Fatalf("the image is not in use after the failed release: %v", err)
	}
	s.flushErr = nil
	if err := d.Deactivate(); err != nil {
		t.Fatal(err)
	}
	if got := s.ops(); len(got) != 3 || got[1] != "flush" || got[2] != "close" {
		t.Fatalf("the storage saw %v, want open, flush, close", got)
	}
	if err := d.Deactivate(); err != nil || len(s.ops()) != 3 {
		t.Fatalf("a second Deactivate: %v, storage saw %v", err, s.ops())
	}
	if err := b.(block.Resizer).Resize(2 << 20); !errors.Is(err, ErrInactive) {
		t.Fatalf("Resize without an image: %v", err)
	}
}

// Activate refuses an image that is not the disk the front-end was built
// on: another size, or read-only under a writable disk. The Disk stays
// inactive, and the refused image is closed.
func TestActivateChecksTheImage(t *testing.T) {
	small := newStore(1 << 19)
	b := NewInactive(Facts{Size: 1 << 20}, small.open)
	if err := Of(b).Activate(); err == nil || Of(b).Active() {
		t.Fatalf("an image of another size: %v", err)
	}
	if got := small.ops(); len(got) != 2 || got[1] != "close" {
		t.Fatalf("the refused image was not closed: %v", got)
	}
	ro := newStore(1 << 20)
	b = NewInactive(Facts{Size: 1 << 20}, func() (block.Backend, error) {
		be, _ := ro.open()
		return readOnly{be}, nil
	})
	if err := Of(b).Activate(); err == nil || Of(b).Active() {
		t.Fatalf("a read-only image under a writable disk: %v", err)
	}
	b = NewInactive(Facts{Size: 1 << 20, ReadOnly: true}, func() (block.Backend, error) {
		be, _ := ro.open()
		return readOnly{be}, nil
	})
	if err := Of(b).Activate(); err != nil {
		t.Fatalf("a read-only image under a read-only disk: %v", err)
	}
	if !b.(block.ReadOnlyReporter).ReadOnly() {
		t.Fatal("a read-only disk reports writable")
	}

	// A resize moves the size the next image must have.
	s := newStore(1 << 20)
	be, _ := s.open()
	b = New(be, s.open)
	if err := b.(block.Resizer).Resize(2 << 20); err != nil {
		t.Fatal(err)
	}
	if b.Size() != 2<<20 {
		t.Fatalf("size %d after a resize to 2 MiB", b.Size())
	}
	if err := Of(b).Deactivate(); err != nil {
		t.Fatal(err)
	}
	s.mem.Resize(1 << 20) // someone shrank it meanwhile
	if err := Of(b).Activate(); err == nil {
		t.Fatal("an image that shrank while released was taken")
	}
}

type readOnly struct{ block.Backend }

func (readOnly) ReadOnly() bool { return true }

// bare is an image with no optional capability.
type bare struct{ m *blocktest.Mem }

func (b bare) ReadAt(p []byte, off int64) (int, error)  { return b.m.ReadAt(p, off) }
func (b bare) WriteAt(p []byte, off int64) (int, error) { return b.m.WriteAt(p, off) }
func (b bare) Flush() error                             { return nil }
func (b bare) Size() int64                              { return b.m.Size() }
func (b bare) Close() error                             { return nil }

// The front-end keeps the capabilities it was built with: an image that
// lacks discard ignores it (discard is advisory) and one that lacks write
// zeroes gets zeroes written, range checks included. The Backend shows
// exactly the facts' capabilities.
func TestCapabilitiesKept(t *testing.T) {
	m := blocktest.NewMem(1 << 20)
	m.WriteAt(bytes.Repeat([]byte{0xaa}, 1<<20), 0)
	b := NewInactive(Facts{Size: 1 << 20, Caps: filter.Caps{Discard: true, WriteZeroes: true}}, func() (block.Backend, error) { return bare{m}, nil })
	if _, ok := b.(block.Resizer); ok {
		t.Fatal("the Disk offers resize, which its facts do not have")
	}
	if err := Of(b).Activate(); err != nil {
		t.Fatal(err)
	}
	if err := b.(block.Discarder).Discard(0, 4096); err != nil {
		t.Fatalf("discard on an image without it: %v", err)
	}
	if err := b.(block.ZeroWriter).WriteZeroes(4096, 100<<10, true); err != nil {
		t.Fatalf("write zeroes on an image without it: %v", err)
	}
	got := m.Bytes()
	if !bytes.Equal(got[4096:4096+100<<10], make([]byte, 100<<10)) || got[4095] != 0xaa || got[4096+100<<10] != 0xaa {
		t.Fatal("the zeroes did not land exactly on the range")
	}
	if err := b.(block.ZeroWriter).WriteZeroes(1<<20-512, 1024, false); !errors.Is(err, block.ErrOutOfRange) {
		t.Fatalf("write zeroes past the end: %v", err)
	}
	if err := b.(block.Discarder).Discard(-1, 10); !errors.Is(err, block.ErrOutOfRange) {
		t.Fatalf("discard at a negative offset: %v", err)
	}
}

// Real image files, real locks: while a Disk holds a writable image, a
// second writer (another process, as OFD locks see it: another open file
// description) is refused; once released it gets in, and everything
// written through the Disk is there (a qcow2 image's clusters allocated
// through it included, whose tables the release flushed); the Disk then
// cannot take the image back until the other lets go.
func TestLocksChangeHands(t *testing.T) {
	for _, format := range []string{image.Raw, image.Qcow2} {
		t.Run(format, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "disk."+format)
			if err := image.Create(path, image.CreateOptions{Format: format, Size: 8 << 20}); err != nil {
				t.Fatal(err)
			}
			open := func() (block.Backend, error) {
				return image.Open(path, image.OpenOptions{Format: format, Cache: raw.Writeback, Lock: true})
			}
			img, err := open()
			if err != nil {
				t.Fatal(err)
			}
			b := New(img, open)
			defer b.Close()
			d := Of(b)
			if other, err := open(); !errors.Is(err, raw.ErrLocked) {
				if other != nil {
					other.Close()
				}
				t.Fatalf("a second writer while the Disk holds the image: %v", err)
			}
			data := bytes.Repeat([]byte("handed over "), 4096)
			if _, err := b.WriteAt(data, 3<<20); err != nil {
				t.Fatal(err)
			}
			if err := d.Deactivate(); err != nil {
				t.Fatal(err)
			}
			other, err := open()
			if err != nil {
				t.Fatalf("the image is still locked after the release: %v", err)
			}
			got := make([]byte, len(data))
			if _, err := other.ReadAt(got, 3<<20); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("the other opener does not read what was written before the release (%v)", err)
			}
			if err := d.Activate(); !errors.Is(err, raw.ErrLocked) || d.Active() {
				t.Fatalf("Activate while another holds the image: %v", err)
			}
			if _, err := other.WriteAt([]byte("the other's"), 0); err != nil {
				t.Fatal(err)
			}
			if err := other.Close(); err != nil {
				t.Fatal(err)
			}
			if err := d.Activate(); err != nil {
				t.Fatalf("Activate once the other let go: %v", err)
			}
			got = got[:11]
			if _, err := b.ReadAt(got, 0); err != nil || string(got) != "the other's" {
				t.Fatalf("the Disk reads %q (%v), not what the other wrote: stale metadata?", got, err)
			}
		})
	}
}
