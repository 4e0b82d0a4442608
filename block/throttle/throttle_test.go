package throttle_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/block/throttle"
	"github.com/viovmm/vio/block/throttle/throttletest"
)

func TestConformance(t *testing.T) {
	for _, c := range []struct {
		name string
		l    throttle.Limits
	}{
		{"unlimited", throttle.Limits{}},
		// Generous limits on the real clock: the suite's requests wait
		// now and then, which exercises the queue under concurrency.
		{"limited", throttle.Limits{
			Bandwidth: throttle.Bucket{Size: 64 << 20, RefillTime: 100 * time.Millisecond},
			Ops:       throttle.Bucket{Size: 2000, RefillTime: 10 * time.Millisecond, OneTimeBurst: 100},
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			blocktest.Run(t, func(t *testing.T, size int64) block.Backend {
				b, err := throttle.New(blocktest.NewMem(size), c.l, nil)
				if err != nil {
					t.Fatal(err)
				}
				return b
			})
		})
	}
}

// onlyBackend hides every optional capability of a Mem.
type onlyBackend struct{ block.Backend }

func TestCapabilitiesFollowChild(t *testing.T) {
	full, err := throttle.New(blocktest.NewMem(4096), throttle.Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := full.(block.Discarder); !ok {
		t.Error("throttle over a Mem does not offer Discard")
	}
	if _, ok := full.(block.Resizer); !ok {
		t.Error("throttle over a Mem does not offer Resize")
	}
	bare, err := throttle.New(onlyBackend{blocktest.NewMem(4096)}, throttle.Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := bare.(block.Discarder); ok {
		t.Error("throttle over a back-end without Discard offers it")
	}
	if _, ok := bare.(block.ZeroWriter); ok {
		t.Error("throttle over a back-end without WriteZeroes offers it")
	}
	if throttle.Of(bare) == nil {
		t.Error("Of does not find the throttle")
	}
}

func TestValidate(t *testing.T) {
	for _, c := range []struct {
		l    throttle.Limits
		want string
	}{
		{throttle.Limits{Bandwidth: throttle.Bucket{Size: 10}}, "refill_time"},
		{throttle.Limits{Ops: throttle.Bucket{Size: -1, RefillTime: time.Second}}, "negative"},
		{throttle.Limits{Ops: throttle.Bucket{OneTimeBurst: 5}}, "one_time_burst without a size"},
		{throttle.Limits{Bandwidth: throttle.Bucket{RefillTime: time.Second}}, "refill_time without a size"},
	} {
		err := c.l.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error about %q", c.l, err, c.want)
		}
	}
}

// rig is a throttled Mem on a fake clock, with a way to issue requests in
// the background and know when they started waiting.
type rig struct {
	t      *testing.T
	clock  *throttletest.Clock
	g      *throttle.Group
	queued chan int
}

func newRig(t *testing.T, l throttle.Limits) *rig {
	clock := throttletest.New()
	g, err := throttle.NewGroup("test", l, clock)
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, clock: clock, g: g, queued: make(chan int, 100)}
	throttle.SetOnQueue(g, func(n int) { r.queued <- n })
	return r
}

func (r *rig) disk() block.Backend {
	d := throttle.NewInGroup(blocktest.NewMem(1<<20), r.g)
	r.t.Cleanup(func() { d.Close() })
	return d
}

// now issues a read that must go at once.
func (r *rig) now(d block.Backend, n int) {
	r.t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := d.ReadAt(make([]byte, n), 0)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			r.t.Fatalf("read of %d: %v", n, err)
		}
	case <-r.queued:
		r.t.Fatalf("read of %d had to wait", n)
	}
}

// wait issues a read that must queue, and returns its outcome channel once
// it is queued.
func (r *rig) wait(d block.Backend, n int) <-chan error {
	r.t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := d.ReadAt(make([]byte, n), 0)
		done <- err
	}()
	select {
	case err := <-done:
		r.t.Fatalf("read of %d went at once (%v), want it to wait", n, err)
	case <-r.queued:
	}
	return done
}

func (r *rig) queue() int { return r.g.Stats().Queued }

func bw(size int64, refill time.Duration) throttle.Limits {
	return throttle.Limits{Bandwidth: throttle.Bucket{Size: size, RefillTime: refill}}
}

func TestBandwidthRefill(t *testing.T) {
	r := newRig(t, bw(1000, time.Second))
	d := r.disk()
	r.now(d, 1000) // the bucket starts full
	w := r.wait(d, 500)
	r.clock.Advance(499 * time.Millisecond)
	if r.queue() != 1 {
		t.Fatal("admitted before the bucket held 500 bytes")
	}
	r.clock.Advance(time.Millisecond)
	if err := <-w; err != nil {
		t.Fatal(err)
	}
	if r.queue() != 0 {
		t.Fatal("still queued")
	}
}

func TestOversizedRequestGoesIntoDebt(t *testing.T) {
	r := newRig(t, bw(1000, time.Second))
	d := r.disk()
	r.now(d, 5000) // larger than the bucket: served, bucket at -4000
	w := r.wait(d, 1)
	r.clock.Advance(4 * time.Second)
	if r.queue() != 1 {
		t.Fatal("admitted while the bucket was still in debt")
	}
	r.clock.Advance(time.Millisecond)
	if err := <-w; err != nil {
		t.Fatal(err)
	}
	// An oversized request waits for a full bucket, no longer.
	r.clock.Advance(time.Second)
	r.now(d, 999)
	w = r.wait(d, 5000)
	r.clock.Advance(998 * time.Millisecond)
	if r.queue() != 1 {
		t.Fatal("oversized request admitted before the bucket was full")
	}
	r.clock.Advance(2 * time.Millisecond)
	if err := <-w; err != nil {
		t.Fatal(err)
	}
}

func TestOneTimeBurst(t *testing.T) {
	r := newRig(t, throttle.Limits{Bandwidth: throttle.Bucket{Size: 1000, RefillTime: time.Second, OneTimeBurst: 5000}})
	d := r.disk()
	r.now(d, 3000)
	r.now(d, 2000) // the burst is spent first
	r.now(d, 1000) // the bucket is still full
	w := r.wait(d, 100)
	r.clock.Advance(100 * time.Millisecond)
	if err := <-w; err != nil {
		t.Fatal(err)
	}
	// The burst never comes back.
	r.clock.Advance(time.Hour)
	r.now(d, 1000)
	w = r.wait(d, 1000)
	r.clock.Advance(time.Second)
	if err := <-w; err != nil {
		t.Fatal(err)
	}
}

func TestOps(t *testing.T) {
	r := newRig(t, throttle.Limits{Ops: throttle.Bucket{Size: 10, RefillTime: time.Second}})
	d := r.disk()
	for range 10 {
		r.now(d, 1<<20)
	}
	w := r.wait(d, 0)
	r.clock.Advance(99 * time.Millisecond)
	if r.queue() != 1 {
		t.Fatal("11th op admitted before a token came")
	}
	r.clock.Advance(time.Millisecond)
	if err := <-w; err != nil {
		t.Fatal(err)
	}
}

func TestFIFO(t *testing.T) {
	r := newRig(t, bw(1000, time.Second))
	d := r.disk()
	r.now(d, 1000)
	a := r.wait(d, 800)
	b := r.wait(d, 1)
	// After 1 ms the small request would fit, but it is behind the big one.
	r.clock.Advance(time.Millisecond)
	if r.queue() != 2 {
		t.Fatal("a later request overtook the head of the queue")
	}
	r.clock.Advance(799 * time.Millisecond)
	if err := <-a; err != nil {
		t.Fatal(err)
	}
	if r.queue() != 1 {
		t.Fatal("second request admitted with an empty bucket")
	}
	r.clock.Advance(time.Millisecond)
	if err := <-b; err != nil {
		t.Fatal(err)
	}
}

func TestOneTimerAtATime(t *testing.T) {
	r := newRig(t, bw(1000, time.Second))
	d := r.disk()
	r.now(d, 1000)
	var ws []<-chan error
	for range 20 {
		ws = append(ws, r.wait(d, 100))
		if p := r.clock.Pending(); p != 1 {
			t.Fatalf("%d timers pending, want 1 for the head of the queue", p)
		}
	}
	r.clock.Advance(2 * time.Second)
	for _, w := range ws {
		if err := <-w; err != nil {
			t.Fatal(err)
		}
	}
	if p := r.clock.Pending(); p != 0 {
		t.Fatalf("%d timers pending on an empty queue", p)
	}
}

func TestGroupShared(t *testing.T) {
	r := newRig(t, bw(1000, time.Second))
	d1, d2 := r.disk(), r.disk()
	r.now(d1, 600)
	r.now(d2, 400)
	w2 := r.wait(d2, 500)
	w1 := r.wait(d1, 500)
	r.clock.Advance(500 * time.Millisecond)
	if err := <-w2; err != nil {
		t.Fatal(err)
	}
	if r.queue() != 1 {
		t.Fatal("the second disk's request went without tokens")
	}
	r.clock.Advance(500 * time.Millisecond)
	if err := <-w1; err != nil {
		t.Fatal(err)
	}
}

func TestSetLimitsKeepsQueue(t *testing.T) {
	r := newRig(t, bw(1000, time.Second))
	d := r.disk()
	r.now(d, 1000)
	var ws []<-chan error
	for range 3 {
		ws = append(ws, r.wait(d, 1000))
	}
	// Ten times faster: the three need 3000 bytes at 10000/s.
	if err := r.g.SetLimits(bw(10000, time.Second)); err != nil {
		t.Fatal(err)
	}
	if r.queue() != 3 {
		t.Fatal("raising the limit admitted requests without tokens")
	}
	r.clock.Advance(299 * time.Millisecond)
	if r.queue() == 0 {
		t.Fatal("all admitted too early")
	}
	r.clock.Advance(time.Millisecond)
	for _, w := range ws {
		if err := <-w; err != nil {
			t.Fatal(err)
		}
	}
	// Removing the limit lets every waiter go at once. (The bucket is
	// full again after a second; the new, smaller one keeps 1000 of it.)
	r.clock.Advance(time.Second)
	if err := r.g.SetLimits(bw(1000, time.Hour)); err != nil {
		t.Fatal(err)
	}
	r.now(d, 1000)
	w := r.wait(d, 10)
	if err := r.g.SetLimits(throttle.Limits{}); err != nil {
		t.Fatal(err)
	}
	if err := <-w; err != nil {
		t.Fatal(err)
	}
	if err := r.g.SetLimits(bw(10, 0)); err == nil {
		t.Fatal("SetLimits accepted a bucket without refill time")
	}
}

func TestDrain(t *testing.T) {
	r := newRig(t, bw(1000, time.Second))
	d, other := r.disk(), r.disk()
	r.now(d, 1000)
	w := r.wait(d, 10)
	wo := r.wait(other, 10)
	dr := d.(block.Drainer)
	dr.Drain(true)
	if err := <-w; !errors.Is(err, block.ErrDrained) {
		t.Fatalf("waiting request after Drain: %v, want ErrDrained", err)
	}
	// While drained, a request that would wait fails at once...
	if _, err := d.ReadAt(make([]byte, 10), 0); !errors.Is(err, block.ErrDrained) {
		t.Fatalf("request during Drain: %v, want ErrDrained", err)
	}
	// ...and the other disk of the group keeps its place.
	r.clock.Advance(10 * time.Millisecond)
	if err := <-wo; err != nil {
		t.Fatal(err)
	}
	r.clock.Advance(time.Second)
	r.now(d, 100) // a request that fits still goes
	dr.Drain(false)
	r.now(d, 900)
	w = r.wait(d, 10)
	r.clock.Advance(10 * time.Millisecond)
	if err := <-w; err != nil {
		t.Fatalf("after Drain(false): %v", err)
	}
}

func TestCloseFailsWaiters(t *testing.T) {
	r := newRig(t, bw(1000, time.Second))
	d := r.disk()
	r.now(d, 1000)
	w := r.wait(d, 10)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-w; !errors.Is(err, block.ErrClosed) {
		t.Fatalf("waiting request after Close: %v, want ErrClosed", err)
	}
	if s := r.g.Stats(); s.Queued != 0 || s.Drained != 1 {
		t.Fatalf("stats %+v", s)
	}
}
