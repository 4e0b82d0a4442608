package vhostuser_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/viovmm/vio/block/qos"
	"github.com/viovmm/vio/block/raw"
	"github.com/viovmm/vio/block/throttle"
	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/qos/mclock"
	"github.com/viovmm/vio/vhostuser"
	"github.com/viovmm/vio/vhostuser/vudriver"
	"github.com/viovmm/vio/virtio"
)

// qosClient is one front-end (a VM) reading from its own vhost-user-blk
// connection as fast as the back-end lets it, in runs that can be
// stopped (the VM goes idle) and started again.
type qosClient struct {
	d    *vudriver.Driver
	stop context.CancelFunc
	done chan error // the current run's result
}

// start keeps depth reads in flight until stopped.
func (c *qosClient) start() {
	ctx, cancel := context.WithCancel(context.Background())
	c.stop, c.done = cancel, make(chan error, 1)
	go func() { c.done <- c.d.Run(ctx, 0) }()
}

// halt stops the run and returns once its reads have completed: the
// front-end is idle.
func (c *qosClient) halt() error {
	c.stop()
	return <-c.done
}

// rates returns each client's completions a second over window.
func rates(cs []*qosClient, window time.Duration) []float64 {
	before := make([]uint64, len(cs))
	for i, c := range cs {
		before[i] = c.d.Completed()
	}
	start := time.Now()
	time.Sleep(window) // the measurement window itself
	el := time.Since(start).Seconds()
	out := make([]float64, len(cs))
	for i, c := range cs {
		out[i] = float64(c.d.Completed()-before[i]) / el
	}
	return out
}

// serveClient serves the shared disk to one client on a socket of its
// own, as vio serve-disk does, and connects a front-end to it.
func serveClient(t *testing.T, shared *qos.Shared, name string) *vudriver.Driver {
	t.Helper()
	sock := filepath.Join(t.TempDir(), name+".sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	b := &vhostuser.Backend{
		NewDevice: func() (virtio.QueueServer, error) {
			d, err := shared.Disk(name)
			if err != nil {
				return nil, err
			}
			return blk.New(d, blk.Config{})
		},
		Timeout: 5 * time.Second,
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- b.Serve(ctx, l) }()
	d, err := vudriver.Dial(sock, vudriver.Config{Depth: 8, Size: 512, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.Close()
		cancel()
		if err := <-served; err != nil {
			t.Errorf("%s: %v", name, err)
		}
	})
	return d
}

// TestBackendQoS: three front-ends, each on a connection of its own (one
// socket per VM, as vio serve-disk does), share a disk of 200 IOPS
// through one mClock scheduler with (r=30,w=1), (w=2), (w=1,l=20). Their
// rates match mclock.Allocate for the capacity they achieve together,
// within 10%; a limit raised at run time takes effect; a front-end that
// was idle and comes back gets its share, not a burst.
func TestBackendQoS(t *testing.T) {
	img := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	file, err := raw.Open(img, raw.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { file.Close() })
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
		cs = append(cs, &qosClient{d: serveClient(t, shared, name)})
	}
	var stopOnce sync.Once
	stopAll := func() {
		stopOnce.Do(func() {
			for i, c := range cs {
				if err := c.halt(); err != nil {
					t.Errorf("front-end %s: %v", names[i], err)
				}
			}
		})
	}
	for _, c := range cs {
		c.start()
	}
	defer stopAll()
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
	if err := cs[1].halt(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // the idle period
	cs[1].start()
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
	stopAll()
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
