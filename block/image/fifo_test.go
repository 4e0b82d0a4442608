package image

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/block/raw"
)

// TestFIFODiskRefused: a FIFO given as a disk, probed or with its format,
// is refused at once instead of hanging start-up in the open.
func TestFIFODiskRefused(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "disk")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"", Raw, Qcow2} {
		done := make(chan error, 1)
		go func() {
			b, err := Open(fifo, OpenOptions{Format: format, ReadOnly: true})
			if err == nil {
				b.Close()
			}
			done <- err
		}()
		select {
		case err := <-done:
			if !errors.Is(err, raw.ErrNotImage) {
				t.Errorf("format %q: %v, want ErrNotImage", format, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("format %q: opening a FIFO hangs", format)
		}
	}
}
