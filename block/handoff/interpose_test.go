package handoff

import (
	"bytes"
	"errors"
	"slices"
	"testing"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/block/filter"
)

// tee is an interposer that copies every write to a second store, as a
// mirror does to the child it rebuilds, and notes its own close.
type tee struct {
	filter.Base
	copy   *blocktest.Mem
	s      *store
	closed bool
}

func (t *tee) WriteAt(p []byte, off int64) (int, error) {
	if _, err := t.copy.WriteAt(p, off); err != nil {
		return 0, err
	}
	return t.Child.WriteAt(p, off)
}

func (t *tee) WritevAt(bufs [][]byte, off int64) (int, error) {
	return t.WriteAt(bytes.Join(bufs, nil), off)
}

func (t *tee) Close() error {
	t.closed = true
	t.s.note("tee close")
	return t.Child.Close()
}

func interposeTee(t *testing.T, d *Disk, s *store) *tee {
	t.Helper()
	var tt *tee
	err := d.Interpose(func(img block.Backend) (block.Backend, error) {
		tt = &tee{Base: filter.Base{Child: img}, copy: blocktest.NewMem(img.Size()), s: s}
		return filter.View(tt, filter.CapsOf(img)), nil
	})
	if err != nil {
		t.Fatalf("Interpose: %v", err)
	}
	return tt
}

// While an interposer stands, every write goes through it to the image;
// Withdraw closes it without closing the image, and writes go straight
// to the image again.
func TestInterposeAndWithdraw(t *testing.T) {
	s := newStore(1 << 20)
	be, _ := s.open()
	b := New(be, s.open)
	d := Of(b)
	tt := interposeTee(t, d, s)
	if !d.Interposed() {
		t.Fatal("Interposed is false with a tee in front")
	}
	write := func(p string, off int64) {
		t.Helper()
		if _, err := b.WriteAt([]byte(p), off); err != nil {
			t.Fatal(err)
		}
	}
	write("through the tee", 4096)
	got := make([]byte, 15)
	tt.copy.ReadAt(got, 4096)
	if string(got) != "through the tee" {
		t.Fatalf("the tee's copy holds %q", got)
	}
	if err := b.(block.Resizer).Resize(2 << 20); !errors.Is(err, ErrInterposed) {
		t.Fatalf("Resize with an interposer: %v", err)
	}
	if err := d.Withdraw(); err != nil {
		t.Fatal(err)
	}
	if !tt.closed || d.Interposed() {
		t.Fatalf("after Withdraw: tee closed %v, interposed %v", tt.closed, d.Interposed())
	}
	// The tee's Close reached the image as a flush, not a close.
	if ops := s.ops(); slices.Contains(ops, "close") || !slices.Contains(ops, "flush") {
		t.Fatalf("the storage saw %v: the image must be flushed, not closed, by the interposer's close", ops)
	}
	write("straight", 8192)
	tt.copy.ReadAt(got[:8], 8192)
	if bytes.Equal(got[:8], []byte("straight")) {
		t.Fatal("a write after Withdraw reached the tee")
	}
	s.mem.ReadAt(got, 4096)
	if string(got) != "through the tee" {
		t.Fatalf("the image holds %q", got)
	}
	if err := d.Withdraw(); err != nil {
		t.Fatalf("a second Withdraw: %v", err)
	}
	if err := b.(block.Resizer).Resize(2 << 20); err != nil {
		t.Fatalf("Resize once the tee is gone: %v", err)
	}
}

// Deactivate closes the interposer and then the image, each once; the
// image Activate opens again has no interposer.
func TestDeactivateClosesTheInterposerFirst(t *testing.T) {
	s := newStore(1 << 20)
	be, _ := s.open()
	b := New(be, s.open)
	d := Of(b)
	interposeTee(t, d, s)
	if err := d.Deactivate(); err != nil {
		t.Fatal(err)
	}
	ops := s.ops()
	i, j := slices.Index(ops, "tee close"), slices.Index(ops, "close")
	if i < 0 || j < i || slices.Index(ops[j+1:], "close") >= 0 {
		t.Fatalf("the storage saw %v, want the tee closed, then the image closed once", ops)
	}
	if err := d.Activate(); err != nil {
		t.Fatal(err)
	}
	if d.Interposed() {
		t.Fatal("the image opened again has an interposer")
	}
	interposeTee(t, d, s)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(slices.DeleteFunc(s.ops(), func(o string) bool { return o != "close" })); n != 2 {
		t.Fatalf("the storage saw %v: want each of the two images closed once", s.ops())
	}
}

// Interpose refuses a Disk without an image, a second interposer and a
// disk being reset; a wrap that fails changes nothing.
func TestInterposeRefuses(t *testing.T) {
	s := newStore(1 << 20)
	be, _ := s.open()
	b := New(be, s.open)
	d := Of(b)
	boom := errors.New("boom")
	if err := d.Interpose(func(block.Backend) (block.Backend, error) { return nil, boom }); !errors.Is(err, boom) || d.Interposed() {
		t.Fatalf("a failing wrap: %v, interposed %v", err, d.Interposed())
	}
	b.(block.Drainer).Drain(true)
	if err := d.Interpose(func(img block.Backend) (block.Backend, error) { return img, nil }); err == nil {
		t.Fatal("Interpose during a drain succeeded")
	}
	b.(block.Drainer).Drain(false)
	interposeTee(t, d, s)
	if err := d.Interpose(func(img block.Backend) (block.Backend, error) { return img, nil }); err == nil {
		t.Fatal("a second Interpose succeeded")
	}
	if err := d.Deactivate(); err != nil {
		t.Fatal(err)
	}
	if err := d.Interpose(func(img block.Backend) (block.Backend, error) { return img, nil }); !errors.Is(err, ErrInactive) {
		t.Fatalf("Interpose without an image: %v", err)
	}
}

// The blocktest contract holds through an interposer (on an image that
// cannot resize: Resize is refused while one stands).
func TestContractInterposed(t *testing.T) {
	blocktest.Run(t, func(t *testing.T, size int64) block.Backend {
		s := newStore(size)
		be, _ := s.open()
		b := New(filter.View(&filter.Base{Child: be}, filter.Caps{Discard: true, WriteZeroes: true}), s.open)
		interposeTee(t, Of(b), s)
		return b
	})
}
