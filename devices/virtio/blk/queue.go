package blk

import (
	"sync"
	"time"

	"github.com/viovmm/vio/irq/coalesce"
	"github.com/viovmm/vio/state"
	"github.com/viovmm/vio/virtio"
)

// server serves one request queue: its goroutine (serve) owns the
// available and used rings; workers only run requests on the back-end.
//
// Why this split: the ring is a sequential structure, the back-end is not.
// One goroutine taking chains and pushing completions keeps the ring code
// simple and lets it batch (one interrupt for all the completions that
// arrived together), while the workers keep several requests of the queue
// on the back-end at once.
type server struct {
	d    *Device
	q    *virtio.Queue
	stop chan struct{}
	gate *state.Gate

	work chan request    // to workers; capacity limit, so never blocks
	done chan completion // from workers; capacity limit, so never blocks
	// limit bounds the chains taken and not yet returned. A hostile
	// driver can republish heads still in flight, so the ring itself
	// does not bound them; the queue size does here.
	limit int
	// vic holds completion interrupts back while many requests are in
	// flight (Config.Coalesce); the serve goroutine owns it.
	vic *coalesce.Coalescer
}

// request is a chain on its way to a worker, with the time it was taken
// off the available ring: a request's latency runs from there to its
// used-ring entry, which is what the guest sees (queueing for a worker
// included).
type request struct {
	c     *virtio.Chain
	taken time.Time
}

type completion struct {
	head    uint16
	written uint32
	op      op
	taken   time.Time
}

func newServer(d *Device, q *virtio.Queue, stop chan struct{}) *server {
	// The driver sizes requests by the seg_max it read, whatever size
	// the queue got (a vhost-user front-end picks its own, often below
	// the device's maximum that seg_max is derived from).
	q.AllowChains(int(d.segMax()) + 2)
	limit := int(q.Config().Size)
	return &server{
		d: d, q: q, stop: stop,
		work:  make(chan request, limit),
		done:  make(chan completion, limit),
		limit: limit,
		vic:   coalesce.New(d.cfg.Coalesce),
	}
}

// serve runs until stop is closed or the queue breaks (then the transport
// has set DEVICE_NEEDS_RESET and waits for the driver to reset). Either
// way it returns only once no worker touches guest memory any more.
func (s *server) serve() {
	var wg sync.WaitGroup
	for range s.d.cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.worker()
		}()
	}
	defer func() {
		close(s.work)
		wg.Wait()
	}()

	inFlight := 0
	poll := true // the available ring may hold chains we have not taken
	// due fires when the oldest completion held back by the coalescer
	// must be interrupted for; nil while none waits.
	var due <-chan time.Time
	var dueTimer *time.Timer
	defer func() {
		if dueTimer != nil {
			dueTimer.Stop()
		}
	}()
	interrupt := func(now time.Time) {
		// Counted before the guest can see the interrupt, so that what it
		// reads in Stats afterwards includes it.
		d := s.vic.Interrupted(now)
		s.d.stats.coalesced.Add(d.Coalesced)
		s.d.stats.coalesceDelay.Add(uint64(d.Delay))
		_ = s.q.Signal() // errors are the transport's to count
		if due != nil {
			dueTimer.Stop()
			due = nil
		}
	}
	for {
		if poll {
			var err error
			if inFlight, poll, err = s.take(inFlight); err != nil {
				return
			}
		}
		select {
		case <-s.stop:
			return
		case <-s.gate.Requested():
			if !s.quiesce(inFlight) {
				return
			}
			d := s.vic.Interrupted(time.Now()) // quiesce interrupted for all
			s.d.stats.coalesced.Add(d.Coalesced)
			s.d.stats.coalesceDelay.Add(uint64(d.Delay))
			if due != nil {
				dueTimer.Stop()
				due = nil
			}
			inFlight = 0
			poll = true // take what the driver made available meanwhile
		case <-s.q.Kicks():
			s.d.stats.notifications.Add(1)
			poll = true
		case <-due:
			due = nil
			interrupt(time.Now())
		case c := <-s.done:
			// Push everything that has completed, then interrupt once,
			// unless the coalescer holds the interrupt back for the
			// completions that follow.
			now := time.Now()
			n := 0
			for {
				inFlight--
				n++
				if err := s.q.Push(c.head, c.written); err != nil {
					return
				}
				s.d.latency[c.op].Observe(now.Sub(c.taken))
				var ok bool
				select {
				case c, ok = <-s.done:
				default:
				}
				if !ok {
					break
				}
			}
			switch {
			case s.vic.Completed(n, inFlight, now):
				interrupt(now)
			case due == nil:
				wait := time.Until(s.vic.Deadline())
				if dueTimer == nil {
					dueTimer = time.NewTimer(wait)
				} else {
					dueTimer.Reset(wait)
				}
				due = dueTimer.C
			}
		}
	}
}

// quiesce serves a pause: it takes nothing new, waits for the inFlight
// requests to complete and returns them to the used ring, then parks
// until Resume. It reports false if the device stops (or the queue
// breaks) instead.
func (s *server) quiesce(inFlight int) bool {
	for ; inFlight > 0; inFlight-- {
		select {
		case <-s.stop:
			return false
		case c := <-s.done:
			if err := s.q.Push(c.head, c.written); err != nil {
				return false
			}
			s.d.latency[c.op].Observe(time.Since(c.taken))
		}
	}
	_ = s.q.Signal()
	return s.gate.Park(s.stop)
}

// take hands available chains to the workers until the ring is empty or
// the in-flight limit is reached. It returns the new in-flight count and
// whether the ring must be polled again without waiting for a kick (at
// the limit, notifications stay disabled and the next completion resumes
// polling).
func (s *server) take(inFlight int) (int, bool, error) {
	s.q.DisableNotifications()
	for {
		if inFlight >= s.limit {
			return inFlight, true, nil
		}
		c, err := s.q.Next()
		if err != nil {
			return inFlight, false, err
		}
		if c == nil {
			more, err := s.q.EnableNotifications()
			if err != nil {
				return inFlight, false, err
			}
			if !more {
				return inFlight, false, nil
			}
			s.q.DisableNotifications()
			continue
		}
		s.work <- request{c, time.Now()}
		inFlight++
		s.d.stats.noteInFlight(inFlight)
	}
}

func (s *server) worker() {
	w := &worker{d: s.d, stop: s.stop}
	for r := range s.work {
		select {
		case <-s.stop:
			// Reset: abandon queued requests without touching guest
			// memory; the rings are forgotten anyway.
			continue
		default:
		}
		w.op = opOther
		n := w.handle(r.c)
		s.done <- completion{r.c.Head, n, w.op, r.taken}
	}
}
