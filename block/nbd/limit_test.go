package nbd

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/block/blocktest"
)

// TestConnectionLimit: a server with MaxConns 2 serves two clients, closes
// a third connection before its handshake (and says so), and serves again
// once a client has gone.
func TestConnectionLimit(t *testing.T) {
	s, err := NewServer(Export{Name: "d", Backend: blocktest.NewMem(1 << 20)})
	if err != nil {
		t.Fatal(err)
	}
	s.MaxConns = 2
	logged := make(chan string, 8)
	s.Logf = func(format string, a ...any) {
		line := strings.TrimSpace(format)
		select {
		case logged <- line:
		default:
		}
	}
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); s.Serve(l) }()
	defer func() { s.Close(); <-done }()

	uri := unixURI(sock, "d")
	opts := Options{ReconnectAttempts: -1}
	a := dial(t, uri, opts)
	b := dial(t, uri, opts)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if c, err := Dial(ctx, uri, opts); err == nil {
		c.Close()
		t.Fatal("a third connection was served with MaxConns 2")
	}
	select {
	case line := <-logged:
		if !strings.Contains(line, "refusing a connection") {
			t.Errorf("log line %q", line)
		}
	case <-ctx.Done():
		t.Error("the refusal was not logged")
	}
	// The two served clients still work.
	if _, err := b.WriteAt([]byte("ok"), 0); err != nil {
		t.Fatal(err)
	}
	a.Close()
	// The server frees a's slot when its connection ends, which it learns
	// asynchronously: try until a connection is served (each attempt is a
	// full round trip, no sleeping), within the deadline.
	for {
		c, err := Dial(ctx, uri, opts)
		if err == nil {
			c.Close()
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("no connection served after one of two closed: %v", err)
		}
	}
	b.Close()
}
