package vhostuser

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/block/qos"
	"github.com/viovmm/vio/block/throttle"
	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/qos/mclock"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/queuetest"
)

// qosClient is one front-end (a VM) reading from its own vhost-user-blk
// connection as fast as the back-end lets it: rounds of depth reads.
type qosClient struct {
	q      *qsdBlk
	done   atomic.Int64 // reads completed with status OK
	paused atomic.Bool
	idle   chan struct{} // signalled when a pause takes effect
	resume chan struct{} // ends a pause
	err    error
}

// run keeps depth one-sector reads in flight until ctx ends, adding one
// as each completes. The driver's data area is reclaimed only when
// nothing is in flight, so when it runs out (every few hundred reads)
// the client lets its reads drain once. While paused, it lets them
// drain and waits to be resumed.
func (c *qosClient) run(ctx context.Context, depth int) {
	inflight, k := 0, 0
	full := false // the data area is used up: drain before adding
	for ctx.Err() == nil {
		if inflight == 0 {
			full = false
			if c.paused.Load() {
				c.idle <- struct{}{}
				select {
				case <-ctx.Done():
					return
				case <-c.resume:
				}
			}
		}
		added := false
		for !full && !c.paused.Load() && inflight < depth {
			_, err := c.q.drv.Add([][]byte{blkHeader(blkTIn, uint64(k%64))}, []uint32{sector, 1})
			if errors.Is(err, queuetest.ErrNoBufferSpace) {
				full = true
				break
			}
			if err != nil {
				c.err = err
				return
			}
			k++
			inflight++
			added = true
		}
		if added {
			if _, err := unix.Write(c.q.kickFD, []byte{1, 0, 0, 0, 0, 0, 0, 0}); err != nil {
				c.err = err
				return
			}
		}
		if inflight == 0 {
			continue
		}
		u, ok, err := c.q.drv.GetUsed()
		if err != nil {
			c.err = err
			return
		}
		if !ok {
			if err := pollEvent(c.q.callFD, 10*time.Second); err != nil {
				c.err = err
				return
			}
			continue
		}
		if len(u.Data) != sector+1 || u.Data[sector] != blk.StatusOK {
			c.err = fmt.Errorf("read: used %d bytes, status %v", len(u.Data), u.Data)
			return
		}
		c.done.Add(1)
		inflight--
	}
}

// pollEvent waits for an eventfd to be signalled and consumes it.
func pollEvent(fd int, limit time.Duration) error {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(pfd, int(limit/time.Millisecond))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("no call within %v", limit)
		}
		var b [8]byte
		_, err = unix.Read(fd, b[:])
		return err
	}
}

// rates returns each client's completions a second over window.
func rates(cs []*qosClient, window time.Duration) []float64 {
	before := make([]int64, len(cs))
	for i, c := range cs {
		before[i] = c.done.Load()
	}
	start := time.Now()
	time.Sleep(window) // the measurement window itself
	el := time.Since(start).Seconds()
	out := make([]float64, len(cs))
	for i, c := range cs {
		out[i] = float64(c.done.Load()-before[i]) / el
	}
	return out
}

// TestBackendQoS: three front-ends, each on a connection of its own (one
// socket per VM, as vio serve-disk does), share a disk of 200 IOPS
// through one mClock scheduler with (r=30,w=1), (w=2), (w=1,l=20). Their
// rates match mclock.Allocate for the capacity they achieve together,
// within 10%; a limit raised at run time takes effect; a front-end that
// was idle and comes back gets its share, not a burst.
func TestBackendQoS(t *testing.T) {
	_, _, file := rawImage(t, 1<<20)
	// The device: the raw file behind a throttle of 200 requests a
	// second (a bucket of 50 ms of requests, so a timer that fires late
	// on a loaded host costs little capacity).
	disk, err := throttle.New(file, throttle.Limits{Ops: throttle.Bucket{Size: 10, RefillTime: 50 * time.Millisecond}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	shared, err := qos.NewShared(disk, qos.Config{Depth: 4})
	if err != nil {
		t.Fatal(err)
	}
	// Closed after the connections (cleanups run last first), as the
	// daemon does.
	t.Cleanup(func() { shared.Close() })
	names := []string{"vm-a", "vm-b", "vm-c"}
	params := []mclock.Params{{Reservation: 30, Weight: 1}, {Weight: 2}, {Weight: 1, Limit: 20}}
	var cs []*qosClient
	for i, name := range names {
		if err := shared.SetClient(name, params[i]); err != nil {
			t.Fatal(err)
		}
		b := &Backend{
			NewDevice: func() (virtio.QueueServer, error) {
				d, err := shared.Disk(name)
				if err != nil {
					return nil, err
				}
				return blk.New(d, blk.Config{})
			},
			Timeout: 5 * time.Second,
		}
		f, _ := serveOnPair(t, b)
		mem := guestRAM(t)
		negotiate(t, f, mem, virtioFVersion1)
		cs = append(cs, &qosClient{q: setupQueue(t, f, mem, 0, 0x1000, false), idle: make(chan struct{}, 1), resume: make(chan struct{}, 1)})
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Add(1)
		go func() { defer wg.Done(); c.run(ctx, 8) }()
	}
	defer func() {
		cancel()
		wg.Wait()
		for i, c := range cs {
			if c.err != nil {
				t.Errorf("front-end %d: %v", i, c.err)
			}
		}
	}()
	check := func(what string, got []float64) {
		t.Helper()
		var total float64
		loads := make([]mclock.Load, len(got))
		for i, r := range got {
			total += r
			loads[i] = mclock.Load{Params: params[i]}
		}
		want := mclock.Allocate(total, mclock.ShareSpare, loads)
		t.Logf("%s: capacity %.1f/s, achieved %.1f, Allocate %.1f", what, total, got, want)
		for i := range got {
			if d := got[i] - want[i]; d > 0.1*want[i] || d < -0.1*want[i] {
				t.Errorf("%s: %s got %.1f/s, Allocate says %.1f/s (±10%%)", what, names[i], got[i], want[i])
			}
		}
	}

	time.Sleep(300 * time.Millisecond) // warm-up before the first window
	check("start", rates(cs, 2*time.Second))

	// Raise vm-c's limit to 35/s: it binds still, at the new value.
	params[2].Limit = 35
	if err := shared.SetClient("vm-c", params[2]); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	check("limit 35", rates(cs, 2*time.Second))

	// vm-b goes idle for a second, then comes back: in its first 300 ms
	// it gets about its share, not the device (which a client that
	// banked its idle time would take until the others caught up).
	cs[1].paused.Store(true)
	<-cs[1].idle
	time.Sleep(time.Second) // the idle period
	cs[1].paused.Store(false)
	cs[1].resume <- struct{}{}
	got := rates(cs, 300*time.Millisecond)
	var total float64
	for _, r := range got {
		total += r
	}
	share := mclock.Allocate(total, mclock.ShareSpare, []mclock.Load{{Params: params[0]}, {Params: params[1]}, {Params: params[2]}})[1] / total
	t.Logf("back from idle: achieved %.1f; vm-b's share %.2f of %.1f/s", got, share, total)
	if got[1] > 1.3*share*total {
		t.Errorf("vm-b back from idle got %.1f/s, above its share %.1f/s: a burst", got[1], share*total)
	}
	if got[0] < 0.5*params[0].Reservation {
		t.Errorf("vm-a got %.1f/s while vm-b came back, below half its reservation", got[0])
	}
	for i, name := range names {
		st, err := shared.Stats(name)
		if err != nil {
			t.Fatal(err)
		}
		if st.Requests == 0 || st.Latency.Count == 0 {
			t.Errorf("%s: no requests in the scheduler's stats", name)
		}
		if i == 2 && st.Throttled == 0 {
			t.Errorf("%s: held at its limit but no throttled time in its stats", name)
		}
	}
}
