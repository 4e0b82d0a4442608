package raw

import (
	"errors"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestFlushErrorLatches injects one failed fdatasync (as a writeback
// error gives) and checks that the failure is never forgotten: every later
// Flush and every write fails with it, though fdatasync itself would now
// succeed, until the image is reopened.
func TestFlushErrorLatches(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.raw")
	f, err := Create(path, 1<<20, Options{})
	if err != nil {
		t.Fatal(err)
	}
	calls, fail := 0, true
	fdatasync = func(fd int) error {
		calls++
		if fail {
			fail = false // the kernel reports a writeback error once
			return unix.EIO
		}
		return nil
	}
	t.Cleanup(func() { fdatasync = unix.Fdatasync })

	if _, err := f.WriteAt([]byte("data"), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Flush(); !errors.Is(err, unix.EIO) {
		t.Fatalf("Flush with a failing fdatasync: %v, want EIO", err)
	}
	for i := range 3 {
		if err := f.Flush(); !errors.Is(err, unix.EIO) {
			t.Fatalf("Flush %d after the failure: %v, want the original EIO", i+2, err)
		}
	}
	if _, err := f.WriteAt([]byte("more"), 512); !errors.Is(err, unix.EIO) {
		t.Errorf("write after the failure: %v, want EIO", err)
	}
	if err := f.WriteZeroes(0, 4096, false); !errors.Is(err, unix.EIO) {
		t.Errorf("WriteZeroes after the failure: %v, want EIO", err)
	}
	if err := f.Discard(0, 4096); !errors.Is(err, unix.EIO) {
		t.Errorf("Discard after the failure: %v, want EIO", err)
	}
	if err := f.Resize(2 << 20); !errors.Is(err, unix.EIO) {
		t.Errorf("Resize after the failure: %v, want EIO", err)
	}
	if calls != 1 {
		t.Errorf("fdatasync called %d times; after the failure it must not be asked again", calls)
	}
	buf := make([]byte, 4)
	if _, err := f.ReadAt(buf, 0); err != nil {
		t.Errorf("reads still work: %v", err)
	}
	if err := f.Close(); !errors.Is(err, unix.EIO) {
		t.Errorf("Close: %v, want the latched EIO", err)
	}

	g, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.WriteAt([]byte("again"), 0); err != nil {
		t.Errorf("write after reopening: %v", err)
	}
	if err := g.Close(); err != nil {
		t.Errorf("flush after reopening: %v", err)
	}
}
