package multipath_test

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/block/multipath"
	"github.com/viovmm/vio/block/multipath/pathtest"
)

const size = 1 << 20

type rig struct {
	mem    *blocktest.Mem
	paths  []*pathtest.Path
	m      *multipath.Multipath
	be     block.Backend
	events chan string
}

func newRig(t *testing.T, n int, o multipath.Options) *rig {
	t.Helper()
	r := &rig{mem: blocktest.NewMem(size), events: make(chan string, 256)}
	var bes []block.Backend
	for range n {
		p := pathtest.New(r.mem)
		r.paths = append(r.paths, p)
		bes = append(bes, p)
	}
	if o.ProbeInterval == 0 {
		o.ProbeInterval = -1 // tests probe by hand
	}
	o.Events = func(ev string, kv ...string) {
		select {
		case r.events <- ev + " " + kv[1]:
		default:
		}
	}
	be, err := multipath.NewBackend(bes, o)
	if err != nil {
		t.Fatal(err)
	}
	r.be, r.m = be, multipath.Of(be)
	t.Cleanup(func() { r.be.Close() })
	return r
}

func (r *rig) state(i int) string { return r.m.Status().Paths[i].State }

func (r *rig) wait(t *testing.T, want string) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev := <-r.events:
			if ev == want {
				return
			}
		case <-timeout:
			t.Fatalf("no event %q", want)
		}
	}
}

func pattern(seed byte, n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = seed + byte(i*7)
	}
	return p
}

// The multipath keeps the block.Backend contract, with and without a
// timeout.
func TestContract(t *testing.T) {
	for _, o := range []multipath.Options{{}, {Policy: multipath.RoundRobin, Timeout: time.Minute}} {
		t.Run(o.Policy.String(), func(t *testing.T) {
			blocktest.Run(t, func(t *testing.T, sz int64) block.Backend {
				mem := blocktest.NewMem(sz)
				be, err := multipath.NewBackend([]block.Backend{pathtest.New(mem), pathtest.New(mem)}, o)
				if err != nil {
					t.Fatal(err)
				}
				return be
			})
		})
	}
}

// A path that returns errors is taken out; the caller sees nothing, the
// request is re-issued on the standby, which becomes active.
func TestFailover(t *testing.T) {
	r := newRig(t, 2, multipath.Options{})
	if r.state(0) != "active" || r.state(1) != "standby" {
		t.Fatalf("states %+v", r.m.Status())
	}
	r.paths[0].Fail(syscall.EIO)
	w := pattern(1, 4096)
	if _, err := r.be.WriteAt(w, 8192); err != nil {
		t.Fatal(err)
	}
	r.wait(t, "path-failed 0")
	got := make([]byte, 4096)
	if _, err := r.be.ReadAt(got, 8192); err != nil || !bytes.Equal(got, w) {
		t.Fatalf("read back: %v", err)
	}
	st := r.m.Status()
	if st.Paths[0].State != "failed" || st.Paths[1].State != "active" || st.Paths[0].Failures != 1 || st.Paths[1].Reissued != 1 {
		t.Fatalf("status %+v", st)
	}
	// Still failing: a probe does not take it back.
	if r.m.Probe() != 0 || r.state(0) != "failed" {
		t.Fatal("a failing path was taken back")
	}
	r.paths[0].Fail(nil)
	if r.m.Probe() != 1 {
		t.Fatal("probe did not take the path back")
	}
	r.wait(t, "path-returned 0")
	before := r.paths[0].Calls.Load()
	if _, err := r.be.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if r.paths[0].Calls.Load() == before || r.state(0) != "active" || r.state(1) != "standby" {
		t.Fatalf("path 0 not used again: %+v", r.m.Status())
	}
}

// Round robin spreads requests over every healthy path.
func TestRoundRobin(t *testing.T) {
	r := newRig(t, 3, multipath.Options{Policy: multipath.RoundRobin})
	buf := make([]byte, 512)
	for i := range 30 {
		if _, err := r.be.ReadAt(buf, int64(i)*512); err != nil {
			t.Fatal(err)
		}
	}
	for i, p := range r.paths {
		if c := p.Calls.Load(); c != 10 {
			t.Fatalf("path %d served %d of 30", i, c)
		}
		if r.state(i) != "active" {
			t.Fatalf("path %d %s", i, r.state(i))
		}
	}
}

// Every path failed: requests fail with EIO at once, flush too.
func TestAllFailed(t *testing.T) {
	r := newRig(t, 2, multipath.Options{Policy: multipath.RoundRobin})
	r.paths[0].Fail(syscall.EIO)
	r.paths[1].Fail(syscall.ENOTCONN)
	buf := make([]byte, 512)
	if _, err := r.be.ReadAt(buf, 0); !errors.Is(err, multipath.ErrAllPathsFailed) || !errors.Is(err, syscall.EIO) {
		t.Fatalf("read: %v", err)
	}
	if _, err := r.be.WriteAt(buf, 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("write: %v", err)
	}
	r.paths[1].Fail(nil)
	if r.m.Probe() != 1 {
		t.Fatal("path 1 not taken back")
	}
	if _, err := r.be.WriteAt(buf, 0); err != nil {
		t.Fatal(err)
	}
}

// Every path stalled: requests fail after the timeout, not hang.
func TestAllStalled(t *testing.T) {
	r := newRig(t, 2, multipath.Options{Timeout: 20 * time.Millisecond})
	r.paths[0].Stall()
	r.paths[1].Stall()
	buf := make([]byte, 512)
	if _, err := r.be.ReadAt(buf, 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read: %v", err)
	}
	if err := r.be.Flush(); err != nil {
		t.Fatalf("flush with no writes: %v", err)
	}
	r.paths[0].Release()
	r.paths[1].Release()
}

// A stalled write is re-issued after the timeout; its late landing does
// not undo a later write to the same range (the zombie overlay and
// replay), and the stalled path is fenced until its requests returned.
func TestStallReissueNoReorder(t *testing.T) {
	r := newRig(t, 2, multipath.Options{Timeout: 30 * time.Millisecond})
	w1, w2 := pattern(1, 4096), pattern(2, 4096)
	r.paths[0].Stall()
	if _, err := r.be.WriteAt(w1, 4096); err != nil {
		t.Fatal(err)
	}
	<-r.paths[0].Entered()
	st := r.m.Status()
	if st.Paths[0].State != "failed" || st.Paths[1].Reissued != 1 || st.Zombies != 1 || st.Paths[0].InFlight != 1 {
		t.Fatalf("after the stall: %+v", st)
	}
	// Fenced: a probe does not even try while its write is outstanding.
	if r.m.Probe() != 0 {
		t.Fatal("path with a request outstanding was taken back")
	}
	if _, err := r.be.WriteAt(w2, 4096+1024); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 8192)
	copy(want[4096:], w1)
	copy(want[4096+1024:], w2)
	// The late W1 lands, over W2, on the shared storage.
	r.paths[0].Release()
	r.wait(t, "late-answer 0")
	got := make([]byte, 8192)
	if _, err := r.be.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read after the late landing: %v, differs at %d", err, firstDiff(got, want))
	}
	r.m.Probe() // replays, and takes path 0 back
	if st := r.m.Status(); st.Zombies != 0 || st.Paths[0].State != "active" {
		t.Fatalf("after probe: %+v", st)
	}
	if mem := r.mem.Bytes()[:8192]; !bytes.Equal(mem, want) {
		t.Fatalf("storage differs at %d after the replay", firstDiff(mem, want))
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// A stalled path holds at most MaxInflight goroutines, however many
// requests come.
func TestStallBounded(t *testing.T) {
	r := newRig(t, 2, multipath.Options{Policy: multipath.RoundRobin, Timeout: 10 * time.Millisecond, MaxInflight: 4})
	base := runtime.NumGoroutine()
	r.paths[0].Stall()
	var wg sync.WaitGroup
	for i := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 512)
			if _, err := r.be.ReadAt(buf, int64(i)*512); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := r.m.Status().Paths[0].InFlight; n > 4 || n == 0 {
		t.Fatalf("%d requests held by the stalled path", n)
	}
	if g := runtime.NumGoroutine() - base; g > 4 {
		t.Fatalf("%d goroutines left", g)
	}
	r.paths[0].Release()
}

// Flush reaches every path that took writes since the last flush, and no
// other; a path whose flush fails is replaced by a healthy one.
func TestFlush(t *testing.T) {
	r := newRig(t, 2, multipath.Options{Policy: multipath.RoundRobin})
	buf := make([]byte, 512)
	r.be.WriteAt(buf, 0) // path 0
	r.be.ReadAt(buf, 0)  // path 1
	c0, c1 := r.paths[0].Calls.Load(), r.paths[1].Calls.Load()
	if err := r.be.Flush(); err != nil {
		t.Fatal(err)
	}
	if r.paths[0].Calls.Load() != c0+1 || r.paths[1].Calls.Load() != c1 {
		t.Fatal("flush did not go to exactly the path that wrote")
	}
	r.be.WriteAt(buf, 0) // path 0
	r.be.WriteAt(buf, 0) // path 1
	r.paths[0].Fail(syscall.EIO)
	f := r.mem.Flushes
	if err := r.be.Flush(); err != nil {
		t.Fatal(err)
	}
	if r.mem.Flushes != f+2 { // path 1's own, and path 0's done on path 1
		t.Fatalf("%d flushes reached the storage", r.mem.Flushes-f)
	}
	r.paths[1].Fail(syscall.EIO)
	r.be.WriteAt(buf, 0)
}

// A random stream of writes and reads, with paths failing, stalling and
// coming back, never shows the caller an error and matches a model.
func TestRandomFaults(t *testing.T) {
	for _, pol := range []multipath.Policy{multipath.Failover, multipath.RoundRobin} {
		t.Run(pol.String(), func(t *testing.T) {
			r := newRig(t, 3, multipath.Options{Policy: pol, Timeout: 500 * time.Millisecond})
			model := make([]byte, size)
			rng := rand.New(rand.NewPCG(1, uint64(pol)))
			bad := -1 // at most one path is unhealthy at a time
			for i := range 400 {
				switch rng.IntN(20) {
				case 0:
					if bad < 0 {
						bad = rng.IntN(3)
						if rng.IntN(2) == 0 {
							r.paths[bad].Fail(syscall.EIO)
						} else {
							r.paths[bad].Stall()
						}
					}
				case 1:
					if bad >= 0 {
						r.paths[bad].Fail(nil)
						r.paths[bad].Release()
						bad = -1
					}
				case 2:
					if err := r.be.Flush(); err != nil {
						t.Fatalf("op %d flush: %v", i, err)
					}
				}
				// Under load a healthy path can miss the timeout too;
				// probing often takes it back (a stalled or failing
				// path stays out).
				r.m.Probe()
				off := rng.Int64N(size/512-16) * 512
				n := (1 + rng.IntN(16)) * 512
				if rng.IntN(2) == 0 {
					p := make([]byte, n)
					for j := range p {
						p[j] = byte(rng.Uint32())
					}
					if _, err := r.be.WriteAt(p, off); err != nil {
						t.Fatalf("op %d write: %v", i, err)
					}
					copy(model[off:], p)
				} else {
					p := make([]byte, n)
					if _, err := r.be.ReadAt(p, off); err != nil {
						t.Fatalf("op %d read: %v", i, err)
					}
					if !bytes.Equal(p, model[off:off+int64(n)]) {
						t.Fatalf("op %d: read at %d differs from the model", i, off)
					}
				}
			}
			if bad >= 0 {
				r.paths[bad].Fail(nil)
				r.paths[bad].Release()
			}
			r.m.Probe()
			r.m.Probe()
			if st := r.m.Status(); st.Zombies != 0 {
				t.Fatalf("zombies left: %+v", st)
			}
			if !bytes.Equal(r.mem.Bytes(), model) {
				t.Fatal("storage differs from the model")
			}
		})
	}
}

// Close ends a stalled path's requests before the others, and writes the
// range of an abandoned write again once it returned, so its late landing
// does not survive the close.
func TestCloseReplays(t *testing.T) {
	mem := blocktest.NewMem(size)
	a, b := pathtest.New(mem), pathtest.New(mem)
	be, err := multipath.NewBackend([]block.Backend{a, b}, multipath.Options{Timeout: 20 * time.Millisecond, ProbeInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	w1, w2 := pattern(1, 4096), pattern(2, 4096)
	a.Stall()
	if _, err := be.WriteAt(w1, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := be.WriteAt(w2, 0); err != nil {
		t.Fatal(err)
	}
	// pathtest's Close releases the stall: W1 lands during Close.
	if err := be.Close(); err != nil {
		t.Fatal(err)
	}
	if got := mem.Bytes()[:4096]; !bytes.Equal(got, w2) {
		t.Fatalf("storage holds the late write after close (differs at %d)", firstDiff(got, w2))
	}
	if !a.Closed.Load() || !b.Closed.Load() {
		t.Fatal("a path was not closed")
	}
}
