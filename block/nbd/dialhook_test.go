package nbd

import (
	"bytes"
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/viovmm/vio/block/blocktest"
)

// Options.Dial opens every connection, the first and a reconnect's, over
// whatever transport it likes (here a socket pair served by ServeConn);
// the URI's address is never dialled, and its export is the one asked
// for.
func TestDialHook(t *testing.T) {
	mem := blocktest.NewMem(1 << 20)
	s, err := NewServer(Export{Name: "other", Backend: blocktest.NewMem(4096)}, Export{Name: "disk", Backend: mem})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var mu sync.Mutex
	var served []net.Conn
	dial := func(ctx context.Context) (net.Conn, error) {
		a, b := net.Pipe()
		mu.Lock()
		served = append(served, b)
		mu.Unlock()
		go s.ServeConn(b)
		return a, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// An address that cannot resolve: only the hook can connect.
	c, err := Dial(ctx, "nbd://nowhere.invalid:1/disk", Options{Dial: dial, ReconnectBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Size() != 1<<20 {
		t.Fatalf("the client reached an export of %d bytes, want disk's %d", c.Size(), 1<<20)
	}
	if _, err := c.WriteAt([]byte("first"), 0); err != nil {
		t.Fatal(err)
	}
	// Drop the connection at the server's end: the client dials again
	// through the hook and goes on.
	mu.Lock()
	served[0].Close()
	mu.Unlock()
	if _, err := c.WriteAt([]byte("second"), 4096); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	n := len(served)
	mu.Unlock()
	if n < 2 {
		t.Fatalf("the hook dialled %d times, want a reconnect through it", n)
	}
	got := make([]byte, 6)
	mem.ReadAt(got[:5], 0)
	if !bytes.Equal(got[:5], []byte("first")) {
		t.Fatalf("the export holds %q at 0", got[:5])
	}
	mem.ReadAt(got, 4096)
	if !bytes.Equal(got, []byte("second")) {
		t.Fatalf("the export holds %q at 4096", got)
	}
}
