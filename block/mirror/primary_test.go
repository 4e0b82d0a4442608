package mirror_test

import (
	"bytes"
	"errors"
	"syscall"
	"testing"

	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/block/faults"
	"github.com/viovmm/vio/block/mirror"
)

// With Primary, slot 0 is the disk of record: a write or read it fails
// fails (it is never dropped in favour of a copy that has the data), reads
// come from it alone, and it cannot be removed; a copy that fails is
// dropped as usual, the guest seeing nothing.
func TestPrimary(t *testing.T) {
	const size = 1 << 20
	a, b := blocktest.NewMem(size), blocktest.NewMem(size)
	fa, fb := faults.New(a, 1), faults.New(b, 2)
	var ev recorder
	mb := open(t, mirror.Options{Primary: true, AssumeClean: true, Region: 64 << 10, Events: ev.add}, fa, fb)
	defer mb.Close()
	m := mirror.Of(mb)

	// Reads come from slot 0 even when slot 1 is idle and in sync: give
	// the copy other bytes, which no read may return.
	if _, err := b.WriteAt([]byte("copy's"), 0); err != nil {
		t.Fatal(err)
	}
	for range 8 {
		got := make([]byte, 6)
		if _, err := mb.ReadAt(got, 0); err != nil || !bytes.Equal(got, make([]byte, 6)) {
			t.Fatalf("read %q, %v: want slot 0's zeroes", got, err)
		}
	}

	faults.Of(fa).AddRule(faults.Rule{Ops: faults.Write, Errno: syscall.EIO, Times: 1})
	if _, err := mb.WriteAt([]byte("x"), 4096); !errors.Is(err, syscall.EIO) {
		t.Fatalf("a write slot 0 failed: %v, want EIO", err)
	}
	faults.Of(fa).AddRule(faults.Rule{Ops: faults.Read, Errno: syscall.EIO, Times: 1})
	if _, err := mb.ReadAt(make([]byte, 1), 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("a read slot 0 failed: %v, want EIO", err)
	}
	if st := m.Status(); st.Children[0].State != "in-sync" || st.Children[1].State != "in-sync" {
		t.Fatalf("after slot 0's failures: %+v, want both in sync", st.Children)
	}
	if err := m.Remove(0); err == nil {
		t.Fatal("slot 0 was removed")
	}

	faults.Of(fb).AddRule(faults.Rule{Ops: faults.Write, Errno: syscall.EIO, Times: 1})
	if _, err := mb.WriteAt([]byte("y"), 8192); err != nil {
		t.Fatalf("a write only the copy failed: %v", err)
	}
	if st := m.Status(); st.Children[0].State != "in-sync" || st.Children[1].State != "failed" || ev.count("child-failed") != 1 {
		t.Fatalf("after the copy's failure: %+v, events %v", st.Children, ev.evs)
	}
	got := make([]byte, 1)
	a.ReadAt(got, 8192)
	if got[0] != 'y' {
		t.Fatalf("slot 0 holds %q, want the write", got)
	}
}
