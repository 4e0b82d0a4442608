package mclock_test

import (
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/qos/mclock"
)

// The issue's three clients.
func issueClients() []simClient {
	return []simClient{
		{name: "A", p: mclock.Params{Reservation: 300, Weight: 1}},
		{name: "B", p: mclock.Params{Weight: 2}},
		{name: "C", p: mclock.Params{Weight: 1, Limit: 200}},
	}
}

// TestAllocateByHand pins the fluid model against rates worked out by
// hand from the rules in its comment, so the scenario tests below, which
// compare the scheduler with the model, compare it with the rules.
func TestAllocateByHand(t *testing.T) {
	p := func(r, w, l float64) mclock.Load {
		return mclock.Load{Params: mclock.Params{Reservation: r, Weight: w, Limit: l}}
	}
	issue := []mclock.Load{p(300, 1, 0), p(0, 2, 0), p(0, 1, 200)}
	cases := []struct {
		name     string
		capacity float64
		sharing  mclock.Sharing
		loads    []mclock.Load
		want     []float64
	}{
		// 700 spare split 1:2:1; C's 175 is under its limit.
		{"spare 1000", 1000, mclock.ShareSpare, issue, []float64{300 + 700.0/4, 700.0 * 2 / 4, 700.0 / 4}},
		// 1200 spare: C's quarter (300) is above its limit, so C takes
		// 200 and A and B split the other 1000 by 1:2.
		{"spare 1500", 1500, mclock.ShareSpare, issue, []float64{300 + 1000.0/3, 1000.0 * 2 / 3, 200}},
		// Total split 1:2:1 is 250:500:250; A is raised to its 300, C
		// cut to its 200, B takes the remaining 500.
		{"total 1000", 1000, mclock.ShareTotal, issue, []float64{300, 500, 200}},
		// Reservations of 900 on a 600 device: 2:1, nothing for the third.
		{"overbooked", 600, mclock.ShareSpare, []mclock.Load{p(600, 1, 0), p(300, 1, 0), p(0, 5, 0)}, []float64{400, 200, 0}},
		// A client asking for less than its share leaves the rest.
		{"demand", 1000, mclock.ShareSpare, []mclock.Load{{Params: mclock.Params{Weight: 1}, Demand: 100}, p(0, 1, 0)}, []float64{100, 900}},
		// Everyone limited below the capacity: the device idles.
		{"limits", 1000, mclock.ShareTotal, []mclock.Load{p(0, 1, 100), p(50, 1, 200)}, []float64{100, 200}},
	}
	for _, c := range cases {
		got := mclock.Allocate(c.capacity, c.sharing, c.loads)
		for i := range got {
			if math.Abs(got[i]-c.want[i]) > 1e-6 {
				t.Errorf("%s: client %d gets %v, want %v", c.name, i, got[i], c.want[i])
			}
		}
	}
}

// TestScenario is the issue's scenario over a 1000 and a 1500 IOPS
// device, in both sharing modes: every client's measured rate is within
// 10% of what the rules give (the table is logged), the reservation is
// served in the reservation phase, and the limited client never exceeds
// its limit over any one-second window.
func TestScenario(t *testing.T) {
	for _, tc := range []struct {
		capacity float64
		sharing  mclock.Sharing
	}{{1000, mclock.ShareSpare}, {1500, mclock.ShareSpare}, {1000, mclock.ShareTotal}, {1500, mclock.ShareTotal}} {
		x := newSim(t, tc.capacity, tc.sharing, issueClients()...)
		from, to := 1*time.Second, 10*time.Second
		x.run(to)
		want := x.expect(tc.sharing)
		t.Logf("%v IOPS, weights share %v:\n%s", tc.capacity, tc.sharing, x.table(want, from, to))
		for _, c := range x.clients {
			if got := x.rate(c.name, from, to); !within(got, want[c.name], 0.10) {
				t.Errorf("%v/%v: client %s got %.1f/s, want %.1f/s ±10%%", tc.capacity, tc.sharing, c.name, got, want[c.name])
			}
		}
		// A's reservation comes from the reservation phase, at its rate.
		if got := x.phaseCost("A", mclock.Reservation, from, to) / (to - from).Seconds(); !within(got, 300, 0.05) {
			t.Errorf("%v/%v: A got %.1f/s in the reservation phase, want 300", tc.capacity, tc.sharing, got)
		}
		checkLimit(t, x, "C", 200)
	}
}

// checkLimit checks that no window of a client's dispatches holds more
// cost than limit·(length + tolerance) plus the one request a GCRA lets
// through at the window's start.
func checkLimit(t *testing.T, x *sim, client string, limit float64) {
	t.Helper()
	var ds []dispatch
	for _, d := range x.log {
		if d.client == client {
			ds = append(ds, d)
		}
	}
	for i := range ds {
		var sum float64
		for j := i; j < len(ds) && j < i+400; j++ {
			// Requests i..j-1 were dispatched in [ds[i].at, ds[j].at].
			if allowed := limit*(ds[j].at-ds[i].at+mclock.DefaultLimitTolerance).Seconds() + 1e-6; sum > allowed {
				t.Fatalf("%s: %.0f cost dispatched from %v to %v, above its limit of %v/s (%.1f)", client, sum, ds[i].at, ds[j].at, limit, allowed)
			}
			sum += ds[j].cost
		}
	}
}

// TestIdleClientNoBurst: a client idle for 10 s comes back and gets its
// share from the first moment, not the credit of the idle time — neither
// in the weight phase (proportional tags synchronised with the active
// clients) nor in the reservation phase (reservation tags brought up to
// now). The others are not starved when it returns.
func TestIdleClientNoBurst(t *testing.T) {
	on := []time.Duration{0, 12 * time.Second}
	off := []time.Duration{2 * time.Second, 14 * time.Second}
	for _, tc := range []struct {
		name string
		b    mclock.Params
	}{
		{"weight", mclock.Params{Weight: 1}},
		{"reservation", mclock.Params{Reservation: 500, Weight: 1}},
	} {
		x := newSim(t, 1000, mclock.ShareSpare,
			simClient{name: "A", p: mclock.Params{Weight: 1}},
			simClient{name: "B", p: tc.b, on: on, off: off},
		)
		x.run(14 * time.Second)
		want := x.expect(mclock.ShareSpare)
		back := 12 * time.Second
		for _, w := range []time.Duration{20 * time.Millisecond, 100 * time.Millisecond, time.Second} {
			for _, c := range []string{"A", "B"} {
				// Within 10%, and one request of slack for the short window.
				got := x.rate(c, back, back+w)
				if math.Abs(got-want[c]) > 0.10*want[c]+1/w.Seconds() {
					t.Errorf("%s: in the first %v after B's return %s got %.0f/s, want %.0f/s", tc.name, w, c, got, want[c])
				}
			}
		}
		// While B was away A had the whole device.
		if got := x.rate("A", 3*time.Second, 11*time.Second); !within(got, 1000, 0.01) {
			t.Errorf("%s: alone, A got %.0f/s of a 1000/s device", tc.name, got)
		}
	}
}

// TestRuntimeChange: changing weights and limits mid-run moves the rates
// to the new settings at once, and a raised limit brings no burst of
// what the old limit held back.
func TestRuntimeChange(t *testing.T) {
	x := newSim(t, 1000, mclock.ShareSpare, issueClients()...)
	x.run(5 * time.Second)
	before := x.expect(mclock.ShareSpare)
	tables := x.table(before, time.Second, 5*time.Second)
	change := func(name string, p mclock.Params) {
		if err := x.s.SetClient(name, p); err != nil {
			t.Fatal(err)
		}
	}
	change("B", mclock.Params{Weight: 6})
	change("C", mclock.Params{Weight: 1, Limit: 50})
	x.run(10 * time.Second)
	mid := x.expect(mclock.ShareSpare)
	tables += "after the first change:\n" + x.table(mid, 5*time.Second, 10*time.Second)
	change("C", mclock.Params{Weight: 4, Limit: 400})
	change("A", mclock.Params{Reservation: 100, Weight: 1})
	x.run(15 * time.Second)
	after := x.expect(mclock.ShareSpare)
	tables += "after the second:\n" + x.table(after, 10*time.Second, 15*time.Second)
	t.Logf("before:\n%s", tables)
	for _, ph := range []struct {
		want     map[string]float64
		from, to time.Duration
	}{{before, time.Second, 5 * time.Second}, {mid, 5 * time.Second, 10 * time.Second}, {after, 10 * time.Second, 15 * time.Second}} {
		for _, c := range x.clients {
			if got := x.rate(c.name, ph.from, ph.to); !within(got, ph.want[c.name], 0.10) {
				t.Errorf("[%v,%v): %s got %.1f/s, want %.1f/s", ph.from, ph.to, c.name, got, ph.want[c.name])
			}
		}
	}
	// The first 100 ms after raising C's limit: no catch-up of the five
	// seconds it spent at 50/s.
	if got, want := x.rate("C", 10*time.Second, 10*time.Second+100*time.Millisecond), after["C"]; got > want*1.1+10 {
		t.Errorf("C got %.0f/s right after its limit was raised, want about %.0f/s", got, want)
	}
}

// TestOverbooked: reservations above the capacity are shared in
// proportion to the reservations.
func TestOverbooked(t *testing.T) {
	x := newSim(t, 600, mclock.ShareSpare,
		simClient{name: "big", p: mclock.Params{Reservation: 600, Weight: 1}},
		simClient{name: "small", p: mclock.Params{Reservation: 300, Weight: 1}},
		simClient{name: "none", p: mclock.Params{Weight: 5}},
	)
	x.run(10 * time.Second)
	want := x.expect(mclock.ShareSpare)
	t.Logf("\n%s", x.table(want, time.Second, 10*time.Second))
	for _, c := range x.clients {
		if got := x.rate(c.name, time.Second, 10*time.Second); math.Abs(got-want[c.name]) > 0.10*want[c.name]+0.01*x.capacity {
			t.Errorf("%s got %.1f/s, want %.1f/s", c.name, got, want[c.name])
		}
	}
}

// TestBandwidthCost: with bytes as the cost unit, a reservation and a
// limit are bytes a second whatever the request sizes.
func TestBandwidthCost(t *testing.T) {
	now := time.Unix(0, 0)
	s, err := mclock.New[string, int](mclock.Config{Now: func() time.Time { return now }, Cost: mclock.Bandwidth})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetClient("big", mclock.Params{Weight: 1, Limit: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	// 64 KiB requests at 1 MiB/s: one every 62.5 ms.
	var sent int64
	end := now.Add(10 * time.Second)
	for i := 0; now.Before(end); i++ {
		if i > 1e6 {
			t.Fatalf("a million dispatches within 10 s: the limit does not hold")
		}
		for s.Len() < 4 {
			if err := s.Enqueue("big", 64<<10, 0); err != nil {
				t.Fatal(err)
			}
		}
		req, ok, next := s.Dequeue()
		if ok {
			sent += req.Size
			continue
		}
		now = next
	}
	// Ten seconds at 1 MiB/s plus the first request.
	if want := int64(10<<20 + 64<<10); sent > want || sent < want-64<<10 {
		t.Fatalf("sent %d bytes in 10 s at 1 MiB/s, want %d", sent, want)
	}
	if got := s.Cost(0); got != 1 {
		t.Fatalf("an empty request costs %v bytes, want the minimum of 1", got)
	}
	if got := (mclock.CostModel{PerRequest: 1, UnitBytes: 4096}).Cost(16384); got != 5 {
		t.Fatalf("a 16 KiB request costs %v units of 1+size/4096, want 5", got)
	}
}

// TestLimitHoldsWhenIdle: a lone limited client on an idle device is
// still held to its limit, and Dequeue says exactly when the next
// request may go: not a nanosecond before.
func TestLimitHoldsWhenIdle(t *testing.T) {
	now := time.Unix(5, 0)
	s, err := mclock.New[string, int](mclock.Config{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetClient("c", mclock.Params{Weight: 1, Limit: 300}); err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		if err := s.Enqueue("c", 0, i); err != nil {
			t.Fatal(err)
		}
	}
	start := now
	var firstHeld time.Time
	got := 0
	for s.Len() > 0 {
		req, ok, next := s.Dequeue()
		if ok {
			if req.Payload != got {
				t.Fatalf("request %d came out as number %d", req.Payload, got)
			}
			got++
			continue
		}
		if !next.After(now) {
			t.Fatalf("nothing to dispatch at %v, yet next is %v", now, next)
		}
		if firstHeld.IsZero() {
			firstHeld = now
		}
		now = next.Add(-time.Nanosecond)
		if _, ok, _ := s.Dequeue(); ok {
			t.Fatalf("a request went 1 ns before the time Dequeue gave")
		}
		now = next
	}
	// 100 requests at 300/s: the first at once with the limit tolerance's
	// worth, the 100th 99/300 s less the tolerance later (rounded up to the
	// nanosecond at each step).
	if d, want := now.Sub(start), time.Duration(99*float64(time.Second)/300)-mclock.DefaultLimitTolerance; d < want || d > want+100*time.Nanosecond {
		t.Fatalf("100 requests took %v at 300/s, want %v", d, want)
	}
	st, err := s.Stats("c")
	if err != nil {
		t.Fatal(err)
	}
	// Held from the end of the initial burst to the last dispatch.
	if held := now.Sub(firstHeld); st.Throttled < held-time.Microsecond || st.Throttled > held {
		t.Fatalf("throttled for %v of the %v the limit held the client", st.Throttled, held)
	}
}

func TestParamsRejected(t *testing.T) {
	s, err := mclock.New[string, int](mclock.Config{})
	if err != nil {
		t.Fatal(err)
	}
	good := mclock.Params{Reservation: 10, Weight: 1, Limit: 100}
	if err := s.SetClient("c", good); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		p    mclock.Params
		word string
	}{
		{mclock.Params{Weight: 0}, "weight 0"},
		{mclock.Params{Weight: -1}, "negative"},
		{mclock.Params{Weight: math.NaN()}, "not a number"},
		{mclock.Params{Weight: 1, Reservation: math.Inf(1)}, "not a number"},
		{mclock.Params{Weight: 1, Reservation: -5}, "negative"},
		{mclock.Params{Weight: 1, Limit: math.NaN()}, "not a number"},
		{mclock.Params{Weight: 1, Reservation: 300, Limit: 200}, "above limit"},
		{mclock.Params{Weight: 1e-300}, "smallest"},
		{mclock.Params{Weight: 1, Limit: 1e300}, "largest"},
		{mclock.Params{Weight: 1, QueueLimit: -1}, "queue limit"},
	} {
		err := s.SetClient("c", tc.p)
		switch {
		case err == nil:
			t.Errorf("%+v accepted", tc.p)
		case !errors.Is(err, mclock.ErrInvalid):
			t.Errorf("%+v: %v is not ErrInvalid", tc.p, err)
		case !strings.Contains(err.Error(), tc.word) || strings.Count(err.Error(), ". ") > 0 || strings.Contains(err.Error(), "\n"):
			t.Errorf("%+v: %q is not one sentence about %q", tc.p, err, tc.word)
		}
	}
	if p, _ := s.Params("c"); p != good {
		t.Fatalf("a rejected change altered the client: %+v", p)
	}
	for _, cfg := range []mclock.Config{{Sharing: 7}, {QueueLimit: -1}, {Cost: mclock.CostModel{PerRequest: math.NaN()}}, {Cost: mclock.CostModel{UnitBytes: -1}}, {RateWindow: -1}} {
		if _, err := mclock.New[string, int](cfg); !errors.Is(err, mclock.ErrInvalid) {
			t.Errorf("config %+v: %v", cfg, err)
		}
	}
	if err := s.Enqueue("c", -1, 0); !errors.Is(err, mclock.ErrInvalid) {
		t.Errorf("negative size: %v", err)
	}
	if err := s.Enqueue("nobody", 1, 0); !errors.Is(err, mclock.ErrUnknownClient) {
		t.Errorf("unknown client: %v", err)
	}
	for _, d := range []mclock.Distributed{{Delta: 1, Rho: 2}, {Delta: -1}, {Delta: math.NaN()}, {Delta: math.Inf(1), Rho: 1}} {
		if err := s.EnqueueDistributed("c", 1, 0, d); !errors.Is(err, mclock.ErrInvalid) {
			t.Errorf("dmClock %+v: %v", d, err)
		}
	}
	if s.Len() != 0 {
		t.Fatalf("rejected requests were queued: %d", s.Len())
	}
}

func TestQueueBound(t *testing.T) {
	s, err := mclock.New[string, int](mclock.Config{QueueLimit: 5})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetClient("a", mclock.Params{Weight: 1}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetClient("b", mclock.Params{Weight: 1, QueueLimit: 2}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		id    string
		bound int
	}{{"a", 5}, {"b", 2}} {
		for i := range c.bound {
			if err := s.Enqueue(c.id, 0, i); err != nil {
				t.Fatalf("%s: request %d of %d: %v", c.id, i, c.bound, err)
			}
		}
		if err := s.Enqueue(c.id, 0, -1); !errors.Is(err, mclock.ErrQueueFull) {
			t.Fatalf("%s: request %d beyond the bound of %d: %v", c.id, c.bound+1, c.bound, err)
		}
		st, _ := s.Stats(c.id)
		if st.Rejected != 1 || st.Queued != c.bound {
			t.Fatalf("%s: stats say %d rejected, %d queued", c.id, st.Rejected, st.Queued)
		}
	}
	req, ok, _ := s.Dequeue()
	if !ok {
		t.Fatal("nothing dispatched")
	}
	if err := s.Enqueue(req.Client, 0, 99); err != nil {
		t.Fatalf("after a dispatch %s's queue has room again, but: %v", req.Client, err)
	}
	left, err := s.RemoveClient("a")
	if err != nil {
		t.Fatal(err)
	}
	if len(left)+s.Len() != 7 {
		t.Fatalf("removing a returned %d requests and left %d queued, want 7 in all", len(left), s.Len())
	}
	if _, err := s.RemoveClient("a"); !errors.Is(err, mclock.ErrUnknownClient) {
		t.Fatalf("removing a twice: %v", err)
	}
}

// TestStats: the counters agree with what was dispatched, and the
// latency percentiles with the exact ones within the histogram's 1/16.
func TestStats(t *testing.T) {
	x := newSim(t, 1000, mclock.ShareSpare, issueClients()...)
	x.run(10 * time.Second)
	for _, c := range x.clients {
		st, err := x.s.Stats(c.name)
		if err != nil {
			t.Fatal(err)
		}
		var n, resv uint64
		var cost float64
		var waits []time.Duration
		for _, d := range x.log {
			if d.client != c.name {
				continue
			}
			n++
			cost += d.cost
			if d.phase == mclock.Reservation {
				resv++
			}
			waits = append(waits, d.waited)
		}
		if st.Requests != n || st.Cost != cost || st.ReservationRequests != resv || st.WeightRequests != n-resv {
			t.Errorf("%s: stats %+v, but the log has %d requests (%d reserved) costing %v", c.name, st, n, resv, cost)
		}
		if want := x.rate(c.name, 9*time.Second, 10*time.Second); math.Abs(st.Rate-want) > 1 {
			t.Errorf("%s: rate over the last second %.1f, the log says %.1f", c.name, st.Rate, want)
		}
		if want := cost / 10; math.Abs(st.AvgRate-want) > 0.01*want {
			t.Errorf("%s: average rate %.1f, want %.1f", c.name, st.AvgRate, want)
		}
		slices.Sort(waits)
		for _, q := range []struct {
			q   float64
			got time.Duration
		}{{0.5, st.Latency.P50}, {0.9, st.Latency.P90}, {0.99, st.Latency.P99}} {
			exact := waits[int(math.Ceil(q.q*float64(len(waits))))-1]
			if math.Abs(float64(q.got-exact)) > float64(exact)/16+1 {
				t.Errorf("%s: p%v latency %v, exact %v", c.name, q.q*100, q.got, exact)
			}
		}
		if st.Latency.Max != waits[len(waits)-1] || st.Latency.Count != n {
			t.Errorf("%s: max latency %v of %d, exact %v of %d", c.name, st.Latency.Max, st.Latency.Count, waits[len(waits)-1], n)
		}
		// Only C is limited, and on a 1000/s device its 175/s share
		// keeps it under its 200/s limit most of the time.
		if c.name != "C" && st.Throttled != 0 {
			t.Errorf("%s has no limit but was throttled for %v", c.name, st.Throttled)
		}
	}
}

// TestChangeRescalesPendingTags: a change applies to the request already
// waiting, not only to the ones after it: a limit raised from 1/s to
// 1000/s lets the next request go within a millisecond rather than a
// second, and a reservation raised from 1/s to 1000/s makes the client
// owed service within a millisecond.
func TestChangeRescalesPendingTags(t *testing.T) {
	now := time.Unix(0, 0)
	s, err := mclock.New[string, int](mclock.Config{Now: func() time.Time { return now }, LimitTolerance: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.SetClient("lim", mclock.Params{Weight: 1, Limit: 1}))
	for range 3 {
		must(s.Enqueue("lim", 0, 0))
	}
	if _, ok, _ := s.Dequeue(); !ok {
		t.Fatal("the first request was held")
	}
	_, ok, next := s.Dequeue()
	if ok || next.Sub(now) < 900*time.Millisecond {
		t.Fatalf("at 1/s the second request may go in %v", next.Sub(now))
	}
	must(s.SetClient("lim", mclock.Params{Weight: 1, Limit: 1000}))
	_, ok, next = s.Dequeue()
	if ok || next.Sub(now) > time.Millisecond {
		t.Fatalf("after raising the limit to 1000/s the second request may go in %v", next.Sub(now))
	}
	s.RemoveClient("lim")

	must(s.SetClient("resv", mclock.Params{Reservation: 1, Weight: 1}))
	must(s.SetClient("heavy", mclock.Params{Weight: 1e6}))
	for range 3 {
		must(s.Enqueue("resv", 0, 0))
		must(s.Enqueue("heavy", 0, 0))
	}
	// resv's first request is owed at once; its next one a second later.
	if req, _, _ := s.Dequeue(); req.Client != "resv" || req.Phase != mclock.Reservation {
		t.Fatalf("first dispatch: %+v", req)
	}
	must(s.SetClient("resv", mclock.Params{Reservation: 1000, Weight: 1}))
	now = now.Add(time.Millisecond)
	if req, _, _ := s.Dequeue(); req.Client != "resv" || req.Phase != mclock.Reservation {
		t.Fatalf("1 ms after raising the reservation to 1000/s: %+v", req)
	}
}
