package uring

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func needUring(t testing.TB) {
	t.Helper()
	if err := Supported(); err != nil {
		t.Skipf("no io_uring here: %v", err)
	}
}

func tempFile(t testing.TB, size int64) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "disk"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return f
}

func newQueue(t testing.TB, depth int) *Queue {
	t.Helper()
	needUring(t)
	q, err := NewQueue(depth)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return q
}

// TestRingDirect drives a Ring by hand: a batch of writes, then a batch of
// reads, compared with pread; user_data comes back with each completion.
func TestRingDirect(t *testing.T) {
	needUring(t)
	f := tempFile(t, 0)
	r, err := New(8)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.Entries() != 8 || r.CQEntries() != 16 {
		t.Fatalf("entries %d/%d, want 8/16", r.Entries(), r.CQEntries())
	}
	fd := int(f.Fd())
	ops := make([]Op, 8)
	for i := range ops {
		ops[i] = Op{Kind: Write, Fd: fd, Off: int64(i) * 512, Bufs: [][]byte{bytes.Repeat([]byte{byte(i + 1)}, 512)}}
		if err := r.Prep(&ops[i], uint64(100+i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Prep(&Op{Kind: Nop}, 1); !errors.Is(err, ErrRingFull) {
		t.Fatalf("Prep on a full SQ: %v, want ErrRingFull", err)
	}
	if n, err := r.Submit(8); err != nil || n != 8 {
		t.Fatalf("Submit = %d, %v", n, err)
	}
	seen := map[uint64]int32{}
	for len(seen) < 8 {
		if err := r.Wait(); err != nil {
			t.Fatal(err)
		}
		r.Reap(func(ud uint64, res int32) { seen[ud] = res })
	}
	for i := range 8 {
		if seen[uint64(100+i)] != 512 {
			t.Fatalf("write %d: res %d", i, seen[uint64(100+i)])
		}
	}
	want := make([]byte, 4096)
	if _, err := unix.Pread(fd, want, 0); err != nil {
		t.Fatal(err)
	}
	// Read back through READV with three uneven buffers.
	a, b, c := make([]byte, 1000), make([]byte, 3000), make([]byte, 96)
	op := Op{Kind: Read, Fd: fd, Bufs: [][]byte{a, b, c}}
	if err := r.Prep(&op, 7); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Submit(1); err != nil {
		t.Fatal(err)
	}
	var res int32
	r.Reap(func(ud uint64, rs int32) {
		if ud != 7 {
			t.Errorf("user_data %d, want 7", ud)
		}
		res = rs
	})
	if res != 4096 || !bytes.Equal(bytes.Join([][]byte{a, b, c}, nil), want) {
		t.Fatalf("readv: res %d, data differs from pread", res)
	}
}

// TestReadWriteFsync compares the Queue with pread/pwrite on one file.
func TestReadWriteFsync(t *testing.T) {
	q := newQueue(t, 4)
	f := tempFile(t, 1<<20)
	fd := int(f.Fd())
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 50 {
		p := make([]byte, 1+rng.IntN(8192))
		for j := range p {
			p[j] = byte(rng.Uint32())
		}
		off := rng.Int64N(1<<20 - int64(len(p)))
		if i%2 == 0 {
			if n, err := q.WriteAt(fd, p, off); err != nil || n != len(p) {
				t.Fatalf("WriteAt = %d, %v", n, err)
			}
		} else if _, err := unix.Pwrite(fd, p, off); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(p))
		if n, err := q.ReadAt(fd, got, off); err != nil || n != len(p) || !bytes.Equal(got, p) {
			t.Fatalf("ReadAt = %d, %v, equal %v", n, err, bytes.Equal(got, p))
		}
		pg := make([]byte, len(p))
		if _, err := unix.Pread(fd, pg, off); err != nil || !bytes.Equal(pg, p) {
			t.Fatalf("pread after ring write differs (%v)", err)
		}
	}
	if err := q.Sync(fd, true); err != nil {
		t.Fatalf("fdatasync: %v", err)
	}
	if err := q.Sync(fd, false); err != nil {
		t.Fatalf("fsync: %v", err)
	}
}

// TestShortReadAndErrors: a read past EOF is short, not an error; a bad fd
// is a wrapped Errno.
func TestShortReadAndErrors(t *testing.T) {
	q := newQueue(t, 2)
	f := tempFile(t, 1000)
	p := make([]byte, 4096)
	n, err := q.ReadAt(int(f.Fd()), p, 500)
	if err != nil || n != 500 {
		t.Fatalf("read across EOF = %d, %v; want 500, nil", n, err)
	}
	if n, err := q.ReadAt(int(f.Fd()), p, 5000); err != nil || n != 0 {
		t.Fatalf("read past EOF = %d, %v; want 0, nil", n, err)
	}
	ro, err := os.Open(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	_, err = q.WriteAt(int(ro.Fd()), p, 0)
	if !errors.Is(err, syscall.EBADF) {
		t.Fatalf("write to read-only fd: %v, want EBADF", err)
	}
	if _, err := q.ReadAt(int(f.Fd()), p, -1); err == nil {
		t.Fatal("negative offset accepted")
	}
	if _, err := q.Do(Op{Kind: Read, Fd: 1 << 40, Bufs: [][]byte{p}}); err == nil {
		t.Fatal("file descriptor beyond int32 accepted")
	}
	if _, err := q.Do(Op{Kind: Read, Fd: int(f.Fd()), Bufs: make([][]byte, maxIovecs+1)}); err == nil {
		t.Fatal("too many buffers accepted")
	}
}

// TestConcurrentSubmitters: many goroutines, each on its own region, more
// of them than slots. Run with -race.
func TestConcurrentSubmitters(t *testing.T) {
	q := newQueue(t, 8)
	const workers, rounds, bs = 32, 40, 4096
	f := tempFile(t, workers*bs)
	fd := int(f.Fd())
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			off := int64(w * bs)
			for r := range rounds {
				p := bytes.Repeat([]byte{byte(w*rounds + r)}, bs)
				if n, err := q.WriteAt(fd, p, off); err != nil || n != bs {
					errs <- err
					return
				}
				got := make([]byte, bs)
				if n, err := q.ReadAt(fd, got, off); err != nil || n != bs || !bytes.Equal(got, p) {
					errs <- errors.New("read back differs")
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestBackpressure: with every slot held by a read that cannot finish (an
// empty pipe), Start blocks; it proceeds once one completes.
func TestBackpressure(t *testing.T) {
	q := newQueue(t, 2)
	var pr, pw [2]int
	for i := range 2 {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		pr[i], pw[i] = p[0], p[1]
		defer unix.Close(p[0])
		defer unix.Close(p[1])
	}
	done := make(chan Result, 3)
	for i := range 2 {
		if err := q.Start(Op{Kind: Read, Fd: pr[i], Bufs: [][]byte{make([]byte, 1)}}, uint64(i), done); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(q.free); n != 0 {
		t.Fatalf("%d slots free with two reads pending on a depth-2 queue", n)
	}
	started := make(chan error)
	go func() {
		started <- q.Start(Op{Kind: Nop}, 2, done)
	}()
	select {
	case err := <-started:
		t.Fatalf("Start on a full queue returned (%v) instead of blocking", err)
	case r := <-done:
		t.Fatalf("a pipe read completed with nothing written: %+v", r)
	default:
	}
	// Free one slot: the pending Start must now get through.
	if _, err := unix.Write(pw[0], []byte{'x'}); err != nil {
		t.Fatal(err)
	}
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	got := map[uint64]Result{}
	for len(got) < 2 {
		r := <-done
		got[r.Tag] = r
	}
	if got[0].N != 1 || got[2].Err != nil {
		t.Fatalf("results %+v", got)
	}
	unix.Write(pw[1], []byte{'y'})
	if r := <-done; r.Tag != 1 || r.N != 1 {
		t.Fatalf("last result %+v", r)
	}
}

// TestClose: Close cancels what the kernel holds (a pipe read that would
// never finish), waits for its completion, and fails new requests and
// requests blocked on a full queue with ErrClosed.
func TestClose(t *testing.T) {
	needUring(t)
	q, err := NewQueue(1)
	if err != nil {
		t.Fatal(err)
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	done := make(chan Result, 2)
	buf := make([]byte, 1)
	if err := q.Start(Op{Kind: Read, Fd: p[0], Bufs: [][]byte{buf}}, 1, done); err != nil {
		t.Fatal(err)
	}
	// Wait until the kernel has consumed the SQE, so the read is the
	// kernel's and not merely queued (that case fails with ErrClosed).
	for atomic.LoadUint32(q.r.sqHead) != 1 {
		runtime.Gosched()
	}
	blocked := make(chan error)
	go func() { blocked <- q.Start(Op{Kind: Nop}, 2, done) }()
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-blocked; !errors.Is(err, ErrClosed) {
		t.Fatalf("Start blocked on a full queue during Close: %v, want ErrClosed", err)
	}
	// Close waits for the kernel: the result is there when it returns.
	select {
	case r := <-done:
		if r.Tag != 1 || !errors.Is(r.Err, syscall.ECANCELED) {
			t.Fatalf("in-flight pipe read: %+v, want ECANCELED", r)
		}
	default:
		t.Fatal("Close returned before the in-flight read completed")
	}
	if _, err := q.Do(Op{Kind: Nop}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Do after Close: %v, want ErrClosed", err)
	}
	if err := q.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// TestCloseFailsQueued: whatever Close finds, every started request gets
// exactly one Result, and each is success or ErrClosed/ECANCELED.
func TestCloseFailsQueued(t *testing.T) {
	needUring(t)
	q, err := NewQueue(4)
	if err != nil {
		t.Fatal(err)
	}
	f := tempFile(t, 1<<16)
	done := make(chan Result, 64)
	started := 0
	for i := range 64 {
		op := Op{Kind: Read, Fd: int(f.Fd()), Off: int64(i) * 1024, Bufs: [][]byte{make([]byte, 1024)}}
		if i == 40 {
			go q.Close()
		}
		if err := q.Start(op, uint64(i), done); err != nil {
			if !errors.Is(err, ErrClosed) {
				t.Fatal(err)
			}
			break
		}
		started++
	}
	q.Close()
	for range started {
		r := <-done
		if r.Err != nil && !errors.Is(r.Err, ErrClosed) && !errors.Is(r.Err, syscall.ECANCELED) {
			t.Fatalf("request %d: %v", r.Tag, r.Err)
		}
	}
	select {
	case r := <-done:
		t.Fatalf("extra result %+v", r)
	default:
	}
}

// TestRegisteredFiles reads through a fixed-file index.
func TestRegisteredFiles(t *testing.T) {
	needUring(t)
	f := tempFile(t, 0)
	if _, err := f.WriteAt([]byte("registered"), 0); err != nil {
		t.Fatal(err)
	}
	r, err := New(2)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.RegisterFiles([]int32{int32(f.Fd())}); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 10)
	op := Op{Kind: Read, Fd: 0, Fixed: true, Bufs: [][]byte{p}}
	if err := r.Prep(&op, 9); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Submit(1); err != nil {
		t.Fatal(err)
	}
	var res int32
	r.Reap(func(_ uint64, rs int32) { res = rs })
	if res != 10 || string(p) != "registered" {
		t.Fatalf("fixed-file read: res %d %q", res, p)
	}
	if err := r.UnregisterFiles(); err != nil {
		t.Fatal(err)
	}
}

func TestSupportedSaysWhy(t *testing.T) {
	err := Supported()
	b, _ := os.ReadFile("/proc/sys/kernel/io_uring_disabled")
	t.Logf("Supported() = %v (io_uring_disabled=%q)", err, bytes.TrimSpace(b))
	if err != nil && len(err.Error()) < 20 {
		t.Fatalf("reason too terse: %v", err)
	}
}

// TestRingFails: when the ring stops waiting for completions (here its
// descriptor is swapped for /dev/null under the queue), requests in flight
// fail with ErrBroken, new ones with ErrClosed, and Close still returns:
// no caller waits forever and nothing panics.
func TestRingFails(t *testing.T) {
	q := newQueue(t, 2)
	q.sqMu.Lock() // the ring's release writes fd under it
	ringFD := q.r.fd
	q.sqMu.Unlock()
	pipes := make([][2]int, 2)
	for i := range pipes {
		if err := unix.Pipe2(pipes[i][:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		defer unix.Close(pipes[i][0])
		defer unix.Close(pipes[i][1])
	}
	done := make(chan Result, 2)
	bufs := [][]byte{make([]byte, 1), make([]byte, 1)}
	for i := range pipes {
		if err := q.Start(Op{Kind: Read, Fd: pipes[i][0], Bufs: [][]byte{bufs[i]}}, uint64(i), done); err != nil {
			t.Fatal(err)
		}
	}
	for atomic.LoadUint32(q.r.sqHead) != 2 {
		runtime.Gosched()
	}
	null, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(null)
	if err := unix.Dup3(null, ringFD, unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	// The completion goroutine meets /dev/null at its next wait: at once
	// if it was not inside the kernel, or after the first read completes.
	if _, err := unix.Write(pipes[0][1], []byte{'x'}); err != nil {
		t.Fatal(err)
	}
	got := map[uint64]Result{}
	for range 2 {
		r := <-done
		got[r.Tag] = r
	}
	if r := got[0]; (r.Err != nil || r.N != 1) && !errors.Is(r.Err, ErrBroken) {
		t.Errorf("the first read: %+v, want one byte or ErrBroken", r)
	}
	if r := got[1]; !errors.Is(r.Err, ErrBroken) {
		t.Errorf("the read in flight on a failed ring: %+v, want ErrBroken", r)
	}
	if _, err := q.Do(Op{Kind: Nop}); !errors.Is(err, ErrClosed) {
		t.Errorf("a request after the ring failed: %v, want ErrClosed", err)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	runtime.KeepAlive(bufs)
}
