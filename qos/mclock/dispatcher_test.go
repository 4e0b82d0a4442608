package mclock_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/viovmm/vio/qos/mclock"
)

// TestDispatcher runs the dispatcher on the wall clock against a device
// of queue depth 2 served by a goroutine: every request is served once,
// never more than 2 are in flight, the limited client keeps to its limit,
// and the requests held only by the limit go out on the dispatcher's
// timer (nothing else wakes it once the other client has drained).
func TestDispatcher(t *testing.T) {
	s, err := mclock.New[string, int](mclock.Config{})
	if err != nil {
		t.Fatal(err)
	}
	const limit = 200.0
	if err := s.SetClient("limited", mclock.Params{Weight: 1, Limit: limit}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetClient("free", mclock.Params{Weight: 1}); err != nil {
		t.Fatal(err)
	}

	type served struct {
		client string
		n      int
		at     time.Time
	}
	device := make(chan served, 100)
	var mu sync.Mutex
	inflight, maxInflight := 0, 0
	var d *mclock.Dispatcher[string, int]
	d, err = mclock.NewDispatcher(s, 2, func(r mclock.Request[string, int]) {
		mu.Lock()
		inflight++
		maxInflight = max(maxInflight, inflight)
		mu.Unlock()
		device <- served{r.Client, r.Payload, time.Now()}
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- d.Run(ctx) }()

	const nLimited, nFree = 30, 60
	for i := range nLimited {
		if err := d.Enqueue("limited", 0, i); err != nil {
			t.Fatal(err)
		}
	}
	for i := range nFree {
		if err := d.Enqueue("free", 0, i); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]map[int]bool{"limited": {}, "free": {}}
	var limitedAt []time.Time
	for range nLimited + nFree {
		var r served
		select {
		case r = <-device:
		case <-ctx.Done():
			t.Fatalf("the dispatcher stalled: %d limited and %d free requests served", len(seen["limited"]), len(seen["free"]))
		}
		if seen[r.client][r.n] {
			t.Fatalf("%s request %d served twice", r.client, r.n)
		}
		seen[r.client][r.n] = true
		if r.client == "limited" {
			limitedAt = append(limitedAt, r.at)
		}
		mu.Lock()
		inflight--
		mu.Unlock()
		d.Done()
	}
	cancel()
	if err := <-ran; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v", err)
	}
	if maxInflight > 2 {
		t.Fatalf("%d requests in flight on a device of depth 2", maxInflight)
	}
	// No window saw more than the limit allows. Serve times trail the
	// dispatch decisions by a little scheduling noise, which can bunch two
	// requests together: one request of slack for that.
	for i := range limitedAt {
		for j := i + 1; j < len(limitedAt); j++ {
			n := float64(j - i)
			if allowed := limit*(limitedAt[j].Sub(limitedAt[i])+mclock.DefaultLimitTolerance).Seconds() + 2; n > allowed {
				t.Fatalf("%v requests of the limited client within %v", n, limitedAt[j].Sub(limitedAt[i]))
			}
		}
	}
	if _, err := mclock.NewDispatcher(s, 0, func(mclock.Request[string, int]) {}); !errors.Is(err, mclock.ErrInvalid) {
		t.Fatalf("a dispatcher of depth 0: %v", err)
	}
}
