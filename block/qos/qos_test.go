package qos_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/block/memdisk"
	"github.com/viovmm/vio/block/qos"
	"github.com/viovmm/vio/block/qos/qostest"
	"github.com/viovmm/vio/block/throttle"
	"github.com/viovmm/vio/qos/mclock"
)

// slowDisk is a 1 MiB memory disk behind a throttle of iops requests a
// second: a device with a fixed capacity whatever the concurrency. The
// bucket holds 50 ms of requests, so that a late timer on a loaded host
// does not lower the capacity much.
func slowDisk(t testing.TB, iops int) block.Backend {
	t.Helper()
	size := int64(iops / 20)
	be, err := throttle.New(memdisk.New(make([]byte, 1<<20)), throttle.Limits{Ops: throttle.Bucket{Size: size, RefillTime: 50 * time.Millisecond}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	return be
}

func newShared(t testing.TB, child block.Backend, depth int, clients map[string]mclock.Params) *qos.Shared {
	t.Helper()
	s, err := qos.NewShared(child, qos.Config{Depth: depth})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	names := make([]string, 0, len(clients))
	for n := range clients {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		if err := s.SetClient(n, clients[n]); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// TestDiskContract: a client's view is a block.Backend like any other.
func TestDiskContract(t *testing.T) {
	blocktest.Run(t, func(t *testing.T, size int64) block.Backend {
		s, err := qos.NewShared(blocktest.NewMem(size), qos.Config{Depth: 2})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.SetClient("a", mclock.Params{Weight: 1}); err != nil {
			t.Fatal(err)
		}
		d, err := s.Disk("a")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return d
	})
}

// TestUnknownClient: a view needs a configured client.
func TestUnknownClient(t *testing.T) {
	s := newShared(t, memdisk.New(make([]byte, 4096)), 1, nil)
	if _, err := s.Disk("nobody"); !errors.Is(err, mclock.ErrUnknownClient) {
		t.Fatalf("Disk of an unknown client: %v", err)
	}
	if err := s.SetClient("x", mclock.Params{Weight: 0}); !errors.Is(err, mclock.ErrInvalid) {
		t.Fatalf("weight 0: %v", err)
	}
}

// TestFlushWaitsForWrites: with the scheduler's depth free, a flush that
// starts while the same client's write is on the disk reaches the disk
// only after that write completed; another client's flush is not held.
func TestFlushWaitsForWrites(t *testing.T) {
	hold := make(chan struct{})
	rec := qostest.NewRecorder(blocktest.NewMem(1<<16), hold)
	s := newShared(t, rec, 4, map[string]mclock.Params{"a": {Weight: 1}, "b": {Weight: 1}})
	a, _ := s.Disk("a")
	b, _ := s.Disk("b")
	wrote := make(chan error, 1)
	go func() { _, err := a.WriteAt(make([]byte, 512), 0); wrote <- err }()
	<-rec.Started // the write is on the disk, held
	flushed := make(chan error, 1)
	go func() { flushed <- a.Flush() }()
	if err := b.Flush(); err != nil { // b's flush is not a's barrier
		t.Fatal(err)
	}
	select {
	case err := <-flushed:
		t.Fatalf("a's flush returned (%v) while its write was still on the disk", err)
	default:
	}
	close(hold)
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if err := <-flushed; err != nil {
		t.Fatal(err)
	}
	if got, want := rec.Log(), []string{"flush", "write", "flush"}; !slices.Equal(got, want) {
		t.Fatalf("order at the disk %v, want %v", got, want)
	}
}

// TestDrainReleasesWaiting: a request held by its client's limit fails
// with ErrDrained when the client's view is drained (a device reset must
// not wait for the limit), and the other clients are not disturbed.
func TestDrainReleasesWaiting(t *testing.T) {
	s := newShared(t, memdisk.New(make([]byte, 1<<16)), 4, map[string]mclock.Params{
		"slow": {Weight: 1, Limit: 0.001}, "other": {Weight: 1},
	})
	slow, _ := s.Disk("slow")
	other, _ := s.Disk("other")
	buf := make([]byte, 512)
	if _, err := slow.ReadAt(buf, 0); err != nil { // the first one goes
		t.Fatal(err)
	}
	res := make(chan error, 1)
	go func() { _, err := slow.ReadAt(buf, 0); res <- err }()
	// Wait until the second request is queued and held by the limit.
	for {
		st, err := s.Stats("slow")
		if err != nil {
			t.Fatal(err)
		}
		if st.Queued == 1 {
			break
		}
		time.Sleep(time.Millisecond) // polling a counter, not synchronising on time
	}
	slow.(block.Drainer).Drain(true)
	if err := <-res; !errors.Is(err, block.ErrDrained) {
		t.Fatalf("held request after Drain: %v, want ErrDrained", err)
	}
	if _, err := slow.ReadAt(buf, 0); !errors.Is(err, block.ErrDrained) {
		t.Fatalf("request while drained: %v", err)
	}
	if _, err := other.ReadAt(buf, 0); err != nil {
		t.Fatalf("another client while one is drained: %v", err)
	}
	slow.(block.Drainer).Drain(false)
	if err := slow.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := slow.ReadAt(buf, 0); !errors.Is(err, qos.ErrClosed) {
		t.Fatalf("request after Close: %v", err)
	}
}

// load keeps depth requests of one client in flight until ctx ends and
// counts the completions.
func load(ctx context.Context, wg *sync.WaitGroup, d block.Backend, depth int, n *atomic.Int64) {
	for range depth {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			for ctx.Err() == nil {
				if _, err := d.ReadAt(buf, 0); err == nil {
					n.Add(1)
				}
			}
		}()
	}
}

// TestSharesFollowAllocate: three clients saturating a 200-IOPS disk get
// the rates mclock.Allocate computes for the capacity they achieved
// together, within 10%.
func TestSharesFollowAllocate(t *testing.T) {
	params := []mclock.Params{{Reservation: 30, Weight: 1}, {Weight: 2}, {Weight: 1, Limit: 20}}
	names := []string{"a", "b", "c"}
	clients := map[string]mclock.Params{}
	for i, n := range names {
		clients[n] = params[i]
	}
	s := newShared(t, slowDisk(t, 200), 4, clients)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	counts := make([]atomic.Int64, 3)
	for i, n := range names {
		d, err := s.Disk(n)
		if err != nil {
			t.Fatal(err)
		}
		load(ctx, &wg, d, 8, &counts[i])
	}
	time.Sleep(300 * time.Millisecond) // warm up: the measurement window starts here
	got := measure(counts, 2*time.Second)
	checkAllocate(t, got, params)
	for i, n := range names {
		st, err := s.Stats(n)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: avg %.1f rate %.1f req %d resv %d throttled %v lat %+v", n, st.AvgRate, st.Rate, st.Requests, st.ReservationRequests, st.Throttled, st.Latency)
		if st.Requests == 0 || st.Latency.Count == 0 {
			t.Errorf("client %s: stats %+v", n, st)
		}
		if i == 2 && st.Throttled == 0 {
			t.Errorf("client c held at its limit reports no throttled time")
		}
	}
}

// measure returns each counter's rate over window.
func measure(counts []atomic.Int64, window time.Duration) []float64 {
	before := make([]int64, len(counts))
	for i := range counts {
		before[i] = counts[i].Load()
	}
	start := time.Now()
	time.Sleep(window) // the measurement window itself
	el := time.Since(start).Seconds()
	out := make([]float64, len(counts))
	for i := range counts {
		out[i] = float64(counts[i].Load()-before[i]) / el
	}
	return out
}

// checkAllocate compares achieved rates with Allocate's for the total
// they add up to (so a slow host, which lowers the capacity, does not
// fail the test), within 10% of each client's expected rate.
func checkAllocate(t *testing.T, got []float64, params []mclock.Params) {
	t.Helper()
	var total float64
	loads := make([]mclock.Load, len(params))
	for i, r := range got {
		total += r
		loads[i] = mclock.Load{Params: params[i]}
	}
	want := mclock.Allocate(total, mclock.ShareSpare, loads)
	t.Logf("capacity %.1f/s: achieved %.1f, Allocate %.1f", total, got, want)
	for i := range got {
		if d := got[i] - want[i]; d > 0.1*want[i] || d < -0.1*want[i] {
			t.Errorf("client %d: %.1f/s, Allocate says %.1f/s (±10%%)", i, got[i], want[i])
		}
	}
}
