package handoff

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/raw"
)

// A try is served by an image that can serve it, and never waits: with
// no image, with the image changing hands, or with an interposer that
// cannot pass tries on in front, it gives up with ErrWouldBlock. An image
// that can never serve tries makes them unsupported.
func TestTryRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.raw")
	open := func() (block.Backend, error) { return raw.Open(path, raw.Options{}) }
	f, err := raw.Create(path, 1<<20, raw.Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := []byte("in the page cache")
	if _, err := f.WriteAt(want, 8192); err != nil {
		t.Fatal(err)
	}
	b := New(f, open)
	defer b.Close()
	d := Of(b)
	tr := b.(block.TryReader)
	got := make([]byte, len(want))
	try := func() error {
		clear(got)
		_, err := tr.TryReadvAt([][]byte{got}, 8192)
		if err == nil && !bytes.Equal(got, want) {
			t.Fatalf("try read %q, want %q", got, want)
		}
		return err
	}
	if err := try(); err != nil {
		t.Fatalf("try on the image: %v", err)
	}

	d.swap.Lock() // as Deactivate, Activate and Interpose hold it
	err = try()
	d.swap.Unlock()
	if !errors.Is(err, block.ErrWouldBlock) {
		t.Fatalf("try while the image changes hands: %v, want ErrWouldBlock", err)
	}

	if err := d.Deactivate(); err != nil {
		t.Fatal(err)
	}
	if err := try(); !errors.Is(err, block.ErrWouldBlock) {
		t.Fatalf("try without an image: %v, want ErrWouldBlock", err)
	}
	if err := d.Activate(); err != nil {
		t.Fatal(err)
	}
	if err := try(); err != nil {
		t.Fatalf("try on the image opened again: %v", err)
	}

	s := newStore(1 << 20)
	interposeTee(t, d, s) // filter.Base: cannot pass tries on
	if err := try(); !errors.Is(err, block.ErrWouldBlock) {
		t.Fatalf("try through an interposer: %v, want ErrWouldBlock", err)
	}
	if err := d.Withdraw(); err != nil {
		t.Fatal(err)
	}
	if err := try(); err != nil {
		t.Fatalf("try after the interposer left: %v", err)
	}

	be, _ := s.open() // a view: no TryReader
	nb := New(be, s.open)
	if _, err := nb.(block.TryReader).TryReadvAt([][]byte{got}, 0); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("try over an image without tries: %v, want ErrUnsupported", err)
	}
}
