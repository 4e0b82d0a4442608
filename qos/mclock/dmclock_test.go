package mclock_test

import (
	"math"
	"testing"
	"time"

	"github.com/viovmm/vio/qos/mclock"
)

// dmSim runs two servers in front of one storage, each a scheduler over
// its own simulated 1000/s device, with a client X that spreads its
// requests over both and a local client on each that is always busy.
type dmSim struct {
	t       *testing.T
	start   time.Time
	now     time.Duration
	servers [2]*mclock.Scheduler[string, int]
	tracker *mclock.Tracker[int]
	useDM   bool
	// X's service, total and in the reservation phase.
	xCost, xResv float64
}

func newDMSim(t *testing.T, x, local mclock.Params, useDM bool) *dmSim {
	d := &dmSim{t: t, start: time.Unix(0, 0), tracker: mclock.NewTracker[int](), useDM: useDM}
	for i := range d.servers {
		s, err := mclock.New[string, int](mclock.Config{Now: func() time.Time { return d.start.Add(d.now) }})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.SetClient("X", x); err != nil {
			t.Fatal(err)
		}
		if err := s.SetClient("local", local); err != nil {
			t.Fatal(err)
		}
		d.servers[i] = s
	}
	return d
}

func (d *dmSim) run(end time.Duration) {
	const capacity = 1000.0
	var busy [2]time.Duration
	queued := [2]map[string]int{{}, {}}
	for {
		i := 0
		if busy[1] < busy[0] {
			i = 1
		}
		d.now = busy[i]
		if d.now >= end {
			return
		}
		s := d.servers[i]
		for queued[i]["local"] < 8 {
			if err := s.Enqueue("local", 0, 0); err != nil {
				d.t.Fatal(err)
			}
			queued[i]["local"]++
		}
		for queued[i]["X"] < 4 {
			var dist mclock.Distributed
			if d.useDM {
				dist = d.tracker.Prepare(i)
			}
			if err := s.EnqueueDistributed("X", 0, 0, dist); err != nil {
				d.t.Fatal(err)
			}
			queued[i]["X"]++
		}
		req, ok, next := s.Dequeue()
		if !ok {
			if next.IsZero() {
				d.t.Fatal("a server with queued work has no next time")
			}
			busy[i] = next.Sub(d.start)
			continue
		}
		queued[i][req.Client]--
		if req.Client == "X" {
			d.tracker.Completed(i, req.Cost, req.Phase)
			d.xCost += req.Cost
			if req.Phase == mclock.Reservation {
				d.xResv += req.Cost
			}
		}
		busy[i] = d.now + time.Duration(math.Ceil(req.Cost/capacity*1e9))
	}
}

// TestDMClockLimit: X is limited to 300/s. Each server alone would give
// it 300/s, 600/s in all; with delta each server counts what the other
// served, and the total holds at 300/s.
func TestDMClockLimit(t *testing.T) {
	x := mclock.Params{Weight: 1, Limit: 300}
	local := mclock.Params{Weight: 1}
	for _, dm := range []bool{false, true} {
		d := newDMSim(t, x, local, dm)
		d.run(10 * time.Second)
		want := 600.0 // each server's own limit
		if dm {
			want = 300 // the client's limit over both
		}
		got := d.xCost / 10
		t.Logf("dmClock %v: X got %.1f/s over two servers with a limit of 300/s", dm, got)
		if !within(got, want, 0.10) {
			t.Errorf("dmClock %v: X got %.1f/s, want %.0f/s", dm, got, want)
		}
	}
}

// TestDMClockReservation: X reserves 300/s and the local clients weigh
// 100 times more. Without rho each server serves X's reservation in
// full; with it the two together do.
func TestDMClockReservation(t *testing.T) {
	x := mclock.Params{Reservation: 300, Weight: 1}
	local := mclock.Params{Weight: 100}
	for _, dm := range []bool{false, true} {
		d := newDMSim(t, x, local, dm)
		d.run(10 * time.Second)
		want := 600.0
		if dm {
			want = 300
		}
		got := d.xResv / 10
		t.Logf("dmClock %v: X got %.1f/s in reservation phases (%.1f/s in all) with a reservation of 300/s", dm, got, d.xCost/10)
		if !within(got, want, 0.10) {
			t.Errorf("dmClock %v: X's reservation-phase service %.1f/s, want %.0f/s", dm, got, want)
		}
	}
}

// TestTracker: delta and rho count exactly the other servers' service
// since the last request to a server.
func TestTracker(t *testing.T) {
	tr := mclock.NewTracker[string]()
	if d := tr.Prepare("a"); d != (mclock.Distributed{}) {
		t.Fatalf("first request: %+v", d)
	}
	tr.Prepare("b")
	tr.Completed("a", 4, mclock.Weight)
	tr.Completed("b", 3, mclock.Reservation)
	tr.Completed("b", 2, mclock.Weight)
	tr.Completed("c", 1, mclock.Reservation)
	tr.Completed("c", math.NaN(), mclock.Reservation) // ignored
	tr.Completed("c", -5, mclock.Weight)              // ignored
	if d, want := tr.Prepare("a"), (mclock.Distributed{Delta: 6, Rho: 4}); d != want {
		t.Fatalf("to a: %+v, want %+v", d, want)
	}
	if d, want := tr.Prepare("b"), (mclock.Distributed{Delta: 5, Rho: 1}); d != want {
		t.Fatalf("to b: %+v, want %+v", d, want)
	}
	if d := tr.Prepare("a"); d != (mclock.Distributed{}) {
		t.Fatalf("to a again with nothing in between: %+v", d)
	}
	tr.Forget("a")
	tr.Completed("b", 7, mclock.Weight)
	if d := tr.Prepare("a"); d != (mclock.Distributed{}) {
		t.Fatalf("to a after Forget: %+v", d)
	}
}
