package multipath_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/image"
	"github.com/viovmm/vio/block/multipath"
	"github.com/viovmm/vio/block/nbd"
)

// server is one of vio's NBD servers exporting the shared image.
type server struct {
	addr string
	s    *nbd.Server
	done chan error
}

func startServer(t *testing.T, be block.Backend, addr string) *server {
	t.Helper()
	s, err := nbd.NewServer(nbd.Export{Name: "x", Backend: be})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	sv := &server{addr: l.Addr().String(), s: s, done: make(chan error, 1)}
	go func() { sv.done <- s.Serve(l) }()
	return sv
}

func (s *server) kill() {
	s.s.Close()
	<-s.done
}

// Two NBD servers of one raw image file, one path each. One server is
// killed under a stream of writes and reads: the caller sees no error and
// every read matches a model. With both gone requests fail with EIO;
// a server started again is probed, taken back and used.
func TestNBDServerKilled(t *testing.T) {
	const sz = 4 << 20
	dir := t.TempDir()
	img := filepath.Join(dir, "shared.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, sz); err != nil {
		t.Fatal(err)
	}
	file, err := image.Open(img, image.OpenOptions{Format: image.Raw})
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	srv := []*server{startServer(t, file, "127.0.0.1:0"), startServer(t, file, "127.0.0.1:0")}
	defer func() {
		for _, s := range srv {
			if s != nil {
				s.kill()
			}
		}
	}()
	var paths []block.Backend
	for _, s := range srv {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		c, err := nbd.Dial(ctx, "nbd://"+s.addr+"/x", nbd.Options{ReplayBuffer: -1, ReconnectAttempts: 2, ReconnectBackoff: 5 * time.Millisecond})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, c)
	}
	events := make(chan string, 64)
	be, err := multipath.NewBackend(paths, multipath.Options{
		Policy: multipath.RoundRobin, Timeout: 5 * time.Second, ProbeInterval: -1,
		Events: func(ev string, kv ...string) { events <- ev + " " + kv[1] },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	m := multipath.Of(be)
	model := make([]byte, sz)
	rng := rand.New(rand.NewPCG(7, 7))
	step := func(i int) {
		t.Helper()
		off := rng.Int64N(sz/4096-8) * 4096
		n := (1 + rng.IntN(8)) * 4096
		p := make([]byte, n)
		if rng.IntN(2) == 0 {
			for j := range p {
				p[j] = byte(rng.Uint32())
			}
			if _, err := be.WriteAt(p, off); err != nil {
				t.Fatalf("op %d write: %v", i, err)
			}
			copy(model[off:], p)
			return
		}
		if _, err := be.ReadAt(p, off); err != nil {
			t.Fatalf("op %d read: %v", i, err)
		}
		if !bytes.Equal(p, model[off:off+int64(n)]) {
			t.Fatalf("op %d: read at %d differs from the model", i, off)
		}
	}
	// The stream runs in its own goroutine; server 0 is killed while it
	// is under way.
	progress := make(chan int, 1000)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for i := range 600 {
			step(i)
			progress <- i
			if t.Failed() {
				return
			}
		}
	}()
	for i := range progress {
		if i == 100 {
			srv[0].kill()
			srv[0] = nil
		}
		if i == 599 {
			break
		}
	}
	<-finished
	if t.Failed() {
		return
	}
	st := m.Status()
	if st.Paths[0].State != "failed" || st.Paths[1].State != "active" || st.Paths[1].Reissued == 0 {
		t.Fatalf("status after the kill: %+v", st)
	}
	if err := be.Flush(); err != nil {
		t.Fatal(err)
	}
	// Both gone: a clean EIO, not a hang.
	addr1 := srv[1].addr
	srv[1].kill()
	srv[1] = nil
	buf := make([]byte, 4096)
	if _, err := be.ReadAt(buf, 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read with every server gone: %v", err)
	}
	// Server 1 comes back on its address: probed, taken back, used.
	srv[1] = startServer(t, file, addr1)
	if back := m.Probe(); back != 1 {
		t.Fatalf("probe took back %d paths: %+v", back, m.Status())
	}
	for i := range 100 {
		step(600 + i)
	}
	if st := m.Status(); st.Paths[1].State != "active" || st.Zombies != 0 {
		t.Fatalf("status after the return: %+v", st)
	}
	if err := be.Flush(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, sz)
	if _, err := file.ReadAt(got, 0); err != nil || !bytes.Equal(got, model) {
		t.Fatalf("image differs from the model (%v)", err)
	}
}
