package nbd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
)

// proxy forwards loopback TCP connections to a target it can be told to
// change, and drops connections on demand or after a byte budget: the
// network failures a reconnecting client has to survive.
type proxy struct {
	t *testing.T
	l net.Listener

	mu      sync.Mutex
	target  string
	live    map[net.Conn]struct{}
	accepts int // connections proxied to a server
	// dropAfter[i] is the number of bytes (both directions) connection i
	// may carry before the proxy cuts it; beyond the slice, no limit.
	dropAfter []int64
	// stall makes new connections stop forwarding replies after the
	// handshake (for the request-timeout test).
	stall bool
}

func newProxy(t *testing.T, target string) *proxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, l: l, target: target, live: make(map[net.Conn]struct{})}
	go p.loop()
	t.Cleanup(func() {
		l.Close()
		p.killAll()
	})
	return p
}

func (p *proxy) uri(export string) string { return "nbd://" + p.l.Addr().String() + "/" + export }

func (p *proxy) setTarget(addr string) {
	p.mu.Lock()
	p.target = addr
	p.mu.Unlock()
}

func (p *proxy) connections() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepts
}

func (p *proxy) killAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.live {
		c.Close()
	}
}

func (p *proxy) loop() {
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		target := p.target
		p.mu.Unlock()
		s, err := net.Dial("tcp", target)
		if err != nil {
			c.Close()
			continue
		}
		// Only connections that reached a server count (and use up an
		// entry of dropAfter).
		p.mu.Lock()
		i, stall := p.accepts, p.stall
		p.accepts++
		budget := int64(-1)
		if i < len(p.dropAfter) {
			budget = p.dropAfter[i]
		}
		p.live[c], p.live[s] = struct{}{}, struct{}{}
		p.mu.Unlock()
		var left atomic.Int64
		left.Store(budget)
		cut := func() {
			c.Close()
			s.Close()
			p.mu.Lock()
			delete(p.live, c)
			delete(p.live, s)
			p.mu.Unlock()
		}
		pipe := func(dst, src net.Conn, stallAfter int) {
			defer cut()
			buf := make([]byte, 32<<10)
			seen := 0
			for {
				n, err := src.Read(buf)
				if n > 0 {
					if stallAfter >= 0 && seen+n > stallAfter {
						// Swallow everything from here on.
						io.Copy(io.Discard, src)
						return
					}
					seen += n
					if budget >= 0 {
						if rem := left.Add(-int64(n)); rem < 0 {
							// Forward part of this read, then cut
							// the connection in mid-message.
							dst.Write(buf[:max(0, int64(n)+rem)])
							return
						}
					}
					if _, err := dst.Write(buf[:n]); err != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}
		stallAfter := -1
		if stall {
			// Let the handshake through: greeting (18), structured-reply
			// ack (20), NBD_OPT_GO's INFO_EXPORT (32), INFO_BLOCK_SIZE
			// (34) and ack (20); swallow every reply after it.
			stallAfter = 18 + 20 + 32 + 34 + 20
		}
		go pipe(s, c, -1)
		go pipe(c, s, stallAfter)
	}
}

// serveTCP serves s on a loopback port and returns the address.
func serveTCP(t *testing.T, s *Server) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	return l.Addr().String()
}

func newTestServer(t *testing.T, b block.Backend) *Server {
	s, err := NewServer(Export{Name: "d", Backend: b})
	if err != nil {
		t.Fatal(err)
	}
	s.Logf = t.Logf
	return s
}

// TestReconnectMidStream cuts the connection repeatedly in the middle of
// requests and replies while several goroutines read and write; every call
// must complete without error and the data must be exactly the model's.
func TestReconnectMidStream(t *testing.T) {
	const size = 8 << 20
	mem := blocktest.NewMem(size)
	p := newProxy(t, serveTCP(t, newTestServer(t, mem)))
	// The first five connections die after 0.3 to 2.3 MiB of traffic.
	rng := rand.New(rand.NewPCG(42, 1))
	p.mu.Lock()
	for i := 0; i < 5; i++ {
		p.dropAfter = append(p.dropAfter, 300<<10+rng.Int64N(2<<20))
	}
	p.mu.Unlock()
	c := dial(t, p.uri("d"), Options{ReconnectBackoff: time.Millisecond, MaxRetries: 10, Logf: t.Logf})
	defer c.Close()

	const workers = 8
	stripe := int64(size / workers)
	model := make([]byte, size)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			base := int64(w) * stripe
			for i := 0; i < 60; i++ {
				n := 1 + r.Int64N(256<<10)
				off := base + r.Int64N(stripe-n)
				switch r.IntN(5) {
				case 0, 1:
					got := make([]byte, n)
					if _, err := c.ReadAt(got, off); err != nil {
						errs <- fmt.Errorf("ReadAt: %w", err)
						return
					}
					if !bytes.Equal(got, model[off:off+n]) {
						errs <- fmt.Errorf("worker %d: read of %d at %d returned wrong data", w, n, off)
						return
					}
				case 2:
					if err := c.Flush(); err != nil {
						errs <- fmt.Errorf("Flush: %w", err)
						return
					}
				default:
					buf := make([]byte, n)
					for j := range buf {
						buf[j] = byte(r.Uint32() | 1)
					}
					if _, err := c.WriteAt(buf, off); err != nil {
						errs <- fmt.Errorf("WriteAt: %w", err)
						return
					}
					copy(model[off:], buf)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := p.connections(); n < 4 {
		t.Fatalf("only %d connections were made; the cuts did not happen", n)
	}
	if !bytes.Equal(mem.Bytes(), model) {
		t.Fatal("export contents differ from the model after reconnects")
	}
}

// volatileDisk is a back-end with a write cache that a crash loses:
// writes go to a cache that Flush moves to the durable Mem.
type volatileDisk struct {
	durable *blocktest.Mem
	mu      sync.Mutex
	pending []pendingWrite
}

type pendingWrite struct {
	off  int64
	data []byte
}

func (v *volatileDisk) ReadAt(p []byte, off int64) (int, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	n, err := v.durable.ReadAt(p, off)
	for _, w := range v.pending {
		lo, hi := max(off, w.off), min(off+int64(n), w.off+int64(len(w.data)))
		if lo < hi {
			copy(p[lo-off:hi-off], w.data[lo-w.off:])
		}
	}
	return n, err
}

func (v *volatileDisk) WriteAt(p []byte, off int64) (int, error) {
	if err := block.CheckRange(off, int64(len(p)), v.durable.Size()); err != nil {
		return 0, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.pending = append(v.pending, pendingWrite{off, append([]byte(nil), p...)})
	return len(p), nil
}

func (v *volatileDisk) Flush() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, w := range v.pending {
		if _, err := v.durable.WriteAt(w.data, w.off); err != nil {
			return err
		}
	}
	v.pending = nil
	return nil
}

func (v *volatileDisk) crash() {
	v.mu.Lock()
	v.pending = nil
	v.mu.Unlock()
}

func (v *volatileDisk) Size() int64  { return v.durable.Size() }
func (v *volatileDisk) Close() error { return v.Flush() }

// TestFlushHonestAcrossServerCrash: writes acknowledged by a server that
// then crashes (losing its cache) are replayed on the new connection, so a
// later Flush that succeeds really covers them; without the replay buffer
// the Flush must fail instead of lying.
func TestFlushHonestAcrossServerCrash(t *testing.T) {
	for _, replay := range []bool{true, false} {
		t.Run(fmt.Sprintf("replay=%v", replay), func(t *testing.T) {
			disk := &volatileDisk{durable: blocktest.NewMem(1 << 20)}
			s1 := newTestServer(t, disk)
			p := newProxy(t, serveTCP(t, s1))
			opts := Options{ReconnectBackoff: time.Millisecond}
			if !replay {
				opts.ReplayBuffer = -1
			}
			c := dial(t, p.uri("d"), opts)
			defer c.Close()
			if _, err := c.WriteAt([]byte("flushed"), 0); err != nil {
				t.Fatal(err)
			}
			if err := c.Flush(); err != nil {
				t.Fatal(err)
			}
			if _, err := c.WriteAt([]byte("acked-only"), 4096); err != nil {
				t.Fatal(err)
			}
			// The server crashes: its cache is gone, and so is the
			// connection. A new server takes over the same disk.
			s1.Close()
			disk.crash()
			p.setTarget(serveTCP(t, newTestServer(t, disk)))

			err := c.Flush()
			got := make([]byte, 10)
			disk.durable.ReadAt(got, 4096)
			if replay {
				if err != nil {
					t.Fatalf("Flush after reconnect: %v", err)
				}
				if string(got) != "acked-only" {
					t.Fatalf("Flush succeeded but the durable disk holds %q", got)
				}
			} else {
				if !errors.Is(err, ErrWritesLost) {
					t.Fatalf("Flush after losing unflushed writes: %v, want ErrWritesLost", err)
				}
				// The loss is never forgotten: a retried flush, and
				// writes, keep failing until the client is reopened.
				if err := c.Flush(); !errors.Is(err, ErrWritesLost) {
					t.Fatalf("second Flush: %v, want ErrWritesLost again", err)
				}
				if _, err := c.WriteAt([]byte("x"), 0); !errors.Is(err, ErrWritesLost) {
					t.Fatalf("write after the loss: %v, want ErrWritesLost", err)
				}
			}
			head := make([]byte, 7)
			disk.durable.ReadAt(head, 0)
			if string(head) != "flushed" {
				t.Fatalf("flushed data lost: %q", head)
			}
		})
	}
}

// TestRequestTimeoutReconnects: a server that stops answering is given up
// on after RequestTimeout and the request is re-sent on a new connection.
func TestRequestTimeoutReconnects(t *testing.T) {
	mem := blocktest.NewMem(1 << 20)
	mem.WriteAt([]byte("answer"), 0)
	p := newProxy(t, serveTCP(t, newTestServer(t, mem)))
	c := dial(t, p.uri("d"), Options{RequestTimeout: 200 * time.Millisecond, ReconnectBackoff: time.Millisecond})
	defer c.Close()
	// From now on, each new connection goes silent after its handshake;
	// and the current one is cut so that the next request needs one.
	p.mu.Lock()
	p.stall = true
	p.mu.Unlock()
	p.killAll()
	res := make(chan error, 1)
	buf := make([]byte, 6)
	go func() {
		_, err := c.ReadAt(buf, 0)
		res <- err
	}()
	// Wait until the stalled connection exists, then let new ones work.
	deadline := time.Now().Add(10 * time.Second)
	for p.connections() < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // polling the proxy's counter
	}
	p.mu.Lock()
	p.stall = false
	p.mu.Unlock()
	if err := <-res; err != nil {
		t.Fatalf("ReadAt across a stalled connection: %v", err)
	}
	if string(buf) != "answer" {
		t.Fatalf("read %q", buf)
	}
	if n := p.connections(); n < 3 {
		t.Fatalf("%d connections: the stalled one was not replaced", n)
	}
}

// TestServerGoneThenBack: with no server, requests fail after the bounded
// reconnect attempts (they do not hang); once a server is back, the next
// request reconnects.
func TestServerGoneThenBack(t *testing.T) {
	mem := blocktest.NewMem(1 << 20)
	s1 := newTestServer(t, mem)
	p := newProxy(t, serveTCP(t, s1))
	c := dial(t, p.uri("d"), Options{ReconnectAttempts: 3, ReconnectBackoff: time.Millisecond, DialTimeout: time.Second})
	defer c.Close()
	s1.Close()
	p.setTarget("127.0.0.1:1") // nothing listens there
	p.killAll()
	if _, err := c.ReadAt(make([]byte, 512), 0); err == nil {
		t.Fatal("ReadAt with no server succeeded")
	}
	p.setTarget(serveTCP(t, newTestServer(t, mem)))
	if _, err := c.WriteAt([]byte("back"), 0); err != nil {
		t.Fatalf("WriteAt after the server came back: %v", err)
	}
	got := make([]byte, 4)
	mem.ReadAt(got, 0)
	if string(got) != "back" {
		t.Fatalf("disk holds %q", got)
	}
}

// TestGracefulServerSwap: Shutdown of one server and start of another on
// the same disk, under load: clients see no error.
func TestGracefulServerSwap(t *testing.T) {
	mem := blocktest.NewMem(4 << 20)
	s1 := newTestServer(t, mem)
	p := newProxy(t, serveTCP(t, s1))
	c := dial(t, p.uri("d"), Options{ReconnectBackoff: time.Millisecond})
	defer c.Close()
	stop := make(chan struct{})
	errs := make(chan error, 4)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := bytes.Repeat([]byte{byte(w + 1)}, 64<<10)
			q := make([]byte, len(p))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				off := int64(w)<<20 + int64(i%16)*int64(len(p))
				if _, err := c.WriteAt(p, off); err != nil {
					errs <- err
					return
				}
				if _, err := c.ReadAt(q, off); err != nil || !bytes.Equal(p, q) {
					errs <- fmt.Errorf("read back: %v", err)
					return
				}
			}
		}()
	}
	// Let some I/O happen on the first server.
	for {
		if n, _ := mem.ReadAt(make([]byte, 1), 3<<20); n == 1 {
			b := make([]byte, 1)
			mem.ReadAt(b, 3<<20)
			if b[0] == 4 {
				break
			}
		}
		time.Sleep(time.Millisecond)
	}
	p.setTarget(serveTCP(t, newTestServer(t, mem)))
	before := p.connections()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s1.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	for p.connections() == before {
		time.Sleep(time.Millisecond)
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// closingOnce fails the first write as a closed back-end would, which the
// server reports as NBD_ESHUTDOWN.
type closingOnce struct {
	block.Backend
	failed atomic.Bool
}

func (c *closingOnce) WriteAt(p []byte, off int64) (int, error) {
	if c.failed.CompareAndSwap(false, true) {
		return 0, block.ErrClosed
	}
	return c.Backend.WriteAt(p, off)
}

// TestShutdownErrorRetried: NBD_ESHUTDOWN makes the client disconnect and
// re-send the request on a new connection rather than fail it.
func TestShutdownErrorRetried(t *testing.T) {
	mem := blocktest.NewMem(1 << 20)
	b := &closingOnce{Backend: mem}
	p := newProxy(t, serveTCP(t, newTestServer(t, b)))
	c := dial(t, p.uri("d"), Options{ReconnectBackoff: time.Millisecond})
	defer c.Close()
	if _, err := c.WriteAt([]byte("again"), 0); err != nil {
		t.Fatalf("WriteAt after ESHUTDOWN: %v", err)
	}
	if !b.failed.Load() {
		t.Fatal("the back-end never failed")
	}
	got := make([]byte, 5)
	mem.ReadAt(got, 0)
	if string(got) != "again" {
		t.Fatalf("disk holds %q", got)
	}
	if n := p.connections(); n != 2 {
		t.Fatalf("%d connections, want 2 (one re-connect)", n)
	}
}

// TestReplayInterrupted: the connection carrying the replay of unflushed
// writes is itself cut; the replay starts over on the next one, in order
// (a later write to the same place wins), and the Flush after it is honest.
func TestReplayInterrupted(t *testing.T) {
	disk := &volatileDisk{durable: blocktest.NewMem(8 << 20)}
	s1 := newTestServer(t, disk)
	p := newProxy(t, serveTCP(t, s1))
	p.mu.Lock()
	p.dropAfter = []int64{-1, 1 << 20} // the second connection dies mid-replay
	p.mu.Unlock()
	c := dial(t, p.uri("d"), Options{ReconnectBackoff: time.Millisecond})
	defer c.Close()
	model := make([]byte, 8<<20)
	rng := rand.New(rand.NewPCG(11, 11))
	for i := 0; i < 60; i++ {
		off := int64(i%40) * 128 << 10 // 20 places written twice
		buf := make([]byte, 64<<10)
		for j := range buf {
			buf[j] = byte(rng.Uint32() | 1)
		}
		if _, err := c.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
		copy(model[off:], buf)
	}
	s1.Close()
	disk.crash()
	p.setTarget(serveTCP(t, newTestServer(t, disk)))
	if err := c.Flush(); err != nil {
		t.Fatalf("Flush after an interrupted replay: %v", err)
	}
	if !bytes.Equal(disk.durable.Bytes(), model) {
		t.Fatal("durable disk differs from the model after replay")
	}
	if n := p.connections(); n < 3 {
		t.Fatalf("%d connections; the replay was not interrupted", n)
	}
}
