package mclock_test

import (
	"errors"
	"math"
	"testing"
	"time"

	"github.com/viovmm/vio/qos/mclock"
)

// FuzzScheduler feeds random operations (add or change clients with
// valid and invalid parameters, enqueue with and without dmClock tags,
// dequeue, advance the clock, remove clients, read stats) and checks:
// no panic; requests of a client leave in the order they came; no
// client is dispatched above its limit over any window; a "wait until"
// time is always in the future and keeps its promise; queues stay within
// their bounds; and at the end every request taken is dispatched exactly
// once (or handed back by RemoveClient).
func FuzzScheduler(f *testing.F) {
	f.Add([]byte{0, 0, 1, 1, 1, 0, 1, 1, 1, 2, 2, 2, 3, 10, 2, 2})
	f.Add([]byte{0, 1, 5, 6, 0, 2, 9, 9, 1, 1, 1, 1, 1, 2, 1, 2, 5, 1, 3, 2, 4, 1, 2, 2, 2})
	f.Add([]byte{0, 0, 0, 255, 1, 0, 1, 0, 1, 0, 2, 3, 200, 0, 0, 3, 3, 2, 2, 6, 0, 4, 0})
	// A client limited to 1000/s with a burst of 19 requests, all asked
	// for at once, then again after a little time.
	f.Add([]byte{1, 0, 0, 0, 4, 0, 1, 8, 19, 0, 1, 1, 9, 1, 5, 3, 1, 1, 9, 1, 8, 19, 0, 1, 1, 9})
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) > 4096 {
			return
		}
		now := time.Unix(100, 0)
		cfg := mclock.Config{Now: func() time.Time { return now }, QueueLimit: 16}
		if len(ops) > 0 {
			// The first byte picks the cost model and the sharing rule.
			cfg.Cost = []mclock.CostModel{{}, mclock.Bandwidth, {PerRequest: 1, UnitBytes: 4096}}[ops[0]%3]
			cfg.Sharing = mclock.Sharing(ops[0] / 3 % 2)
			ops = ops[1:]
		}
		s, err := mclock.New[int, int](cfg)
		if err != nil {
			t.Fatal(err)
		}
		tol := mclock.DefaultLimitTolerance

		type sent struct {
			at   time.Time
			cost float64
		}
		type model struct {
			p       mclock.Params
			queue   []int  // payloads in order
			history []sent // dispatches since the last change
		}
		clients := map[int]*model{}
		done := map[int]int{} // payload -> times dispatched or returned
		taken := 0
		seq := 0
		rates := []float64{0, 1, 50, 300, 1000, 1e5}
		weights := []float64{1, 2, 0.5, 100, 0, -1, math.NaN()}
		i := 0
		next := func() byte {
			if i >= len(ops) {
				return 0
			}
			i++
			return ops[i-1]
		}

		dispatched := func(req mclock.Request[int, int]) {
			m := clients[req.Client]
			if m == nil {
				t.Fatalf("dispatched a request of unknown client %d", req.Client)
			}
			if len(m.queue) == 0 || m.queue[0] != req.Payload {
				t.Fatalf("client %d: dispatched %d, its queue is %v", req.Client, req.Payload, m.queue)
			}
			m.queue = m.queue[1:]
			done[req.Payload]++
			if l := m.p.Limit; l > 0 {
				// Requests j..end of the history went in [h[j].at, now].
				var sum float64
				for j := len(m.history) - 1; j >= 0 && j >= len(m.history)-64; j-- {
					sum += m.history[j].cost
					if allowed := l*(now.Sub(m.history[j].at)+tol).Seconds() + 1e-6; sum > allowed {
						t.Fatalf("client %d (limit %v): %.1f cost in %v", req.Client, l, sum, now.Sub(m.history[j].at))
					}
				}
			}
			m.history = append(m.history, sent{now, req.Cost})
			if len(m.history) > 64 {
				m.history = m.history[1:]
			}
		}

		for i < len(ops) {
			id := int(next() % 4)
			switch op := next() % 10; op {
			case 0: // set params
				p := mclock.Params{
					Reservation: rates[int(next())%len(rates)],
					Weight:      weights[int(next())%len(weights)],
					Limit:       rates[int(next())%len(rates)],
					QueueLimit:  int(next() % 5),
				}
				err := s.SetClient(id, p)
				if (p.Validate() == nil) != (err == nil) {
					t.Fatalf("SetClient(%+v): %v, but Validate says %v", p, err, p.Validate())
				}
				if err == nil {
					if clients[id] == nil {
						clients[id] = &model{}
					}
					clients[id].p = p
					clients[id].history = nil
				}
			case 1, 2, 8: // enqueue one, or a burst
				n := 1
				if op == 8 {
					n = int(next() % 20)
				}
				size := int64(next()) * 512
				useDM := next()%4 == 0
				for range n {
					seq++
					var err error
					if useDM {
						d := mclock.Distributed{Delta: float64(next() % 8), Rho: float64(next() % 8)}
						err = s.EnqueueDistributed(id, size, seq, d)
						if d.Rho > d.Delta && clients[id] != nil {
							if !errors.Is(err, mclock.ErrInvalid) {
								t.Fatalf("rho above delta: %v", err)
							}
							continue
						}
					} else {
						err = s.Enqueue(id, size, seq)
					}
					m := clients[id]
					switch {
					case m == nil:
						if !errors.Is(err, mclock.ErrUnknownClient) {
							t.Fatalf("enqueue for unknown client: %v", err)
						}
					case errors.Is(err, mclock.ErrQueueFull):
						bound := m.p.QueueLimit
						if bound == 0 {
							bound = 16
						}
						if len(m.queue) < bound {
							t.Fatalf("client %d: queue full at %d of %d", id, len(m.queue), bound)
						}
					case err != nil:
						t.Fatalf("enqueue: %v", err)
					default:
						m.queue = append(m.queue, seq)
						taken++
					}
				}
			case 3, 4, 9: // dequeue one, or as many as may go
				n := 1
				if op == 9 {
					n = 1 << 20
				}
				for range n {
					req, ok, wake := s.Dequeue()
					if ok {
						dispatched(req)
						continue
					}
					if s.Len() > 0 && !wake.After(now) {
						t.Fatalf("%d queued, nothing dispatched, and the wake time %v is not after %v", s.Len(), wake, now)
					} else if s.Len() == 0 && !wake.IsZero() {
						t.Fatalf("nothing queued but a wake time %v", wake)
					}
					break
				}
			case 5: // time passes
				now = now.Add(time.Duration(next()) * time.Duration(1+int(next()%3)*999) * time.Microsecond)
			case 6: // remove
				left, err := s.RemoveClient(id)
				m := clients[id]
				if m == nil {
					if !errors.Is(err, mclock.ErrUnknownClient) {
						t.Fatalf("removing an unknown client: %v", err)
					}
					continue
				}
				if len(left) != len(m.queue) {
					t.Fatalf("removing client %d returned %d requests, it had %d", id, len(left), len(m.queue))
				}
				for k, p := range left {
					if p != m.queue[k] {
						t.Fatalf("removing client %d returned %v, its queue was %v", id, left, m.queue)
					}
					done[p]++
				}
				delete(clients, id)
			case 7: // stats
				st, err := s.Stats(id)
				if m := clients[id]; m != nil {
					if err != nil || st.Queued != len(m.queue) || st.Throttled < 0 {
						t.Fatalf("stats of client %d: %+v, %v (queue %d)", id, st, err, len(m.queue))
					}
				} else if !errors.Is(err, mclock.ErrUnknownClient) {
					t.Fatalf("stats of an unknown client: %v", err)
				}
			}
		}

		// Drain: every wait must end in a dispatch.
		for steps := 0; s.Len() > 0; steps++ {
			if steps > 2*taken+10 {
				t.Fatalf("draining %d requests took more than %d steps", s.Len(), steps)
			}
			req, ok, wake := s.Dequeue()
			if ok {
				dispatched(req)
				continue
			}
			if !wake.After(now) {
				t.Fatalf("draining: wake time %v not after %v", wake, now)
			}
			now = wake
			req, ok, _ = s.Dequeue()
			if !ok {
				t.Fatalf("nothing dispatched at the wake time the scheduler gave")
			}
			dispatched(req)
		}
		if _, ok, wake := s.Dequeue(); ok || !wake.IsZero() {
			t.Fatal("an empty scheduler dispatched or asked to be woken")
		}
		n := 0
		for p, k := range done {
			if k != 1 {
				t.Fatalf("request %d came out %d times", p, k)
			}
			n++
		}
		if n != taken {
			t.Fatalf("%d requests taken, %d came out", taken, n)
		}
	})
}
