package blk_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/block/raw"
	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/virtio/ringpoll"
)

// tryDisk is a back-end that can serve reads without waiting (from its
// memory) unless it is cold, and counts how its reads arrive. When
// entered is set, each try announces itself there; when hold is set,
// each try then waits until it is closed (a try that takes its time
// copying, so that a test can act in the middle of a batch).
type tryDisk struct {
	*blocktest.Mem
	entered chan struct{}
	hold    chan struct{}
	workers chan struct{} // when set, each blocking read announces itself
	drained chan struct{} // when set, Drain(true) announces itself

	once        sync.Once // closes hold
	mu          sync.Mutex
	cold        bool // tries would block
	unsupported bool // tries are never possible
	tries       int
	reads       int // blocking reads (a worker's)
}

func newTryDisk(size int64) *tryDisk {
	m := blocktest.NewMem(size)
	b := m.Bytes()
	for i := range b {
		b[i] = byte(i*7 + i>>9)
	}
	return &tryDisk{Mem: m}
}

func (d *tryDisk) TryReadvAt(bufs [][]byte, off int64) (int, error) {
	d.mu.Lock()
	d.tries++
	cold, unsupported := d.cold, d.unsupported
	d.mu.Unlock()
	if d.entered != nil {
		d.entered <- struct{}{}
	}
	if d.hold != nil {
		<-d.hold
	}
	switch {
	case unsupported:
		return 0, errors.ErrUnsupported
	case cold:
		return 0, block.ErrWouldBlock
	}
	return d.Mem.ReadvAt(bufs, off)
}

func (d *tryDisk) ReadvAt(bufs [][]byte, off int64) (int, error) {
	d.mu.Lock()
	d.reads++
	d.mu.Unlock()
	if d.workers != nil {
		d.workers <- struct{}{}
	}
	return d.Mem.ReadvAt(bufs, off)
}

func (d *tryDisk) ReadAt(p []byte, off int64) (int, error) { return d.ReadvAt([][]byte{p}, off) }

// Drain tells a test that a reset has begun: the device drains its
// back-end right after it has told its queues to stop.
func (d *tryDisk) Drain(on bool) {
	if on && d.drained != nil {
		select {
		case d.drained <- struct{}{}:
		default:
		}
	}
}

// release lets every try through from now on.
func (d *tryDisk) release() {
	d.once.Do(func() { close(d.hold) })
}

func (d *tryDisk) counts() (tries, reads int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.tries, d.reads
}

// noEnv clears the fast-path switches for t, so that a test of the fast
// path does not depend on the environment it runs in.
func noEnv(t *testing.T) {
	t.Setenv("VIO_BLK_INLINE", "")
	t.Setenv("VIO_BLK_DIRECT_COMPLETE", "")
}

// startIdle starts m like start and returns once its queue's goroutine
// sleeps, so that requests the test adds before it kicks are all taken
// in one batch.
func startIdle(t *testing.T, m *machine, eventIdx bool) {
	t.Helper()
	idle := make(chan struct{}, 1)
	blk.SetIdleHook(t, func() {
		select {
		case idle <- struct{}{}:
		default:
		}
	})
	m.start(t, 0, eventIdx)
	receive(t, idle, "idle queue goroutine after DRIVER_OK")
	blk.SetIdleHook(t, func() {})
}

// receive waits for one token on c, failing t after the hang bound.
func receive(t *testing.T, c <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(wait):
		t.Fatalf("no %s", what)
	}
}

// A raw file's cached data is read by the queue's goroutine itself; data
// the page cache does not hold goes to a worker, after which the next
// read is not even tried (the backoff) and the one after is served inline
// again. Writes never are; VIO_BLK_INLINE=off turns it all off.
func TestInlineReadRawFile(t *testing.T) {
	noEnv(t)
	path := filepath.Join(t.TempDir(), "disk.raw")
	f, err := raw.Create(path, 1<<20, raw.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := pattern(3, 8192)
	if _, err := f.WriteAt(want, 64*512); err != nil {
		t.Fatal(err)
	}
	m := newMachine(t, f, blk.Config{})
	m.start(t, 0, true)
	check := func(step string, inline, misses uint64) {
		t.Helper()
		data, st := m.read(t, 64, 4096)
		if st != blk.StatusOK || !bytes.Equal(data, want[:4096]) {
			t.Fatalf("%s: status %d, data equal %v", step, st, bytes.Equal(data, want[:4096]))
		}
		if s := m.dev.Stats(); s.InlineReads != inline || s.InlineMisses != misses {
			t.Fatalf("%s: inline %d misses %d, want %d and %d", step, s.InlineReads, s.InlineMisses, inline, misses)
		}
	}
	check("cached", 1, 0)

	// Written back and dropped from the page cache: the try would block.
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	dropCache(t, path)
	check("dropped", 1, 1)
	check("backing off", 1, 1) // cached again by the worker, but not tried
	check("cached again", 2, 1)

	if st := m.write(t, 64, want[:512]); st != blk.StatusOK {
		t.Fatalf("write: %d", st)
	}
	if s := m.dev.Stats(); s.InlineReads != 2 || s.Reads != 4 || s.Writes != 1 || s.ReadBytes != 4*4096 {
		t.Fatalf("stats %+v", s)
	}

	t.Setenv("VIO_BLK_INLINE", "off")
	m2 := newMachine(t, f, blk.Config{})
	m2.start(t, 0, true)
	if _, st := m2.read(t, 64, 4096); st != blk.StatusOK || m2.dev.Stats().InlineReads != 0 {
		t.Fatalf("VIO_BLK_INLINE=off: status %d, stats %+v", st, m2.dev.Stats())
	}
}

// dropCache drops a file's clean pages from the host's page cache.
func dropCache(t *testing.T, path string) {
	t.Helper()
	fd, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	if err := unix.Fadvise(int(fd.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
}

// A back-end that says it can never serve tries is tried once, for the
// life of the device (neither the rest of the batch nor a second
// activation tries again), and every read is served by a worker.
func TestInlineUnsupported(t *testing.T) {
	noEnv(t)
	d := newTryDisk(1 << 20)
	d.unsupported = true
	m := newMachine(t, d, blk.Config{})
	startIdle(t, m, true)
	for i := range 3 {
		m.queues[0].Add([][]byte{header(blk.TypeIn, uint64(i))}, []uint32{512, 1})
	}
	m.guest.Kick(0)
	for _, u := range m.collect(t, 0, 3) {
		i := int(u.ID) / 3 // three descriptors a request, from an empty ring
		if status(t, u, 513) != blk.StatusOK || !bytes.Equal(u.Data[:512], d.Bytes()[i*512:(i+1)*512]) {
			t.Fatalf("read %d failed", i)
		}
	}
	if err := m.guest.Reset(); err != nil {
		t.Fatal(err)
	}
	m.start(t, 0, true)
	if _, st := m.read(t, 0, 512); st != blk.StatusOK {
		t.Fatal("read after reset failed")
	}
	if tries, reads := d.counts(); tries != 1 || reads != 4 {
		t.Fatalf("%d tries, %d reads; want 1 and 4", tries, reads)
	}
	if s := m.dev.Stats(); s.InlineReads != 0 || s.Reads != 4 {
		t.Fatalf("stats %+v", s)
	}
}

// One batch serves at most 16 reads or 256 KiB inline and hands the
// other reads to the workers at once: with the first try held, the
// workers serve the rest meanwhile. A read above 128 KiB is never tried.
func TestInlineBounded(t *testing.T) {
	for _, c := range []struct{ n, size, inline int }{{40, 4096, 16}, {5, 128 << 10, 2}} {
		t.Run(fmt.Sprint(c.size), func(t *testing.T) {
			noEnv(t)
			d := newTryDisk(4 << 20)
			d.entered = make(chan struct{}, c.n)
			d.hold = make(chan struct{})
			d.workers = make(chan struct{}, c.n)
			m := newMachine(t, d, blk.Config{QueueSize: 64})
			t.Cleanup(d.release) // before the machine's reset, on failure too
			startIdle(t, m, true)
			q := m.queues[0]
			sectors := uint64(c.size / 512)
			for i := range c.n {
				if _, err := q.AddIndirect([][]byte{header(blk.TypeIn, uint64(i)*sectors)}, []uint32{uint32(c.size), 1}); err != nil {
					t.Fatal(err)
				}
			}
			m.guest.Kick(0)
			receive(t, d.entered, "try")
			for range c.n - c.inline {
				receive(t, d.workers, "worker read while the first try was held")
			}
			d.release()
			for _, u := range m.collect(t, 0, c.n) {
				off := int(u.ID) * c.size // heads are handed out in order from an empty ring
				if status(t, u, c.size+1) != blk.StatusOK || !bytes.Equal(u.Data[:c.size], d.Bytes()[off:off+c.size]) {
					t.Fatalf("request %d: wrong data or status", u.ID)
				}
			}
			if tries, reads := d.counts(); tries != c.inline || reads != c.n-c.inline {
				t.Fatalf("%d tries, %d worker reads; want %d and %d", tries, reads, c.inline, c.n-c.inline)
			}

			if _, st := m.read(t, 0, 128<<10+512); st != blk.StatusOK {
				t.Fatal("large read failed")
			}
			if tries, _ := d.counts(); tries != c.inline {
				t.Fatalf("a read above 128 KiB was tried inline")
			}
			if s := m.dev.Stats(); s.InlineReads != uint64(c.inline) || s.Reads != uint64(c.n+1) {
				t.Fatalf("stats %+v", s)
			}
		})
	}
}

// A pause requested while the queue's goroutine serves a batch inline
// waits for the batch, whose requests are all in the used ring when Pause
// returns.
func TestInlinePauseMidBatch(t *testing.T) {
	noEnv(t)
	d := newTryDisk(1 << 20)
	d.entered = make(chan struct{}, 8)
	d.hold = make(chan struct{})
	m := newMachine(t, d, blk.Config{})
	t.Cleanup(d.release)
	startIdle(t, m, false)
	q := m.queues[0]
	for i := range 4 {
		q.Add([][]byte{header(blk.TypeIn, uint64(i))}, []uint32{512, 1})
	}
	m.guest.Kick(0)
	receive(t, d.entered, "try")
	paused := make(chan error, 1)
	go func() { paused <- m.dev.Pause(context.Background()) }()
	select {
	case err := <-paused:
		t.Fatalf("Pause returned (%v) in the middle of an inline batch", err)
	default:
	}
	d.release()
	if err := <-paused; err != nil {
		t.Fatal(err)
	}
	if got := q.UsedIdx(); got != 4 {
		t.Fatalf("used index %d when Pause returned, want 4", got)
	}
	if tries, reads := d.counts(); tries != 4 || reads != 0 {
		t.Fatalf("%d tries, %d worker reads", tries, reads)
	}
	q.Add([][]byte{header(blk.TypeIn, 9)}, []uint32{512, 1})
	m.guest.Kick(0)
	m.dev.Resume()
	for _, u := range m.collect(t, 0, 5) {
		if status(t, u, 513) != blk.StatusOK {
			t.Fatalf("request %d failed", u.ID)
		}
	}
}

// A reset in the middle of an inline batch waits for the try under way
// and abandons the rest: nothing reaches the used ring or the back-end
// afterwards.
func TestInlineResetMidBatch(t *testing.T) {
	noEnv(t)
	d := newTryDisk(1 << 20)
	d.entered = make(chan struct{}, 8)
	d.hold = make(chan struct{})
	d.drained = make(chan struct{}, 1)
	m := newMachine(t, d, blk.Config{})
	t.Cleanup(d.release)
	startIdle(t, m, true)
	q := m.queues[0]
	for i := range 4 {
		q.Add([][]byte{header(blk.TypeIn, uint64(i))}, []uint32{512, 1})
	}
	m.guest.Kick(0)
	receive(t, d.entered, "try")
	reset := make(chan error, 1)
	go func() { reset <- m.guest.Reset() }()
	receive(t, d.drained, "reset")
	select {
	case err := <-reset:
		t.Fatalf("reset returned (%v) with a try under way", err)
	default:
	}
	d.release()
	if err := <-reset; err != nil {
		t.Fatal(err)
	}
	if tries, reads := d.counts(); tries != 1 || reads != 0 {
		t.Fatalf("%d tries, %d worker reads after a reset mid-batch; want 1 and 0", tries, reads)
	}
	if got := q.UsedIdx(); got != 0 {
		t.Fatalf("used index %d after a reset mid-batch", got)
	}
}

// A worker that finishes the only request in flight while the queue's
// goroutine sleeps returns it itself; with two in flight, the first goes
// back through the queue's goroutine (to be batched) and the last
// directly. NoDirectCompletion turns it off.
func TestDirectCompletion(t *testing.T) {
	for _, off := range []bool{false, true} {
		t.Run(map[bool]string{false: "on", true: "off"}[off], func(t *testing.T) {
			noEnv(t)
			idle := make(chan struct{}, 16)
			blk.SetIdleHook(t, func() { idle <- struct{}{} })
			be := &held{Backend: noZero{blocktest.NewMem(1 << 20)}, entered: make(chan struct{}, 4), release: make(chan struct{})}
			m := newMachine(t, be, blk.Config{NoDirectCompletion: off})
			m.start(t, 0, true)
			if !off {
				receive(t, idle, "idle queue goroutine after DRIVER_OK")
			}

			m.submit(t, 0, [][]byte{header(blk.TypeIn, 0)}, []uint32{512, 1}, false)
			receive(t, be.entered, "read on the back-end")
			if !off {
				receive(t, idle, "idle queue goroutine with a read in flight")
			}
			be.release <- struct{}{}
			if u := m.collect(t, 0, 1)[0]; status(t, u, 513) != blk.StatusOK {
				t.Fatal("read failed")
			}
			s := m.dev.Stats()
			if want := map[bool]uint64{false: 1, true: 0}[off]; s.DirectCompletions != want || s.Interrupts != 1 {
				t.Fatalf("direct completions %d (want %d), interrupts %d", s.DirectCompletions, want, s.Interrupts)
			}
			if off {
				return
			}

			for i := range 2 {
				q := m.queues[0]
				q.Add([][]byte{header(blk.TypeIn, uint64(i))}, []uint32{512, 1})
			}
			m.guest.Kick(0)
			receive(t, be.entered, "first read on the back-end")
			receive(t, be.entered, "second read on the back-end")
			receive(t, idle, "idle queue goroutine with two reads in flight")
			be.release <- struct{}{}
			receive(t, idle, "idle queue goroutine after the first completion")
			be.release <- struct{}{}
			for _, u := range m.collect(t, 0, 2) {
				if status(t, u, 513) != blk.StatusOK {
					t.Fatal("read failed")
				}
			}
			if s := m.dev.Stats(); s.DirectCompletions != 2 {
				t.Fatalf("direct completions %d, want 2", s.DirectCompletions)
			}
		})
	}
}

// With polling on, a request the driver makes available after a batch is
// found without a notification (the driver sees notifications disabled
// and does not kick), and a pause or a reset ends a poll.
func TestPoll(t *testing.T) {
	noEnv(t)
	polling := make(chan struct{})
	proceed := make(chan struct{})
	var once sync.Once
	blk.SetPollHook(t, func() {
		// Only the first poll waits for the test.
		once.Do(func() {
			polling <- struct{}{}
			<-proceed
		})
	})
	cfg := blk.Config{Poll: ringpoll.Config{Mode: ringpoll.Fixed, Window: ringpoll.MaxWindow}}
	m := newMachine(t, blocktest.NewMem(1<<20), cfg)
	m.start(t, 0, false)
	receive(t, polling, "poll after DRIVER_OK")
	q := m.queues[0]
	if _, err := q.Add([][]byte{header(blk.TypeIn, 0)}, []uint32{512, 1}); err != nil {
		t.Fatal(err)
	}
	if q.NeedsKick() {
		t.Fatal("the driver is asked to kick while the device polls")
	}
	close(proceed)
	if u := m.collect(t, 0, 1)[0]; status(t, u, 513) != blk.StatusOK {
		t.Fatal("read failed")
	}
	s := m.dev.Stats()
	if s.PolledChains != 1 || s.Polls == 0 || s.PollTime <= 0 || s.Notifications != 0 {
		t.Fatalf("stats %+v", s)
	}

	// A pause and a reset end the poll the device is in now.
	if err := m.dev.Pause(context.Background()); err != nil {
		t.Fatal(err)
	}
	m.dev.Resume()
	if _, st := m.read(t, 1, 512); st != blk.StatusOK {
		t.Fatal("read after resume failed")
	}
	if err := m.guest.Reset(); err != nil {
		t.Fatal(err)
	}
}

// A bad poll policy is refused.
func TestPollConfig(t *testing.T) {
	if _, err := blk.New(blocktest.NewMem(4096), blk.Config{Poll: ringpoll.Config{Mode: ringpoll.Fixed}}); !errors.Is(err, blk.ErrConfig) {
		t.Fatalf("New with a fixed poll of no time: %v", err)
	}
}

// While polling is on, a worker never completes directly: the queue's
// goroutine takes the completion and polls after it, which is what lets
// the driver's next request in without a kick.
func TestPollNoDirectCompletion(t *testing.T) {
	noEnv(t)
	be := &held{Backend: noZero{blocktest.NewMem(1 << 20)}, entered: make(chan struct{}, 4), release: make(chan struct{})}
	cfg := blk.Config{Poll: ringpoll.Config{Mode: ringpoll.Fixed, Window: time.Microsecond}}
	m := newMachine(t, be, cfg)
	m.start(t, 0, true)
	for i := range 3 {
		m.submit(t, 0, [][]byte{header(blk.TypeIn, uint64(i))}, []uint32{512, 1}, false)
		receive(t, be.entered, "read on the back-end")
		polls := m.dev.Stats().Polls
		be.release <- struct{}{}
		if u := m.collect(t, 0, 1)[0]; status(t, u, 513) != blk.StatusOK {
			t.Fatal("read failed")
		}
		if s := m.dev.Stats(); s.DirectCompletions != 0 {
			t.Fatalf("with polling on: %d direct completions", s.DirectCompletions)
		}
		// The poll after the completion starts once its interrupt is
		// sent, so it may still be on its way.
		for deadline := time.Now().Add(wait); m.dev.Stats().Polls <= polls; runtime.Gosched() {
			if time.Now().After(deadline) {
				t.Fatalf("no poll after a completion (%d polls)", polls)
			}
		}
	}
}
