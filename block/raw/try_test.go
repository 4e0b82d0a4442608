package raw

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/block"
)

// TestTryRead checks the three answers of a non-blocking read against the
// real page cache: served when the pages are cached, ErrWouldBlock once
// they are dropped (and served again after a blocking read brought them
// back), and unsupported under O_DIRECT.
func TestTryRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.raw")
	f, err := Create(path, 1<<20, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	if _, err := f.WriteAt(want, 128<<10); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	// Two buffers, so the vectored path is the one tried.
	if n, err := f.TryReadvAt([][]byte{got[:5000], got[5000:]}, 128<<10); err != nil || n != len(want) || !bytes.Equal(got, want) {
		t.Fatalf("try of cached data = %d, %v (equal %v)", n, err, bytes.Equal(got, want))
	}

	// Written back and dropped from the cache: the try must not read the disk.
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fadvise(f.fd, 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	clear(got)
	if n, err := f.TryReadvAt([][]byte{got}, 128<<10); !errors.Is(err, block.ErrWouldBlock) {
		t.Fatalf("try of dropped pages = %d, %v; want ErrWouldBlock", n, err)
	}
	if _, err := f.ReadvAt([][]byte{got}, 128<<10); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("blocking read after the try: %v", err)
	}
	clear(got)
	if n, err := f.TryReadvAt([][]byte{got}, 128<<10); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("try after the blocking read = %d, %v", n, err)
	}

	// Past the end: left to ReadvAt.
	if _, err := f.TryReadvAt([][]byte{make([]byte, 1024)}, f.Size()-512); !errors.Is(err, block.ErrWouldBlock) {
		t.Fatalf("try past the end: %v, want ErrWouldBlock", err)
	}
}

func TestTryReadDirect(t *testing.T) {
	f, err := Create(filepath.Join(t.TempDir(), "disk.raw"), 1<<20, Options{Cache: None})
	if err != nil {
		t.Skipf("O_DIRECT unavailable here: %v", err)
	}
	defer f.Close()
	if _, err := f.TryReadvAt([][]byte{make([]byte, 4096)}, 0); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("try under O_DIRECT: %v, want ErrUnsupported", err)
	}
}

func TestTryReadClosed(t *testing.T) {
	f, err := Create(filepath.Join(t.TempDir(), "disk.raw"), 1<<20, Options{})
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := f.TryReadvAt([][]byte{make([]byte, 512)}, 0); !errors.Is(err, block.ErrClosed) {
		t.Fatalf("try after Close: %v, want ErrClosed", err)
	}
}
