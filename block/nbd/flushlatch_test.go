package nbd

import (
	"errors"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
)

// failOnce is a back-end whose first Flush fails as a disk's writeback
// error does, and whose later flushes succeed (as fdatasync's do on Linux
// after reporting the error once).
type failOnce struct {
	block.Backend
	failed atomic.Bool
}

func (f *failOnce) Flush() error {
	if f.failed.CompareAndSwap(false, true) {
		return syscall.EIO
	}
	return f.Backend.Flush()
}

// TestClientLatchesRemoteFlushError: once the server reports a failed
// flush, every later Flush and write through the client fails, though the
// server's next flush would succeed.
func TestClientLatchesRemoteFlushError(t *testing.T) {
	be := &failOnce{Backend: blocktest.NewMem(1 << 20)}
	_, sock := serve(t, Export{Name: "d", Backend: be})
	c := dial(t, unixURI(sock, "d"), Options{})
	defer c.Close()
	if _, err := c.WriteAt([]byte("data"), 0); err != nil {
		t.Fatal(err)
	}
	err := c.Flush()
	var re *RemoteError
	if !errors.As(err, &re) || re.Errno != syscall.EIO {
		t.Fatalf("Flush over a failing disk: %v, want a remote EIO", err)
	}
	for i := range 2 {
		if err2 := c.Flush(); !errors.As(err2, &re) {
			t.Fatalf("Flush %d after the failure: %v, want the remote EIO again", i+2, err2)
		}
	}
	if _, err := c.WriteAt([]byte("more"), 512); !errors.As(err, &re) {
		t.Errorf("write after the failure: %v, want the remote EIO", err)
	}
	if err := c.WriteZeroes(0, 4096, false); !errors.As(err, &re) {
		t.Errorf("WriteZeroes after the failure: %v, want the remote EIO", err)
	}
}
