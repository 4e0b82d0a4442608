package blk

import (
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/irq/coalesce"
	"github.com/viovmm/vio/state"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/ringpoll"
)

// server serves one request queue: its goroutine (serve) takes chains off
// the available ring and hands them to workers, which run them on the
// back-end.
//
// Why this split: the ring is a sequential structure, the back-end is not.
// One goroutine taking chains and pushing completions keeps the ring code
// simple and lets it batch (one interrupt for all the completions that
// arrived together), while the workers keep several requests of the queue
// on the back-end at once.
//
// Every hand-off between goroutines costs a thread wake-up when the other
// side sleeps, and in a nested VM that is several microseconds and a host
// interrupt. So there are three shortcuts, each with its switch:
//
//   - inline reads: a read the back-end can serve without waiting (data in
//     the host's page cache, block.TryReader) is served by the serve
//     goroutine itself, and completed in the same batch: no worker, no
//     hand-off either way (Config.NoInlineReads);
//   - direct completion: a worker that finishes the only request in
//     flight while the serve goroutine sleeps waiting for a kick returns
//     it to the used ring and interrupts itself, instead of waking the
//     serve goroutine to do it (Config.NoDirectCompletion);
//   - polling: after a batch the serve goroutine keeps looking at the
//     available ring for a while with notifications disabled, so a guest
//     that answers a completion with a new request neither exits to kick
//     nor waits for a wake-up (Config.Poll).
//
// Ownership. The serve goroutine alone takes chains (Next) and turns
// notifications on and off. The completion side (pushing used entries,
// inFlight, the coalescer vic, and the decision to interrupt) belongs to
// the serve goroutine while it is awake. While it sleeps with nothing to
// do but wait for a kick, it says so by setting idle under mu, and a
// worker that completes the last request in flight may then take the
// completion side for that one request: it does everything under mu. The
// serve goroutine clears idle under mu before it does anything else when
// it wakes, so every direct completion happened before it looks at the
// completion side again, and from then on workers send to done. A pause
// (the gate) and a reset (stop) therefore see every request either still
// in flight, and coming through done, or already pushed.
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
	// direct allows direct completion (not Config.NoDirectCompletion).
	direct bool

	// The completion side: the serve goroutine's while it is awake, a
	// completing worker's under mu while idle is set (see above).
	inFlight int // chains taken and not yet pushed
	// vic holds completion interrupts back while many requests are in
	// flight (Config.Coalesce).
	vic *coalesce.Coalescer

	mu   sync.Mutex
	idle bool // the serve goroutine sleeps waiting only for a kick
	// directAt is when a worker last completed a request directly: the
	// poll policy measures the guest's answer from there.
	directAt time.Time

	// The serve goroutine's alone.
	due      <-chan time.Time // the coalescer's deadline; nil while none waits
	dueTimer *time.Timer
	poll     *ringpoll.Window
	inl      inliner
	batchEnd time.Time // when the ring was last found empty after a batch
	polled   bool      // the next take follows a poll that found chains
}

// inliner is the serve goroutine's state for inline reads.
type inliner struct {
	w  *worker         // scratch space for the requests served inline
	tr block.TryReader // nil: no inline reads
	// misses counts tries in a row that would have waited; skip is how
	// many read candidates go to workers untried before the next try, so
	// that a disk whose data is not cached pays for few failed tries.
	misses, skip int
}

// Bounds of inline work, which holds up the ring and the completions of
// the queue while it runs: at most this many requests and bytes per batch
// (the rest go to workers, so depth keeps its parallelism), and no single
// read larger than maxInlineRead.
const (
	maxInline      = 16
	maxInlineBytes = 256 << 10
	maxInlineRead  = 128 << 10
	maxInlineSkip  = 63
)

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
	s := &server{
		d: d, q: q, stop: stop,
		work:   make(chan request, limit),
		done:   make(chan completion, limit),
		limit:  limit,
		direct: !d.cfg.NoDirectCompletion,
		vic:    coalesce.New(d.cfg.Coalesce),
		poll:   ringpoll.New(d.cfg.Poll),
	}
	if tr := d.tryReader; tr != nil && !d.noTry.Load() {
		s.inl = inliner{w: &worker{d: d, stop: stop}, tr: tr}
	}
	return s
}

// errStopped ends the serve goroutine when the device is reset.
var errStopped = errors.New("blk: reset")

// ready is a closed channel: a select with it does not wait.
var ready = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

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
		s.wake() // workers send to done from now on
		close(s.work)
		wg.Wait()
		if s.dueTimer != nil {
			s.dueTimer.Stop()
		}
	}()

	take := true   // the available ring may hold chains we have not taken
	armed := false // notifications are on, and the ring was empty after them
	for {
		var now <-chan struct{} // set: look at the channels, do not wait
		if take && s.inFlight < s.limit {
			armed = false
			if err := s.take(); err != nil {
				return
			}
			if s.inFlight < s.limit {
				st, err := s.idleRing()
				if err != nil {
					return
				}
				switch st {
				case ringMore, ringEvent:
					// Chains to take, or a stop or pause to serve: in
					// both cases notifications are off, so this goroutine
					// must not wait for a kick (a pause may even have
					// been called off by now).
					now = ready
				case ringEmpty:
					take, armed = false, true
				}
			}
			// At the limit, notifications stay disabled and the next
			// completion resumes taking.
		}
		if now == nil {
			s.mu.Lock()
			// A worker may complete directly only while nothing else
			// needs this goroutine: no chain to take, no interrupt held
			// back, and no poll to run after the completion (a poll sees
			// the guest's answer to it without a kick; a direct
			// completion leaves the guest to kick).
			s.idle = armed && s.due == nil && s.poll.Next() == 0
			idle := s.idle
			s.mu.Unlock()
			if h := idleHook.Load(); idle && h != nil {
				(*h)()
			}
		}
		select {
		case <-now:
		case <-s.stop:
			return
		case <-s.gate.Requested():
			s.wake()
			if !s.quiesce() {
				return
			}
			d := s.vic.Interrupted(time.Now()) // quiesce interrupted for all
			s.d.stats.coalesced.Add(d.Coalesced)
			s.d.stats.coalesceDelay.Add(uint64(d.Delay))
			s.stopDue()
			take = true // take what the driver made available meanwhile
		case <-s.q.Kicks():
			directAt := s.wake()
			s.d.stats.notifications.Add(1)
			if armed {
				// New work came after the device gave up polling: tell
				// the policy how long after the last batch (or the last
				// completion a worker pushed) the guest answered.
				s.poll.Woke(time.Since(later(s.batchEnd, directAt)))
			}
			take = true
		case <-s.due:
			s.wake()
			s.due = nil
			s.interrupt(time.Now())
		case c := <-s.done:
			s.wake()
			one := [1]completion{c}
			if err := s.complete(one[:]); err != nil {
				return
			}
			// A batch of completions, which the guest may answer with new
			// requests: a poll would see them without a kick.
			s.batchEnd = time.Now()
			take = take || s.poll.Next() > 0
		}
	}
}

// Test hooks, nil outside tests: idleHook runs when the serve goroutine is
// about to sleep idle (so that a worker may complete directly), pollHook
// when it starts a poll of the ring.
var idleHook, pollHook atomic.Pointer[func()]

// wake takes the completion side back from the workers (see server); the
// serve goroutine calls it when it wakes. It returns when a worker last
// completed a request directly.
func (s *server) wake() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.idle = false
	return s.directAt
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// ringState is what idleRing found.
type ringState int

const (
	ringEmpty ringState = iota // notifications are on, nothing to take
	ringMore                   // chains to take (notifications off)
	ringEvent                  // a stop or pause to serve (notifications off)
)

// idleRing runs when a batch has left the ring empty, notifications
// disabled: it polls the ring for as long as the policy says, then turns
// notifications on and looks once more, since a chain made available just
// before that would otherwise wait for a kick the driver never sends.
func (s *server) idleRing() (ringState, error) {
	s.batchEnd = time.Now()
	if w := s.poll.Next(); w > 0 {
		st, err := s.pollRing(w)
		if err != nil || st != ringEmpty {
			return st, err
		}
	}
	more, err := s.q.EnableNotifications()
	if err != nil {
		return 0, err
	}
	if more {
		return ringMore, nil
	}
	return ringEmpty, nil
}

// pollRing looks at the available ring until it has chains or w has
// passed, with notifications still disabled. Meanwhile it does the rest of
// the serve goroutine's work, without waiting for any of it: completions
// are pushed as they come (and the window starts again after each batch,
// since the guest may answer it), held interrupts are sent when due. A
// stop or pause ends the poll. Between looks it yields, so that on a
// small host the poll never keeps a worker or another queue from running.
func (s *server) pollRing(w time.Duration) (ringState, error) {
	start := time.Now()
	deadline := start.Add(w)
	s.d.stats.polls.Add(1)
	defer func() { s.d.stats.pollTime.Add(uint64(time.Since(start))) }()
	pause := s.gate.Requested()
	if h := pollHook.Load(); h != nil {
		(*h)()
	}
	for {
		if s.q.HasAvailable() {
			s.polled = true
			return ringMore, nil
		}
		select {
		case <-s.stop:
			return ringEvent, nil
		case <-pause:
			return ringEvent, nil
		case c := <-s.done:
			one := [1]completion{c}
			if err := s.complete(one[:]); err != nil {
				return 0, err
			}
			deadline = time.Now().Add(w) // a poll after this batch
			s.d.stats.polls.Add(1)
		case <-s.due:
			s.due = nil
			s.interrupt(time.Now())
		case <-s.q.Kicks():
			// Sent before notifications were disabled.
			s.d.stats.notifications.Add(1)
		default:
		}
		if !time.Now().Before(deadline) {
			return ringEmpty, nil
		}
		runtime.Gosched()
	}
}

// interrupt interrupts the driver for every completion pushed so far.
func (s *server) interrupt(now time.Time) {
	s.signal(now)
	s.stopDue()
}

// signal tells the coalescer the guest is interrupted and interrupts it.
// Counted before the guest can see the interrupt, so that what it reads
// in Stats afterwards includes it.
func (s *server) signal(now time.Time) {
	d := s.vic.Interrupted(now)
	s.d.stats.coalesced.Add(d.Coalesced)
	s.d.stats.coalesceDelay.Add(uint64(d.Delay))
	_ = s.q.Signal() // errors are the transport's to count
}

func (s *server) stopDue() {
	if s.due != nil {
		s.dueTimer.Stop()
		s.due = nil
	}
}

// complete returns completions to the used ring, cs and every one waiting
// in done, then interrupts once, unless the coalescer holds the interrupt
// back for the completions that follow.
func (s *server) complete(cs []completion) error {
	now := time.Now()
	n := 0
	for _, c := range cs {
		if err := s.push(c, now); err != nil {
			return err
		}
		n++
	}
	for more := true; more; {
		select {
		case c := <-s.done:
			if err := s.push(c, now); err != nil {
				return err
			}
			n++
		default:
			more = false
		}
	}
	switch {
	case n == 0:
	case s.vic.Completed(n, s.inFlight, now):
		s.interrupt(now)
	case s.due == nil:
		wait := time.Until(s.vic.Deadline())
		if s.dueTimer == nil {
			s.dueTimer = time.NewTimer(wait)
		} else {
			s.dueTimer.Reset(wait)
		}
		s.due = s.dueTimer.C
	}
	return nil
}

// push returns one completion to the used ring.
func (s *server) push(c completion, now time.Time) error {
	s.inFlight--
	if err := s.q.Push(c.head, c.written); err != nil {
		return err
	}
	s.d.latency[c.op].Observe(now.Sub(c.taken))
	return nil
}

// quiesce serves a pause: it takes nothing new, waits for the requests
// in flight to complete and returns them to the used ring, then parks
// until Resume. It reports false if the device stops (or the queue
// breaks) instead.
func (s *server) quiesce() bool {
	for ; s.inFlight > 0; s.inFlight-- {
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

// take hands available chains to the workers, keeping the reads it can
// serve inline for itself, until the ring is empty or the in-flight limit
// is reached; then it serves those reads and completes them. It leaves
// notifications disabled: idleRing turns them on when the ring stays
// empty.
func (s *server) take() error {
	s.q.DisableNotifications()
	var batch [maxInline]request
	inline := batch[:0]
	budget := int64(maxInlineBytes)
	taken := 0
	for s.inFlight < s.limit {
		c, err := s.q.Next()
		if err != nil {
			return err
		}
		if c == nil {
			break
		}
		r := request{c, time.Now()}
		taken++
		s.inFlight++
		s.d.stats.noteInFlight(s.inFlight)
		if len(inline) < maxInline {
			if n, ok := s.inlineCandidate(c); ok && n <= budget {
				budget -= n
				inline = append(inline, r)
				continue
			}
		}
		s.work <- r
	}
	if s.polled {
		s.d.stats.polledChains.Add(uint64(taken))
		s.polled = false
	}
	if len(inline) == 0 {
		return nil
	}
	return s.serveInline(inline)
}

// inlineCandidate reports whether c looks like a read to try inline, and
// its size. It only looks: tryRead checks the request for real.
func (s *server) inlineCandidate(c *virtio.Chain) (int64, bool) {
	if s.inl.tr == nil {
		return 0, false
	}
	n := c.Writable.Len() - 1
	if n <= 0 || n > maxInlineRead {
		return 0, false
	}
	var typ [4]byte
	if k, _ := c.Readable.ReadAt(typ[:], 0); k < len(typ) || typ != [4]byte{TypeIn} {
		return 0, false
	}
	if s.inl.skip > 0 {
		s.inl.skip--
		return 0, false
	}
	return n, true
}

// serveInline tries each read of rs on the back-end without waiting, and
// completes those served; the others go to the workers. A reset between
// two abandons the rest, as workers abandon queued requests.
func (s *server) serveInline(rs []request) error {
	var done [maxInline]completion
	n := 0
	for _, r := range rs {
		select {
		case <-s.stop:
			return errStopped
		default:
		}
		if s.inl.tr == nil { // an earlier try of this batch said never
			s.work <- r
			continue
		}
		written, res := s.inl.w.tryRead(r.c, s.inl.tr)
		switch res {
		case tryServed:
			done[n] = completion{r.c.Head, written, opRead, r.taken}
			n++
			s.inl.misses, s.inl.skip = 0, 0
			continue
		case tryMissed:
			s.d.stats.inlineMisses.Add(1)
			s.inl.misses++
			s.inl.skip = min(1<<min(s.inl.misses, 6)-1, maxInlineSkip)
		case tryUnsupported:
			// For good: the back-end cannot serve reads this way.
			s.d.noTry.Store(true)
			s.inl.tr = nil
		}
		s.work <- r
	}
	return s.complete(done[:n])
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
		c := completion{r.c.Head, n, w.op, r.taken}
		if s.direct && s.completeDirect(c) {
			continue
		}
		s.done <- c
	}
}

// completeDirect returns c to the used ring and interrupts the driver from
// the worker, as the serve goroutine would have, when that goroutine is
// idle and c is the only request in flight: there is nothing to batch c
// with, and waking the serve goroutine just to push it would put a thread
// wake-up into the request's latency. It reports false, having done
// nothing, otherwise. All of it happens under mu (see server).
func (s *server) completeDirect(c completion) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.idle || s.inFlight != 1 {
		return false
	}
	select {
	case <-s.stop:
		return false
	default:
	}
	s.inFlight = 0
	now := time.Now()
	s.directAt = now
	if err := s.q.Push(c.head, c.written); err != nil {
		// The queue is broken; the transport has asked the driver to
		// reset, and the serve goroutine learns it at its next Next.
		return true
	}
	s.d.latency[c.op].Observe(now.Sub(c.taken))
	s.d.stats.directCompletions.Add(1)
	// Nothing is left in flight, so every coalescing policy interrupts
	// at once (and none was held back: idle says due is nil).
	s.vic.Completed(1, 0, now)
	s.signal(now)
	return true
}
