package mclock

import (
	"testing"
	"time"
)

// TestRebase: 200 days after the scheduler started (past the 104 days at
// which float64 nanoseconds stop being exact) a client limited to 300/s
// still has its requests spaced to the nanosecond (3333333 or 3333334
// ns), because the epoch was moved up; waits and stats carry on across.
func TestRebase(t *testing.T) {
	start := time.Unix(0, 0)
	now := start
	s, err := New[string, int](Config{Now: func() time.Time { return now }, LimitTolerance: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetClient("lim", Params{Weight: 1, Limit: 300}); err != nil {
		t.Fatal(err)
	}
	queuedAt := start.Add(200 * 24 * time.Hour)
	now = queuedAt
	for i := range 20 {
		if err := s.Enqueue("lim", 0, i); err != nil {
			t.Fatal(err)
		}
	}
	var at []time.Time
	for s.Len() > 0 {
		req, ok, next := s.Dequeue()
		if !ok {
			now = next
			continue
		}
		at = append(at, now)
		if want := now.Sub(queuedAt); req.Waited != want {
			t.Fatalf("request %d waited %v, want %v", req.Payload, req.Waited, want)
		}
	}
	if s.epoch.Equal(start) {
		t.Fatal("the epoch did not move")
	}
	for i := 2; i < len(at); i++ {
		if d := at[i].Sub(at[i-1]); d < 3333333 || d > 3333334 {
			t.Fatalf("requests %d and %d went %v apart, want 1/300 s", i-1, i, d)
		}
	}
	st, err := s.Stats("lim")
	if err != nil {
		t.Fatal(err)
	}
	held := at[len(at)-1].Sub(at[0])
	if !st.Since.Equal(start) || st.Requests != 20 || st.Throttled < held-10 || st.Throttled > held {
		t.Fatalf("stats: since %v, %d requests, throttled %v of %v", st.Since, st.Requests, st.Throttled, held)
	}
}

// TestRebaseKeepsShares: two backlogged clients of weights 1 and 3 split
// 400 dispatches 100:300 before and after a rebase.
func TestRebaseKeepsShares(t *testing.T) {
	now := time.Unix(0, 0)
	s, err := New[string, int](Config{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"one", "three"} {
		if err := s.SetClient(c, Params{Weight: map[string]float64{"one": 1, "three": 3}[c]}); err != nil {
			t.Fatal(err)
		}
		for range 8 {
			if err := s.Enqueue(c, 0, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	epoch := s.epoch
	for round := range 2 {
		got := map[string]int{}
		for range 400 {
			req, ok, _ := s.Dequeue()
			if !ok {
				t.Fatal("nothing to dispatch")
			}
			got[req.Client]++
			if err := s.Enqueue(req.Client, 0, 0); err != nil {
				t.Fatal(err)
			}
		}
		if got["one"] != 100 || got["three"] != 300 {
			t.Fatalf("round %d: %v, want 100:300", round, got)
		}
		now = now.Add(4 * 24 * time.Hour)
	}
	if s.epoch.Equal(epoch) || s.vtime > 1000 {
		t.Fatalf("no rebase: epoch %v, virtual time %v", s.epoch, s.vtime)
	}
}
