package mirror_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/block/faults"
	"github.com/viovmm/vio/block/mirror"
	"github.com/viovmm/vio/block/raw"
)

func TestConformance(t *testing.T) {
	t.Run("AssumeClean", func(t *testing.T) {
		blocktest.Run(t, func(t *testing.T, size int64) block.Backend {
			return open(t, mirror.Options{AssumeClean: true}, blocktest.NewMem(size), blocktest.NewMem(size))
		})
	})
	// No log and not clean: children 1 and 2 are rebuilt in the
	// background while the suite runs.
	t.Run("Rebuilding", func(t *testing.T) {
		blocktest.Run(t, func(t *testing.T, size int64) block.Backend {
			return open(t, mirror.Options{Region: 64 << 10}, blocktest.NewMem(size), blocktest.NewMem(size), blocktest.NewMem(size))
		})
	})
	t.Run("Log", func(t *testing.T) {
		blocktest.Run(t, func(t *testing.T, size int64) block.Backend {
			log := filepath.Join(t.TempDir(), "m.log")
			return open(t, mirror.Options{Log: log, Region: 64 << 10, AssumeClean: true}, blocktest.NewMem(size), blocktest.NewMem(size))
		})
	})
	t.Run("Reopen", func(t *testing.T) {
		blocktest.RunReopen(t, func(t *testing.T, size int64) func() (block.Backend, error) {
			dir := t.TempDir()
			for _, n := range []string{"a", "b"} {
				f, err := raw.Create(filepath.Join(dir, n), size, raw.Options{})
				if err != nil {
					t.Fatal(err)
				}
				f.Close()
			}
			return func() (block.Backend, error) {
				kids := openFiles(t, dir, "a", "b")
				return mirror.NewBackend(kids, mirror.Options{Log: filepath.Join(dir, "log"), AssumeClean: true})
			}
		})
	})
}

func open(t *testing.T, o mirror.Options, kids ...block.Backend) block.Backend {
	t.Helper()
	b, err := mirror.NewBackend(kids, o)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func openFiles(t *testing.T, dir string, names ...string) []block.Backend {
	t.Helper()
	var kids []block.Backend
	for _, n := range names {
		f, err := raw.Open(filepath.Join(dir, n), raw.Options{})
		if err != nil {
			t.Fatal(err)
		}
		kids = append(kids, f)
	}
	return kids
}

// recorder collects a mirror's events.
type recorder struct {
	mu  sync.Mutex
	evs []string
}

func (r *recorder) add(ev string, kv ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.evs = append(r.evs, fmt.Sprint(ev, kv))
}

func (r *recorder) count(prefix string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.evs {
		if len(e) >= len(prefix) && e[:len(prefix)] == prefix {
			n++
		}
	}
	return n
}

// model is what the disk must hold: writers own disjoint stripes of it, so
// concurrent writers never race on a byte and the model stays exact.
type model struct {
	data  []byte
	block int64
}

// worker writes and reads random blocks of its own, checking every read
// against the model; it returns the first mismatch or error.
func (m *model) worker(b block.Backend, id, workers int, ops int, rng *rand.Rand, after func(i int)) error {
	nblocks := int64(len(m.data)) / m.block
	buf := make([]byte, m.block)
	for i := range ops {
		k := rng.Int64N(nblocks/int64(workers))*int64(workers) + int64(id)
		off := k * m.block
		if rng.IntN(3) > 0 {
			for j := range buf {
				buf[j] = byte(rng.Uint32())
			}
			if _, err := b.WriteAt(buf, off); err != nil {
				return fmt.Errorf("op %d: write at %d: %w", i, off, err)
			}
			copy(m.data[off:], buf)
		} else {
			if _, err := b.ReadAt(buf, off); err != nil {
				return fmt.Errorf("op %d: read at %d: %w", i, off, err)
			}
			if !bytes.Equal(buf, m.data[off:off+m.block]) {
				return fmt.Errorf("op %d: read at %d returned stale or wrong data", i, off)
			}
		}
		if i%50 == 0 {
			if err := b.Flush(); err != nil {
				return fmt.Errorf("op %d: flush: %w", i, err)
			}
		}
		if after != nil {
			after(i)
		}
	}
	return nil
}

func run(t *testing.T, b block.Backend, m *model, workers, ops int, after func(w, i int)) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var a func(int)
			if after != nil {
				a = func(i int) { after(w, i) }
			}
			errs[w] = m.worker(b, w, workers, ops, rand.New(rand.NewPCG(uint64(w), 99)), a)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

func checkBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("%s: byte %d is %#x, want %#x", what, i, got[i], want[i])
			}
		}
		t.Fatalf("%s: lengths %d and %d", what, len(got), len(want))
	}
}

// A child that fail-stops in the middle of a stream of writes, reads and
// flushes from several goroutines is dropped with an event; no request
// fails, every read returns what was written, and the surviving child
// holds exactly the data.
func TestChildFailsMidStream(t *testing.T) {
	const size = 4 << 20
	a, b := blocktest.NewMem(size), blocktest.NewMem(size)
	fb := faults.New(b, 1)
	var ev recorder
	mb := open(t, mirror.Options{AssumeClean: true, Region: 64 << 10, Events: ev.add}, a, fb)
	// The child vanishes at its 300th write, while the workers run.
	if err := faults.Of(fb).AddRule(faults.Rule{Ops: faults.Write, Nth: 300, FailStop: true}); err != nil {
		t.Fatal(err)
	}
	m := &model{data: make([]byte, size), block: 4096}
	run(t, mb, m, 4, 400, nil)
	if !faults.Of(fb).Stopped() {
		t.Fatal("the fault never fired: the test did not test a failure")
	}
	st := mirror.Of(mb).Status()
	if st.Children[1].State != "failed" || st.Children[0].State != "in-sync" {
		t.Fatalf("status after the failure: %+v", st.Children)
	}
	if ev.count("child-failed") != 1 {
		t.Fatalf("events: %v, want one child-failed", ev.evs)
	}
	if st.DegradedRegions == 0 {
		t.Fatal("no region is recorded as missing on the failed child")
	}
	if err := mb.Close(); err != nil {
		t.Fatal(err)
	}
	checkBytes(t, "surviving child", a.Bytes(), m.data)
}

// A child whose reads fail is dropped and the read is served by the other;
// the guest sees no error.
func TestReadFailover(t *testing.T) {
	const size = 1 << 20
	a, b := blocktest.NewMem(size), blocktest.NewMem(size)
	fa := faults.New(a, 1)
	var ev recorder
	mb := open(t, mirror.Options{AssumeClean: true, Events: ev.add}, fa, b)
	defer mb.Close()
	data := bytes.Repeat([]byte("mirror"), 1000)
	if _, err := mb.WriteAt(data, 5000); err != nil {
		t.Fatal(err)
	}
	faults.Of(fa).AddRule(faults.Rule{Ops: faults.Read, Errno: syscall.EIO})
	for range 4 { // child 0 is the first choice of an idle mirror
		got := make([]byte, len(data))
		if _, err := mb.ReadAt(got, 5000); err != nil {
			t.Fatalf("read: %v", err)
		}
		checkBytes(t, "read", got, data)
	}
	if st := mirror.Of(mb).Status(); st.Children[0].State != "failed" {
		t.Fatalf("child 0 is %s after failing reads", st.Children[0].State)
	}
	// The last child in sync is never dropped: its error is the disk's.
	faults.Of(fa).SetRules(nil)
	fb := faults.New(blocktest.NewMem(size), 2)
	faults.Of(fb).AddRule(faults.Rule{Ops: faults.Read, Errno: syscall.EIO})
	one := open(t, mirror.Options{}, fb)
	defer one.Close()
	if _, err := one.ReadAt(make([]byte, 10), 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read of a lone failing child: %v, want EIO", err)
	}
}

// Flush is honest: a child failing a flush is dropped (and Flush still
// succeeds, the other child having flushed); when the last child in sync
// fails its flush, Flush fails.
func TestFlush(t *testing.T) {
	const size = 1 << 20
	a, b := blocktest.NewMem(size), blocktest.NewMem(size)
	fa, fb := faults.New(a, 1), faults.New(b, 2)
	mb := open(t, mirror.Options{AssumeClean: true}, fa, fb)
	defer mb.Close()
	if _, err := mb.WriteAt([]byte{1}, 0); err != nil {
		t.Fatal(err)
	}
	faults.Of(fb).AddRule(faults.Rule{Ops: faults.Flush, Errno: syscall.EIO})
	if err := mb.Flush(); err != nil {
		t.Fatalf("flush with one child failing: %v", err)
	}
	if a.Flushes != 1 {
		t.Fatalf("child 0 saw %d flushes, want 1", a.Flushes)
	}
	if st := mirror.Of(mb).Status(); st.Children[1].State != "failed" {
		t.Fatalf("child 1 is %s after failing a flush", st.Children[1].State)
	}
	faults.Of(fa).AddRule(faults.Rule{Ops: faults.Flush, Errno: syscall.EIO})
	if err := mb.Flush(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("flush with the last child failing: %v, want EIO", err)
	}
	faults.Of(fa).SetRules(nil)
}

// A write that every child fails is the disk's error; no child is dropped.
func TestAllChildrenFail(t *testing.T) {
	fa := faults.New(blocktest.NewMem(1<<20), 1)
	fb := faults.New(blocktest.NewMem(1<<20), 2)
	mb := open(t, mirror.Options{AssumeClean: true}, fa, fb)
	defer mb.Close()
	for _, f := range []block.Backend{fa, fb} {
		faults.Of(f).AddRule(faults.Rule{Ops: faults.Write, Errno: syscall.ENOSPC})
	}
	if _, err := mb.WriteAt([]byte{1}, 0); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write: %v, want ENOSPC", err)
	}
	for _, c := range mirror.Of(mb).Status().Children {
		if c.State != "in-sync" {
			t.Fatalf("a child was dropped: %+v", c)
		}
	}
	for _, f := range []block.Backend{fa, fb} {
		faults.Of(f).SetRules(nil)
	}
}

// A new child attached while four goroutines keep writing ends byte-
// identical to the old one and to what was written (live storage
// migration when the old child is removed afterwards).
func TestRebuildUnderWrites(t *testing.T) {
	const size = 8<<20 + 512
	a := blocktest.NewMem(size)
	var ev recorder
	mb := open(t, mirror.Options{Region: 64 << 10, Events: ev.add}, a)
	m := &model{data: make([]byte, size), block: 4096}
	rng := rand.New(rand.NewPCG(5, 5))
	for i := range m.data {
		m.data[i] = byte(rng.Uint32())
	}
	if _, err := mb.WriteAt(m.data, 0); err != nil {
		t.Fatal(err)
	}
	b := blocktest.NewMem(size)
	mm := mirror.Of(mb)
	var attached atomic.Bool
	run(t, mb, m, 4, 600, func(w, i int) {
		if w == 0 && i == 100 {
			if slot, err := mm.Attach(-1, b); err != nil || slot != 1 {
				t.Errorf("attach: slot %d, %v", slot, err)
			}
			attached.Store(true)
		}
	})
	mm.Wait()
	st := mm.Status()
	if st.Children[1].State != "in-sync" || st.LastResync == nil || !st.LastResync.Done || st.LastResync.Copied != size {
		t.Fatalf("after the rebuild: %+v, %+v", st.Children, st.LastResync)
	}
	if ev.count("resync-done") != 1 || ev.count("resync-progress") != 9 {
		t.Fatalf("events %v: want a resync-done and nine resync-progress", ev.evs)
	}
	checkBytes(t, "old child", a.Bytes(), m.data)
	checkBytes(t, "new child against the old", b.Bytes(), a.Bytes())
	// Live migration: drop the old child; the new one serves alone.
	if err := mm.Remove(0); err != nil {
		t.Fatal(err)
	}
	run(t, mb, m, 2, 100, nil)
	if err := mb.Close(); err != nil {
		t.Fatal(err)
	}
	checkBytes(t, "new child", b.Bytes(), m.data)
}

// A child that failed and comes back is resynced partially: the regions
// written while it was out, no more.
func TestReturningChild(t *testing.T) {
	const size, region = 16 << 20, 64 << 10
	a, b := blocktest.NewMem(size), blocktest.NewMem(size)
	fb := faults.New(b, 1)
	mb := open(t, mirror.Options{AssumeClean: true, Region: region}, a, fb)
	mm := mirror.Of(mb)
	write := func(off int64, v byte) {
		if _, err := mb.WriteAt(bytes.Repeat([]byte{v}, 4096), off); err != nil {
			t.Fatal(err)
		}
	}
	write(0, 1)
	if err := mb.Flush(); err != nil {
		t.Fatal(err)
	}
	faults.Of(fb).FailStop()
	// Three regions written while the child is out (the first write
	// finds it gone and drops it).
	write(1*region, 2)
	write(5*region, 3)
	write(9*region+100, 4)
	if mm.Status().Children[1].State != "failed" {
		t.Fatal("the child was not dropped")
	}
	faults.Of(fb).Restart()
	if _, err := mm.Attach(1, fb); err != nil {
		t.Fatal(err)
	}
	mm.Wait()
	st := mm.Status()
	if st.LastResync.Reason != "returning" || st.LastResync.Bytes != 3*region || st.LastResync.Copied != 3*region {
		t.Fatalf("resync %+v: want 3 regions copied for a returning child", st.LastResync)
	}
	if st.DegradedRegions != 0 {
		t.Fatalf("%d degraded regions left", st.DegradedRegions)
	}
	if err := mb.Close(); err != nil {
		t.Fatal(err)
	}
	checkBytes(t, "returned child", b.Bytes(), a.Bytes())
}

func TestControlRefusals(t *testing.T) {
	mb := open(t, mirror.Options{AssumeClean: true}, blocktest.NewMem(1<<20), blocktest.NewMem(1<<20))
	defer mb.Close()
	mm := mirror.Of(mb)
	if _, err := mm.Attach(0, blocktest.NewMem(1<<20)); err == nil {
		t.Error("attach over an in-sync child accepted")
	}
	if _, err := mm.Attach(-1, blocktest.NewMem(1<<19)); err == nil {
		t.Error("a smaller child accepted")
	}
	if _, err := mm.Attach(5, blocktest.NewMem(1<<20)); err == nil {
		t.Error("a slot past the end accepted")
	}
	if err := mm.Remove(0); err != nil {
		t.Fatal(err)
	}
	if err := mm.Remove(1); err == nil {
		t.Error("the last child in sync was removed")
	}
	if err := mm.Remove(0); err == nil {
		t.Error("an empty slot was removed")
	}
}

// mkFiles creates zero-filled raw files of size in dir.
func mkFiles(t *testing.T, dir string, size int64, names ...string) {
	t.Helper()
	for _, n := range names {
		f, err := raw.Create(filepath.Join(dir, n), size, raw.Options{})
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
}

// After a crash (the mirror abandoned, not closed) with writes that may
// have reached only one child, reopening from the files resyncs exactly the
// regions written since the last flush, and the children agree afterwards.
func TestCrashResync(t *testing.T) {
	const size, region = 32 << 20, 64 << 10
	dir := t.TempDir()
	mkFiles(t, dir, size, "a", "b")
	log := filepath.Join(dir, "log")
	o := mirror.Options{Log: log, Region: region, AssumeClean: true}
	b1, err := mirror.NewBackend(openFiles(t, dir, "a", "b"), o)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 1))
	buf := make([]byte, 64<<10)
	for i := range 200 { // all over the disk, then flushed
		for j := range buf {
			buf[j] = byte(rng.Uint32())
		}
		if _, err := b1.WriteAt(buf, int64(i)*(size/200)&^4095); err != nil {
			t.Fatal(err)
		}
	}
	if err := b1.Flush(); err != nil {
		t.Fatal(err)
	}
	// Writes in flight at the crash: four regions, not flushed.
	dirty := []int64{3, 17, 100, 511}
	for _, r := range dirty {
		if _, err := b1.WriteAt(bytes.Repeat([]byte{0xee}, 8192), r*region+4096); err != nil {
			t.Fatal(err)
		}
	}
	if st := mirror.Of(b1).Status(); st.DirtyRegions != int64(len(dirty)) {
		t.Fatalf("%d dirty regions before the crash, want %d", st.DirtyRegions, len(dirty))
	}
	// The crash: b1 is abandoned. One of the in-flight writes reached
	// child a only: b's copy of region 100 is torn.
	bf, err := os.OpenFile(filepath.Join(dir, "b"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bf.WriteAt(bytes.Repeat([]byte{0x11}, 4096), 100*region+4096); err != nil {
		t.Fatal(err)
	}
	bf.Close()

	var ev recorder
	o.Events = ev.add
	b2, err := mirror.NewBackend(openFiles(t, dir, "a", "b"), o)
	if err != nil {
		t.Fatal(err)
	}
	st := mirror.Of(b2).Status()
	if st.LastResync == nil || st.LastResync.Reason != "crash" || st.LastResync.Copied != int64(len(dirty))*region || !st.LastResync.Done {
		t.Fatalf("resync after the crash: %+v, want %d bytes", st.LastResync, int64(len(dirty))*region)
	}
	if st.DirtyRegions != 0 {
		t.Fatalf("%d dirty regions after the resync", st.DirtyRegions)
	}
	if ev.count("resync-done") != 1 {
		t.Fatalf("events %v", ev.evs)
	}
	if err := b2.Close(); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, dir, "a", "b")
}

func sameFiles(t *testing.T, dir, x, y string) {
	t.Helper()
	a, err := os.ReadFile(filepath.Join(dir, x))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, y))
	if err != nil {
		t.Fatal(err)
	}
	checkBytes(t, y+" against "+x, b, a)
}

// gate passes writes until the nth, then blocks it until released and
// fails every write after: a process killed in the middle of a rebuild.
type gate struct {
	block.Backend
	n       atomic.Int64
	at      int64
	reached chan struct{}
	release chan struct{}
}

func (g *gate) WriteAt(p []byte, off int64) (int, error) {
	switch k := g.n.Add(1); {
	case k == g.at:
		close(g.reached)
		<-g.release
		return 0, syscall.EIO
	case k > g.at:
		return 0, syscall.EIO
	}
	return g.Backend.WriteAt(p, off)
}

func (g *gate) WriteZeroes(off, n int64, unmap bool) error {
	return g.Backend.(block.ZeroWriter).WriteZeroes(off, n, unmap)
}

// kill -9 during a rebuild: reopening resumes it with only what the killed
// rebuild had not made durable, and the children end identical.
func TestCrashDuringRebuild(t *testing.T) {
	const size, region = 32 << 20, 64 << 10 // 512 regions
	dir := t.TempDir()
	mkFiles(t, dir, size, "a", "b")
	log := filepath.Join(dir, "log")
	o := mirror.Options{Log: log, Region: region}
	// Fill a with data while it is alone.
	one, err := mirror.NewBackend(openFiles(t, dir, "a"), o)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(2, 2))
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		for j := range buf {
			buf[j] = byte(rng.Uint32())
		}
		if _, err := one.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := one.Flush(); err != nil {
		t.Fatal(err)
	}
	// Attach b; the rebuild is killed at its 300th write (region 299):
	// four batches of 64 regions were flushed and logged before it.
	kids := openFiles(t, dir, "b")
	g := &gate{Backend: kids[0], at: 300, reached: make(chan struct{}), release: make(chan struct{})}
	t.Cleanup(func() { close(g.release) })
	if _, err := mirror.Of(one).Attach(-1, g); err != nil {
		t.Fatal(err)
	}
	<-g.reached
	// kill -9: nothing more happens in that process. Reopen both.
	var ev recorder
	o.Events = ev.add
	two, err := mirror.NewBackend(openFiles(t, dir, "a", "b"), o)
	if err != nil {
		t.Fatal(err)
	}
	m2 := mirror.Of(two)
	m2.Wait()
	st := m2.Status()
	const copiedBefore = 4 * 64 * region
	if st.LastResync == nil || st.LastResync.Bytes != size-copiedBefore || st.LastResync.Copied != size-copiedBefore || !st.LastResync.Done {
		t.Fatalf("resumed resync: %+v, want %d of %d bytes", st.LastResync, size-copiedBefore, size)
	}
	if st.Children[1].State != "in-sync" {
		t.Fatalf("child b is %s", st.Children[1].State)
	}
	if err := two.Close(); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, dir, "a", "b")
}

// A log names the children it was written for: one that no child is in
// sync for, or of another disk, is refused with a sentence.
func TestLogMismatch(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	b, err := mirror.NewBackend([]block.Backend{blocktest.NewMem(1 << 20)}, mirror.Options{Log: log})
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	if _, err := mirror.NewBackend([]block.Backend{blocktest.NewMem(2 << 20)}, mirror.Options{Log: log}); err == nil {
		t.Error("a log of another disk size accepted")
	}
	if _, err := mirror.NewBackend([]block.Backend{blocktest.NewMem(1 << 20)}, mirror.Options{Log: log, Region: 8192}); err == nil {
		t.Error("a log with another region size accepted")
	}
	os.WriteFile(log, []byte("garbage"), 0o600)
	if _, err := mirror.NewBackend([]block.Backend{blocktest.NewMem(1 << 20)}, mirror.Options{Log: log}); err == nil {
		t.Error("a garbage log accepted")
	}
}

// Read-only: the log is only read, writes are refused at the top, reads
// come from the first child in sync (a crash's doubt is not resolved).
func TestReadOnly(t *testing.T) {
	dir := t.TempDir()
	mkFiles(t, dir, 1<<20, "a", "b")
	log := filepath.Join(dir, "log")
	rw, err := mirror.NewBackend(openFiles(t, dir, "a", "b"), mirror.Options{Log: log, AssumeClean: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rw.WriteAt([]byte("abc"), 10); err != nil {
		t.Fatal(err)
	}
	rw.Close()
	before, _ := os.ReadFile(log)
	ro, err := mirror.NewBackend(openFiles(t, dir, "a", "b"), mirror.Options{Log: log, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ro.WriteAt([]byte("x"), 0); !errors.Is(err, block.ErrReadOnly) {
		t.Fatalf("write to a read-only mirror: %v", err)
	}
	got := make([]byte, 3)
	if _, err := ro.ReadAt(got, 10); err != nil || string(got) != "abc" {
		t.Fatalf("read %q, %v", got, err)
	}
	if err := ro.Close(); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(log)
	if !bytes.Equal(before, after) {
		t.Fatal("a read-only mirror changed its log")
	}
}
