package mclock_test

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/qos/mclock"
)

// The simulated device: one request at a time, each taking cost/capacity
// seconds, the scheduler asked for the next request whenever the device
// is free. The clock is simulated, so a run is deterministic and ten
// simulated seconds take milliseconds.

type simClient struct {
	name  string
	p     mclock.Params
	depth int // requests it keeps queued while active (default 8)
	size  int64
	// active intervals [on, off) of simulated time; none is always on.
	on, off []time.Duration
}

func (c simClient) activeAt(t time.Duration) bool {
	if len(c.on) == 0 {
		return true
	}
	for i := range c.on {
		if t >= c.on[i] && (i >= len(c.off) || t < c.off[i]) {
			return true
		}
	}
	return false
}

// nextOn returns the next start of activity after t, or -1.
func (c simClient) nextOn(t time.Duration) time.Duration {
	for _, on := range c.on {
		if on > t {
			return on
		}
	}
	return -1
}

type dispatch struct {
	at     time.Duration
	client string
	cost   float64
	phase  mclock.Phase
	waited time.Duration
}

type simEvent struct {
	at time.Duration
	do func()
}

type sim struct {
	t        testing.TB
	start    time.Time
	now      time.Duration
	s        *mclock.Scheduler[string, int]
	capacity float64
	clients  []simClient
	queued   map[string]int
	log      []dispatch
	events   []simEvent // run-time actions, in time order
	seq      int
}

func newSim(t testing.TB, capacity float64, sharing mclock.Sharing, clients ...simClient) *sim {
	t.Helper()
	x := &sim{t: t, start: time.Unix(1_000_000, 0), capacity: capacity, clients: clients, queued: map[string]int{}}
	s, err := mclock.New[string, int](mclock.Config{Now: func() time.Time { return x.start.Add(x.now) }, Sharing: sharing})
	if err != nil {
		t.Fatal(err)
	}
	x.s = s
	for _, c := range clients {
		if err := s.SetClient(c.name, c.p); err != nil {
			t.Fatal(err)
		}
	}
	return x
}

// at schedules fn at simulated time d (events must be added in order).
func (x *sim) at(d time.Duration, fn func()) { x.events = append(x.events, simEvent{d, fn}) }

func (x *sim) topUp() {
	for _, c := range x.clients {
		if !c.activeAt(x.now) {
			continue
		}
		depth := c.depth
		if depth == 0 {
			depth = 8
		}
		for x.queued[c.name] < depth {
			x.seq++
			if err := x.s.Enqueue(c.name, c.size, x.seq); err != nil {
				x.t.Fatalf("enqueue for %s: %v", c.name, err)
			}
			x.queued[c.name]++
		}
	}
}

// run simulates until end.
func (x *sim) run(end time.Duration) {
	for x.now < end {
		for len(x.events) > 0 && x.events[0].at <= x.now {
			x.events[0].do()
			x.events = x.events[1:]
		}
		x.topUp()
		req, ok, next := x.s.Dequeue()
		if ok {
			x.queued[req.Client]--
			x.log = append(x.log, dispatch{x.now, req.Client, req.Cost, req.Phase, req.Waited})
			x.now += time.Duration(math.Ceil(req.Cost / x.capacity * 1e9))
			continue
		}
		// Nothing may go: sleep until the scheduler's next time, a
		// client's next activity or the next event, whichever is first.
		wake := end
		if !next.IsZero() {
			d := next.Sub(x.start)
			if d <= x.now {
				x.t.Fatalf("at %v Dequeue said wait until %v, which is not later", x.now, d)
			}
			wake = min(wake, d)
		}
		for _, c := range x.clients {
			if on := c.nextOn(x.now); on >= 0 {
				wake = min(wake, on)
			}
		}
		if len(x.events) > 0 {
			wake = min(wake, x.events[0].at)
		}
		x.now = wake
	}
}

// rate returns a client's served cost a second in [from, to).
func (x *sim) rate(client string, from, to time.Duration) float64 {
	var sum float64
	for _, d := range x.log {
		if d.client == client && d.at >= from && d.at < to {
			sum += d.cost
		}
	}
	return sum / (to - from).Seconds()
}

func (x *sim) phaseCost(client string, phase mclock.Phase, from, to time.Duration) float64 {
	var sum float64
	for _, d := range x.log {
		if d.client == client && d.phase == phase && d.at >= from && d.at < to {
			sum += d.cost
		}
	}
	return sum
}

// expect returns the fluid model's rates for the sim's clients.
func (x *sim) expect(sharing mclock.Sharing) map[string]float64 {
	loads := make([]mclock.Load, len(x.clients))
	for i, c := range x.clients {
		p, err := x.s.Params(c.name)
		if err != nil {
			x.t.Fatal(err)
		}
		loads[i] = mclock.Load{Params: p}
	}
	rates := mclock.Allocate(x.capacity, sharing, loads)
	out := map[string]float64{}
	for i, c := range x.clients {
		out[c.name] = rates[i]
	}
	return out
}

// table formats client, R, W, L, expected, achieved.
func (x *sim) table(want map[string]float64, from, to time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-8s %8s %6s %8s %10s %10s %7s\n", "client", "R", "W", "L", "expected", "achieved", "error")
	for _, c := range x.clients {
		p, _ := x.s.Params(c.name)
		got := x.rate(c.name, from, to)
		e := "-"
		if want[c.name] > 0 {
			e = fmt.Sprintf("%+.1f%%", 100*(got-want[c.name])/want[c.name])
		}
		fmt.Fprintf(&b, "%-8s %8.0f %6.0f %8.0f %10.1f %10.1f %7s\n", c.name, p.Reservation, p.Weight, p.Limit, want[c.name], got, e)
	}
	return b.String()
}

func within(got, want, frac float64) bool {
	return math.Abs(got-want) <= frac*math.Abs(want)
}
