package raw_test

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/block/raw"
)

// TestOpenRefusesNonImages: a FIFO as a disk path is refused at once (its
// open would wait for a writer forever, read-only or not), as are a
// socket, a character device and a directory; each error names the kind.
func TestOpenRefusesNonImages(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for path, want := range map[string]string{fifo: "FIFO", sock: "socket", "/dev/null": "character device", dir: "directory"} {
		for _, ro := range []bool{true, false} {
			if !ro && path == dir {
				continue // EISDIR from the open itself
			}
			done := make(chan error, 1)
			go func() {
				f, err := raw.Open(path, raw.Options{ReadOnly: ro})
				if err == nil {
					f.Close()
				}
				done <- err
			}()
			select {
			case err := <-done:
				if path == sock && err != nil && !errors.Is(err, raw.ErrNotImage) {
					continue // a socket cannot even be opened (ENXIO): refused either way
				}
				if !errors.Is(err, raw.ErrNotImage) || !strings.Contains(err.Error(), want) {
					t.Errorf("Open(%s, read-only %v): %v, want %s refused", path, ro, err, want)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("Open(%s, read-only %v) hangs", path, ro)
			}
		}
	}
	// A regular file still opens, and its reads block as usual (the
	// non-blocking open is not left on the descriptor).
	img := filepath.Join(dir, "img")
	if err := os.WriteFile(img, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := raw.Open(img, raw.Options{})
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	f, err := raw.OpenImageFile(img, os.O_RDWR)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
	if err != nil || fl&unix.O_NONBLOCK != 0 {
		t.Fatalf("flags %#x, %v: O_NONBLOCK left on", fl, err)
	}
}
