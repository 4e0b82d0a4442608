package nbd

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
)

// serve starts a server for exports on a fresh unix socket and returns its
// path. The server is closed when the test ends.
func serve(t testing.TB, exports ...Export) (*Server, string) {
	t.Helper()
	s, err := NewServer(exports...)
	if err != nil {
		t.Fatal(err)
	}
	s.Logf = t.Logf
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Serve(l)
	}()
	t.Cleanup(func() {
		s.Close()
		<-done
	})
	return s, sock
}

func unixURI(sock, export string) string {
	return "nbd+unix:///" + export + "?socket=" + sock
}

func dial(t testing.TB, uri string, opts Options) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, uri, opts)
	if err != nil {
		t.Fatalf("Dial(%s): %v", uri, err)
	}
	return c
}

// TestConformance runs the client, talking to this package's server over a
// unix socket, through the block.Backend conformance suite: both halves
// must be right for the model's contents to come back.
func TestConformance(t *testing.T) {
	blocktest.Run(t, func(t *testing.T, size int64) block.Backend {
		_, sock := serve(t, Export{Name: "disk", Backend: blocktest.NewMem(size)})
		return dial(t, unixURI(sock, "disk"), Options{})
	})
}

func TestConformanceReopen(t *testing.T) {
	blocktest.RunReopen(t, func(t *testing.T, size int64) func() (block.Backend, error) {
		_, sock := serve(t, Export{Name: "disk", Backend: blocktest.NewMem(size)})
		return func() (block.Backend, error) {
			return Dial(context.Background(), unixURI(sock, "disk"), Options{})
		}
	})
}

// TestConformanceSimpleReplies covers the path without structured
// replies (the server refuses the option) over loopback TCP.
func TestConformanceSimpleReplies(t *testing.T) {
	blocktest.Run(t, func(t *testing.T, size int64) block.Backend {
		s, err := NewServer(Export{Name: "disk", Backend: blocktest.NewMem(size)})
		if err != nil {
			t.Fatal(err)
		}
		addr := serveFiltered(t, s, func(opt uint32) bool { return opt != optStructuredReply })
		return dial(t, "nbd://"+addr+"/disk", Options{})
	})
}

// serveFiltered serves s on loopback TCP through a shim that answers the
// options refused by allow with NBD_REP_ERR_UNSUP, as an older server would.
func serveFiltered(t testing.TB, s *Server, allow func(opt uint32) bool) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.optFilter = allow
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	return l.Addr().String()
}

func TestReadOnlyExport(t *testing.T) {
	mem := blocktest.NewMem(1 << 20)
	if _, err := mem.WriteAt([]byte("hello"), 100); err != nil {
		t.Fatal(err)
	}
	_, sock := serve(t, Export{Name: "ro", Backend: mem, ReadOnly: true})
	c := dial(t, unixURI(sock, "ro"), Options{})
	defer c.Close()
	if !c.ReadOnly() {
		t.Fatal("client of a read-only export does not report ReadOnly")
	}
	if _, err := c.WriteAt([]byte("x"), 0); !errors.Is(err, block.ErrReadOnly) {
		t.Fatalf("WriteAt on read-only export: %v, want ErrReadOnly", err)
	}
	if err := c.WriteZeroes(0, 512, false); !errors.Is(err, block.ErrReadOnly) {
		t.Fatalf("WriteZeroes on read-only export: %v", err)
	}
	if err := c.Discard(0, 512); !errors.Is(err, block.ErrReadOnly) {
		t.Fatalf("Discard on read-only export: %v", err)
	}
	p := make([]byte, 5)
	if _, err := c.ReadAt(p, 100); err != nil || string(p) != "hello" {
		t.Fatalf("ReadAt = %q, %v", p, err)
	}
	if err := c.Flush(); err != nil {
		t.Fatalf("Flush of a read-only export: %v", err)
	}

	// The server refuses writes on its own too, whatever a client does.
	raw := newRawSession(t, sock, "ro", true)
	if errno := raw.do(t, cmdWrite, 0, 0, 4, []byte("abcd")); errno != errPerm {
		t.Fatalf("raw write to read-only export: errno %d, want EPERM", errno)
	}
	if got := mem.Bytes()[:4]; !bytes.Equal(got, make([]byte, 4)) {
		t.Fatalf("read-only export was written: %q", got)
	}
}

func TestUnknownExport(t *testing.T) {
	_, sock := serve(t, Export{Name: "a", Backend: blocktest.NewMem(4096)})
	_, err := Dial(context.Background(), unixURI(sock, "nope"), Options{})
	if !errors.Is(err, ErrUnknownExport) {
		t.Fatalf("Dial of unknown export: %v, want ErrUnknownExport", err)
	}
}

func TestMultipleExportsAndList(t *testing.T) {
	a, b := blocktest.NewMem(4096), blocktest.NewMem(8192)
	_, sock := serve(t, Export{Name: "a", Backend: a, Description: "first"}, Export{Name: "b", Backend: b})
	ca := dial(t, unixURI(sock, "a"), Options{})
	defer ca.Close()
	cb := dial(t, unixURI(sock, "b"), Options{})
	defer cb.Close()
	if ca.Size() != 4096 || cb.Size() != 8192 {
		t.Fatalf("sizes %d, %d", ca.Size(), cb.Size())
	}
	if _, err := cb.WriteAt([]byte("bee"), 10); err != nil {
		t.Fatal(err)
	}
	if got := b.Bytes()[10:13]; string(got) != "bee" {
		t.Fatalf("export b holds %q", got)
	}
	if !bytes.Equal(a.Bytes(), make([]byte, 4096)) {
		t.Fatal("write to export b reached export a")
	}
	names := listExports(t, sock)
	if len(names) != 2 || names[0] != "a" || names[1] != "b" {
		t.Fatalf("NBD_OPT_LIST = %q", names)
	}
	// The empty name picks the first export.
	cd := dial(t, unixURI(sock, ""), Options{})
	defer cd.Close()
	if cd.Size() != 4096 {
		t.Fatalf("default export has size %d", cd.Size())
	}
}

// TestLargeRequestsSplit reads and writes more than the server's maximum
// payload in one call.
func TestLargeRequestsSplit(t *testing.T) {
	const size = 80 << 20
	mem := blocktest.NewMem(size)
	_, sock := serve(t, Export{Name: "big", Backend: mem})
	c := dial(t, unixURI(sock, "big"), Options{})
	defer c.Close()
	p := make([]byte, 70<<20+123)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range p {
		p[i] = byte(rng.Uint32())
	}
	if _, err := c.WriteAt(p, 4097); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mem.Bytes()[4097:4097+len(p)], p) {
		t.Fatal("large write stored wrong data")
	}
	q := make([]byte, len(p))
	if _, err := c.ReadAt(q, 4097); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p, q) {
		t.Fatal("large read returned wrong data")
	}
}

// TestManyInFlight issues many concurrent requests on one connection; the
// server answers them out of order (a slow back-end delays some).
func TestManyInFlight(t *testing.T) {
	mem := blocktest.NewMem(1 << 20)
	slow := &slowBackend{Backend: mem}
	_, sock := serve(t, Export{Name: "d", Backend: slow})
	c := dial(t, unixURI(sock, "d"), Options{MaxInFlight: 32})
	defer c.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := bytes.Repeat([]byte{byte(i + 1)}, 4096)
			if _, err := c.WriteAt(p, int64(i)*4096); err != nil {
				errs <- err
				return
			}
			q := make([]byte, 4096)
			if _, err := c.ReadAt(q, int64(i)*4096); err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(p, q) {
				errs <- errors.New("read back wrong data")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if slow.maxConcurrent() < 2 {
		t.Fatalf("server processed at most %d requests at once; want concurrency", slow.maxConcurrent())
	}
}

// slowBackend delays even-sector writes so replies come back out of order,
// and records how many calls were in progress at once.
type slowBackend struct {
	block.Backend
	mu       sync.Mutex
	cur, max int
}

func (s *slowBackend) enter() {
	s.mu.Lock()
	s.cur++
	s.max = max(s.max, s.cur)
	s.mu.Unlock()
}

func (s *slowBackend) leave() {
	s.mu.Lock()
	s.cur--
	s.mu.Unlock()
}

func (s *slowBackend) maxConcurrent() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.max
}

func (s *slowBackend) WriteAt(p []byte, off int64) (int, error) {
	s.enter()
	defer s.leave()
	if (off/4096)%2 == 0 {
		time.Sleep(5 * time.Millisecond) // a slow disk, not synchronisation
	}
	return s.Backend.WriteAt(p, off)
}

// TestBlockSizeConstraints runs the suite against a server that demands
// 4096-byte alignment, so the client's read-modify-write and splitting
// paths are what the suite sees.
func TestBlockSizeConstraints(t *testing.T) {
	blocktest.Run(t, func(t *testing.T, size int64) block.Backend {
		// The suite's size is a multiple of 512 only; the export must
		// be a multiple of the block size to keep its Size.
		mem := blocktest.NewMem(size)
		s, err := NewServer(Export{Name: "d", Backend: &strictAlign{Backend: mem, t: t, bs: 512}})
		if err != nil {
			t.Fatal(err)
		}
		s.blockSize = [3]uint32{512, 4096, 64 << 10}
		addr := serveFiltered(t, s, func(uint32) bool { return true })
		return dial(t, "nbd://"+addr+"/d", Options{})
	})
}

// strictAlign fails the test on any request not aligned to bs.
type strictAlign struct {
	block.Backend
	t  *testing.T
	bs int64
}

func (s *strictAlign) check(off, n int64) {
	if off%s.bs != 0 || n%s.bs != 0 {
		s.t.Errorf("unaligned request reached the server: %d bytes at %d", n, off)
	}
}

func (s *strictAlign) ReadAt(p []byte, off int64) (int, error) {
	s.check(off, int64(len(p)))
	if len(p) > 64<<10 {
		s.t.Errorf("request of %d bytes exceeds the advertised maximum", len(p))
	}
	return s.Backend.ReadAt(p, off)
}

func (s *strictAlign) WriteAt(p []byte, off int64) (int, error) {
	s.check(off, int64(len(p)))
	if len(p) > 64<<10 {
		s.t.Errorf("request of %d bytes exceeds the advertised maximum", len(p))
	}
	return s.Backend.WriteAt(p, off)
}

func (s *strictAlign) Discard(off, n int64) error {
	s.check(off, n)
	return s.Backend.(block.Discarder).Discard(off, n)
}

func (s *strictAlign) WriteZeroes(off, n int64, unmap bool) error {
	s.check(off, n)
	return s.Backend.(block.ZeroWriter).WriteZeroes(off, n, unmap)
}

func TestParseURI(t *testing.T) {
	for _, c := range []struct {
		in                    string
		network, addr, export string
		bad                   bool
	}{
		{in: "nbd://127.0.0.1:1234/disk", network: "tcp", addr: "127.0.0.1:1234", export: "disk"},
		{in: "nbd://localhost/", network: "tcp", addr: "localhost:10809"},
		{in: "nbd://[::1]/a%20b", network: "tcp", addr: "[::1]:10809", export: "a b"},
		{in: "nbd+unix:///e?socket=/tmp/s", network: "unix", addr: "/tmp/s", export: "e"},
		{in: "nbd+unix:///e", bad: true},
		{in: "nbd+unix://host/e?socket=/x", bad: true},
		{in: "http://x/", bad: true},
		{in: "nbd:///x", bad: true},
	} {
		got, err := parseURI(c.in)
		if c.bad {
			if err == nil {
				t.Errorf("parseURI(%q) = %+v, want error", c.in, got)
			}
			continue
		}
		if err != nil || got != (target{c.network, c.addr, c.export}) {
			t.Errorf("parseURI(%q) = %+v, %v", c.in, got, err)
		}
	}
}

// TestServerRejectsBadRequests speaks raw protocol to the server.
func TestServerRejectsBadRequests(t *testing.T) {
	mem := blocktest.NewMem(1 << 20)
	_, sock := serve(t, Export{Name: "d", Backend: mem})
	for _, structured := range []bool{false, true} {
		s := newRawSession(t, sock, "d", structured)
		cases := []struct {
			name    string
			typ     uint16
			flags   uint16
			off     uint64
			n       uint32
			payload []byte
			want    uint32
		}{
			{"read past end", cmdRead, 0, 1<<20 - 100, 200, nil, errInval},
			{"read offset overflow", cmdRead, 0, ^uint64(0) - 10, 100, nil, errInval},
			{"huge read", cmdRead, 0, 0, 64 << 20, nil, map[bool]uint32{false: errInval, true: errOverflow}[structured]},
			{"write past end", cmdWrite, 0, 1<<20 - 2, 4, []byte("abcd"), errNoSpc},
			{"unknown command", 99, 0, 0, 0, nil, errInval},
			{"unknown flag", cmdRead, 1 << 9, 0, 512, nil, errInval},
			{"no-hole on write", cmdWrite, cmdFlagNoHole, 0, 1, []byte("z"), errInval},
			{"fast zero", cmdWriteZeroes, cmdFlagFastZero, 0, 512, nil, errInval},
			{"block status", cmdBlockStatus, 0, 0, 512, nil, errInval},
			{"trim past end", cmdTrim, 0, 1 << 20, 1, nil, errInval},
			{"zeroes past end", cmdWriteZeroes, 0, 1<<20 - 1, 2, nil, errNoSpc},
			{"good write", cmdWrite, cmdFlagFUA, 0, 4, []byte("good"), 0},
			{"good read", cmdRead, 0, 0, 4, nil, 0},
		}
		for _, c := range cases {
			if got := s.do(t, c.typ, c.flags, c.off, c.n, c.payload); got != c.want {
				t.Errorf("structured=%v %s: errno %d, want %d", structured, c.name, got, c.want)
			}
		}
		// A write larger than 32 MiB is refused after its payload is
		// skipped, and the session stays usable.
		big := make([]byte, 33<<20)
		if got := s.do(t, cmdWrite, 0, 0, uint32(len(big)), big); got != errInval {
			t.Errorf("structured=%v huge write: errno %d, want EINVAL", structured, got)
		}
		if got := s.do(t, cmdFlush, 0, 0, 0, nil); got != 0 {
			t.Errorf("structured=%v flush after huge write: errno %d", structured, got)
		}
		if got := mem.Bytes()[:4]; string(got) != "good" {
			t.Errorf("good write stored %q", got)
		}
		s.close()
	}
}

// TestServerShutdownDrains checks that Shutdown lets a request in progress
// finish and be answered.
func TestServerShutdownDrains(t *testing.T) {
	gate := make(chan struct{})
	entered := make(chan struct{}, 1)
	b := &gatedBackend{Backend: blocktest.NewMem(1 << 20), gate: gate, entered: entered}
	s, sock := serve(t, Export{Name: "d", Backend: b})
	c := dial(t, unixURI(sock, "d"), Options{ReconnectAttempts: -1})
	res := make(chan error, 1)
	go func() {
		_, err := c.WriteAt([]byte("drained"), 0)
		res <- err
	}()
	<-entered
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	close(gate)
	if err := <-res; err != nil {
		t.Fatalf("write in progress during Shutdown: %v", err)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	p := make([]byte, 7)
	b.Backend.ReadAt(p, 0)
	if string(p) != "drained" {
		t.Fatalf("back-end holds %q", p)
	}
	// New connections are refused now.
	if _, err := Dial(context.Background(), unixURI(sock, "d"), Options{DialTimeout: time.Second}); err == nil {
		t.Fatal("Dial after Shutdown succeeded")
	}
	c.Close()
}

type gatedBackend struct {
	block.Backend
	gate    chan struct{}
	entered chan struct{}
}

func (g *gatedBackend) WriteAt(p []byte, off int64) (int, error) {
	select {
	case g.entered <- struct{}{}:
	default:
	}
	<-g.gate
	return g.Backend.WriteAt(p, off)
}

func TestClientClose(t *testing.T) {
	fc := &flushCounter{Backend: blocktest.NewMem(1 << 20)}
	_, sock := serve(t, Export{Name: "d", Backend: fc})
	c := dial(t, unixURI(sock, "d"), Options{})
	if _, err := c.WriteAt([]byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	before := fc.n.Load()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if fc.n.Load() == before {
		t.Fatal("Close did not flush")
	}
	if err := c.Close(); !errors.Is(err, block.ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := c.ReadAt(make([]byte, 1), 0); !errors.Is(err, block.ErrClosed) {
		t.Fatalf("ReadAt after Close: %v", err)
	}
	var _ io.ReaderAt = c
}

// TestExportNameFallback: against a server without NBD_OPT_GO the client
// falls back to NBD_OPT_EXPORT_NAME (and default block sizes).
func TestExportNameFallback(t *testing.T) {
	for _, structured := range []bool{false, true} {
		mem := blocktest.NewMem(1 << 20)
		s, err := NewServer(Export{Name: "old", Backend: mem})
		if err != nil {
			t.Fatal(err)
		}
		addr := serveFiltered(t, s, func(opt uint32) bool {
			return opt != optGo && opt != optInfo && (structured || opt != optStructuredReply)
		})
		c := dial(t, "nbd://"+addr+"/old", Options{})
		if c.structured != structured {
			t.Fatalf("structured = %v, want %v", c.structured, structured)
		}
		if c.Size() != 1<<20 {
			t.Fatalf("size %d", c.Size())
		}
		if _, err := c.WriteAt([]byte("legacy"), 7); err != nil {
			t.Fatal(err)
		}
		p := make([]byte, 6)
		if _, err := c.ReadAt(p, 7); err != nil || string(p) != "legacy" {
			t.Fatalf("ReadAt = %q, %v", p, err)
		}
		c.Close()
		if _, err := Dial(context.Background(), "nbd://"+addr+"/missing", Options{}); err == nil {
			t.Fatal("EXPORT_NAME of a missing export succeeded")
		}
	}
}
