package mclock

import (
	"fmt"
	"math"
	"time"
)

// Request is a dispatched request.
type Request[C comparable, T any] struct {
	Client  C
	Payload T
	Size    int64
	Cost    float64
	// Phase is the phase it was served in; a dmClock server returns it
	// to the client's Tracker.
	Phase Phase
	// Waited is the time it spent queued.
	Waited time.Duration
}

// client is one client's queue, tags and counters.
//
// Times (reservation tag, limit time) are float64 nanoseconds since the
// scheduler's epoch: exact integers up to 104 days of uptime and within a
// few nanoseconds long after, which is far below any rate's spacing.
// Proportional tags are virtual: they are compared with each other,
// never with the clock (see doc.go).
type client[C comparable, T any] struct {
	id     C
	seq    uint64
	p      Params
	qlimit int
	q      ring[T]

	// Tags of the request at the head of the queue (valid while queued).
	resv, prop float64
	// Tags of the last request served, after the phase adjustment.
	lastResv, lastProp float64
	// tat is the earliest time the limit lets the next request go (the
	// "theoretical arrival time" of a GCRA): after each dispatch it moves
	// to max(tat, now-tolerance) + cost/limit.
	tat float64
	// throttledAt is when the client entered the limit heap.
	throttledAt float64

	resvPos, propPos, limPos int

	st counters
}

// Scheduler is an mClock scheduler over clients identified by C with
// requests carrying payloads of type T. It does no I/O and starts no
// goroutines: the caller enqueues requests and asks for the next one
// whenever the device can take one (see Dispatcher for a ready-made
// loop). It is not safe for concurrent use.
type Scheduler[C comparable, T any] struct {
	cfg    Config
	now    func() time.Time
	epoch  time.Time
	last   float64 // ns since epoch, never decreasing
	window float64 // ns
	slack  float64 // ns, Config.LimitTolerance

	clients map[C]*client[C, T]
	seq     uint64
	queued  int

	resvHeap tagHeap[C, T] // ready clients with a reservation, by reservation tag
	propHeap tagHeap[C, T] // ready clients, by proportional tag
	limHeap  tagHeap[C, T] // clients held by their limit, by tat

	// vtime is the proportional tag of the last request served in the
	// weight phase: the virtual time a client joining an empty ready set
	// starts at.
	vtime float64
}

// New returns a scheduler with no clients.
func New[C comparable, T any](cfg Config) (*Scheduler[C, T], error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	if cfg.QueueLimit == 0 {
		cfg.QueueLimit = DefaultQueueLimit
	}
	if cfg.RateWindow == 0 {
		cfg.RateWindow = time.Second
	}
	if cfg.LimitTolerance == 0 {
		cfg.LimitTolerance = DefaultLimitTolerance
	}
	s := &Scheduler[C, T]{
		cfg:     cfg,
		now:     now,
		epoch:   now(),
		window:  float64(cfg.RateWindow),
		slack:   float64(cfg.LimitTolerance),
		clients: make(map[C]*client[C, T]),
	}
	s.resvHeap = tagHeap[C, T]{key: func(c *client[C, T]) float64 { return c.resv }, pos: func(c *client[C, T]) *int { return &c.resvPos }}
	s.propHeap = tagHeap[C, T]{key: func(c *client[C, T]) float64 { return c.prop }, pos: func(c *client[C, T]) *int { return &c.propPos }}
	s.limHeap = tagHeap[C, T]{key: func(c *client[C, T]) float64 { return c.tat }, pos: func(c *client[C, T]) *int { return &c.limPos }}
	return s, nil
}

// rebaseAfter is the age of the epoch (about 3.3 days) at which the
// scheduler moves it up to now, so that times held as float64
// nanoseconds keep a resolution far below a nanosecond however long the
// process runs.
const rebaseAfter = 1 << 48

// clock returns now in ns since the epoch, never going backwards.
func (s *Scheduler[C, T]) clock() float64 {
	t := float64(s.now().Sub(s.epoch))
	if t > s.last {
		s.last = t
	}
	if s.last >= rebaseAfter {
		s.rebase(math.Floor(s.last))
	}
	return s.last
}

// rebase moves the epoch d ns later: every time the scheduler holds is
// shifted by the same amount (and every proportional tag by the virtual
// time), and the heaps are rebuilt because rounding
// may turn two close tags into a tie the old order does not respect.
// It visits every queued request, once every few days.
func (s *Scheduler[C, T]) rebase(d float64) {
	s.epoch = s.epoch.Add(time.Duration(d))
	s.last -= d
	// Proportional tags only meet each other, so the virtual time is
	// moved back to zero at the same moment, for the same reason.
	v := s.vtime
	s.vtime = 0
	for _, c := range s.clients {
		c.prop -= v
		c.lastProp -= v
		c.resv -= d
		c.lastResv -= d
		c.tat -= d
		c.throttledAt -= d
		c.st.since -= d
		c.st.winStart -= d
		for i := range c.q.size {
			c.q.buf[(c.q.head+i)%len(c.q.buf)].at -= d
		}
	}
	for _, h := range []*tagHeap[C, T]{&s.resvHeap, &s.propHeap, &s.limHeap} {
		for i := len(h.items)/2 - 1; i >= 0; i-- {
			h.down(i)
		}
	}
}

// at converts ns since the epoch to a time. A tag beyond what a Duration
// holds (a huge request under a tiny limit) becomes 290 years from the
// epoch rather than an overflowed time in the past, which would make a
// dispatcher spin.
func (s *Scheduler[C, T]) at(ns float64) time.Time {
	if ns >= math.MaxInt64 {
		return s.epoch.Add(math.MaxInt64)
	}
	return s.epoch.Add(time.Duration(ns))
}

// Cost returns what a request of size bytes costs under the scheduler's
// cost model.
func (s *Scheduler[C, T]) Cost(size int64) float64 { return s.cfg.Cost.Cost(size) }

// SetClient adds a client or changes its parameters. A change takes
// effect at once: the client's pending tags are rescaled to the new
// rates (a limit lowered from 1000/s to 10/s does not let the next
// request go on the old spacing, and a raised one does not keep it
// waiting). A lowered queue bound keeps what is queued and refuses new
// requests until the queue is below it.
func (s *Scheduler[C, T]) SetClient(id C, p Params) error {
	if err := p.Validate(); err != nil {
		return fmt.Errorf("client %v: %w", id, err)
	}
	now := s.clock()
	qlimit := p.QueueLimit
	if qlimit == 0 {
		qlimit = s.cfg.QueueLimit
	}
	c, ok := s.clients[id]
	if !ok {
		s.seq++
		c = &client[C, T]{
			id: id, seq: s.seq, p: p, qlimit: qlimit,
			lastResv: math.Inf(-1), lastProp: math.Inf(-1), tat: math.Inf(-1),
			resvPos: -1, propPos: -1, limPos: -1,
		}
		c.st.since, c.st.winStart = now, now
		s.clients[id] = c
		return nil
	}
	queued := c.q.len() > 0
	if queued {
		s.unplace(c, now)
	}
	old := c.p
	c.p, c.qlimit = p, qlimit

	// Reservation: keep the client's lead or debt in cost units.
	switch {
	case p.Reservation == 0:
		c.lastResv = math.Inf(-1)
	case old.Reservation == 0:
		c.lastResv = math.Inf(-1)
		if queued {
			c.resv = now
		}
	default:
		k := old.Reservation / p.Reservation
		c.lastResv = now + (c.lastResv-now)*k
		c.resv = now + (c.resv-now)*k
	}
	// Weight: keep the distance to the virtual time in cost units.
	if k := old.Weight / p.Weight; k != 1 {
		v := s.virtualTime()
		c.lastProp = v + (c.lastProp-v)*k
		c.prop = v + (c.prop-v)*k
	}
	// Limit: the time the client still has to wait is rescaled.
	switch {
	case p.Limit == 0:
		c.tat = math.Inf(-1)
	case old.Limit > 0 && c.tat > now:
		c.tat = now + (c.tat-now)*old.Limit/p.Limit
	}
	if queued {
		s.place(c, now)
	}
	return nil
}

// RemoveClient removes a client and returns the payloads it still had
// queued, oldest first, so the caller can fail or re-route them.
func (s *Scheduler[C, T]) RemoveClient(id C) ([]T, error) {
	c, ok := s.clients[id]
	if !ok {
		return nil, fmt.Errorf("client %v: %w", id, ErrUnknownClient)
	}
	now := s.clock()
	if c.q.len() > 0 {
		s.unplace(c, now)
	}
	out := make([]T, 0, c.q.len())
	for c.q.len() > 0 {
		out = append(out, c.q.pop().payload)
	}
	s.queued -= len(out)
	delete(s.clients, id)
	return out, nil
}

// Enqueue queues a request of size bytes for client id. It fails with
// ErrQueueFull when the client's queue is at its bound, ErrUnknownClient
// for a client not added, ErrInvalid for a negative size.
func (s *Scheduler[C, T]) Enqueue(id C, size int64, payload T) error {
	return s.EnqueueDistributed(id, size, payload, Distributed{})
}

// EnqueueDistributed is Enqueue for a dmClock client: d is the service
// the client had from other servers since its last request here.
func (s *Scheduler[C, T]) EnqueueDistributed(id C, size int64, payload T, d Distributed) error {
	c, ok := s.clients[id]
	if !ok {
		return ErrUnknownClient
	}
	if size < 0 {
		return fmt.Errorf("%w: request size %d is negative", ErrInvalid, size)
	}
	if d != (Distributed{}) {
		if err := d.Validate(); err != nil {
			return err
		}
	}
	if c.q.len() >= c.qlimit {
		c.st.rejected++
		return ErrQueueFull
	}
	now := s.clock()
	c.q.push(entry[T]{payload: payload, size: size, cost: s.cfg.Cost.Cost(size), dist: d, at: now})
	s.queued++
	if c.q.len() == 1 {
		s.tagHead(c, now, true)
		s.place(c, now)
	}
	return nil
}

// virtualTime is the proportional tag a client joining now is measured
// against: the smallest tag among the clients competing in the weight
// phase, or where the weight phase last was when none is.
func (s *Scheduler[C, T]) virtualTime() float64 {
	if m := s.propHeap.min(); m != nil {
		return m.prop
	}
	return s.vtime
}

// tagHead computes the tags of the request at the head of c's queue.
// active says the client was idle until this request: its tags are then
// brought up to now (reservation) and to the virtual time of the
// competing clients (proportional), so time spent idle earns no credit.
func (s *Scheduler[C, T]) tagHead(c *client[C, T], now float64, active bool) {
	e := c.q.front()
	if c.p.Reservation > 0 {
		c.resv = c.lastResv + (e.cost+e.dist.Rho)/c.p.Reservation*1e9
		if active {
			c.resv = max(c.resv, now)
		}
	}
	other := e.dist.Delta
	if s.cfg.Sharing == ShareSpare {
		other -= e.dist.Rho
	}
	c.prop = c.lastProp + (e.cost+other)/c.p.Weight
	if active {
		c.prop = max(c.prop, s.virtualTime())
	}
	if c.p.Limit > 0 && e.dist.Delta > 0 {
		// Service elsewhere used up part of the limit.
		c.tat = max(c.tat, now-s.slack) + e.dist.Delta/c.p.Limit*1e9
	}
}

// place puts a client with a queued request into the heaps: held by its
// limit, or ready.
func (s *Scheduler[C, T]) place(c *client[C, T], now float64) {
	if c.p.Limit > 0 && c.tat > now {
		c.throttledAt = now
		s.limHeap.push(c)
		return
	}
	s.ready(c)
}

func (s *Scheduler[C, T]) ready(c *client[C, T]) {
	if c.p.Reservation > 0 {
		s.resvHeap.push(c)
	}
	s.propHeap.push(c)
}

// unplace takes c out of every heap, counting throttled time up to now.
func (s *Scheduler[C, T]) unplace(c *client[C, T], now float64) {
	if c.limPos >= 0 {
		c.st.throttled += min(now, c.tat) - c.throttledAt
		s.limHeap.remove(c)
	}
	s.resvHeap.remove(c)
	s.propHeap.remove(c)
}

// release moves the clients whose limit has expired into the ready heaps.
// A client held by its limit did not compete in the weight phase, so its
// proportional tag fell behind; it is brought up to the virtual time so
// the hold does not turn into credit (which a raised limit would cash as
// a burst).
func (s *Scheduler[C, T]) release(now float64) {
	for {
		c := s.limHeap.min()
		if c == nil || c.tat > now {
			return
		}
		s.limHeap.remove(c)
		c.st.throttled += c.tat - c.throttledAt
		c.prop = max(c.prop, s.virtualTime())
		s.ready(c)
	}
}

// Dequeue returns the next request to dispatch. When none may go now,
// ok is false and next is when one will (the earliest time a limit lets
// a queued request go), or the zero time when nothing is queued: a
// dispatcher sleeps until next or the next Enqueue, whichever is first.
// Calling Dequeue at or after next always returns a request (unless the
// queue changed).
func (s *Scheduler[C, T]) Dequeue() (req Request[C, T], ok bool, next time.Time) {
	now := s.clock()
	s.release(now)
	// Constraint-based phase: a client owed its reservation goes first.
	if c := s.resvHeap.min(); c != nil && c.resv <= now {
		return s.serve(c, Reservation, now), true, time.Time{}
	}
	// Weight-based phase: the smallest proportional tag among the clients
	// under their limit.
	if c := s.propHeap.min(); c != nil {
		return s.serve(c, Weight, now), true, time.Time{}
	}
	if c := s.limHeap.min(); c != nil {
		// Rounded up so that the clock reading next makes it eligible.
		return req, false, s.at(math.Ceil(c.tat))
	}
	return req, false, time.Time{}
}

func (s *Scheduler[C, T]) serve(c *client[C, T], phase Phase, now float64) Request[C, T] {
	s.unplace(c, now)
	e := c.q.pop()
	s.queued--

	// The paper's adjustments: a tag counts only the service of its own
	// phase (in ShareTotal, the proportional tag counts all service).
	if c.p.Reservation > 0 {
		c.lastResv = c.resv
		if phase == Weight {
			c.lastResv -= e.cost / c.p.Reservation * 1e9
		}
	}
	c.lastProp = c.prop
	if phase == Reservation && s.cfg.Sharing == ShareSpare {
		c.lastProp -= e.cost / c.p.Weight
	}
	if phase == Weight {
		s.vtime = max(s.vtime, c.prop)
	}
	if c.p.Limit > 0 {
		// Lateness up to the tolerance is made up; more is forgotten, so
		// a client that was slowed by others (or idle) does not bank
		// credit to burst above its limit later.
		c.tat = max(c.tat, now-s.slack) + e.cost/c.p.Limit*1e9
	}

	st := &c.st
	st.roll(now, s.window)
	st.requests++
	st.cost += e.cost
	st.winCost += e.cost
	if phase == Reservation {
		st.resvRequests++
		st.resvCost += e.cost
	} else {
		st.weightRequests++
		st.weightCost += e.cost
	}
	wait := max(now-e.at, 0)
	st.hist.record(uint64(wait))

	if c.q.len() > 0 {
		s.tagHead(c, now, false)
		s.place(c, now)
	}
	return Request[C, T]{Client: c.id, Payload: e.payload, Size: e.size, Cost: e.cost, Phase: phase, Waited: time.Duration(wait)}
}

// Len returns the number of requests queued over all clients.
func (s *Scheduler[C, T]) Len() int { return s.queued }

// Clients returns the number of clients.
func (s *Scheduler[C, T]) Clients() int { return len(s.clients) }

// Params returns a client's parameters.
func (s *Scheduler[C, T]) Params(id C) (Params, error) {
	c, ok := s.clients[id]
	if !ok {
		return Params{}, fmt.Errorf("client %v: %w", id, ErrUnknownClient)
	}
	return c.p, nil
}

// Stats returns a snapshot of a client's counters.
func (s *Scheduler[C, T]) Stats(id C) (Stats, error) {
	c, ok := s.clients[id]
	if !ok {
		return Stats{}, fmt.Errorf("client %v: %w", id, ErrUnknownClient)
	}
	now := s.clock()
	st := &c.st
	st.roll(now, s.window)
	throttled := st.throttled
	if c.limPos >= 0 {
		throttled += min(now, c.tat) - c.throttledAt
	}
	out := Stats{
		Params:              c.p,
		Queued:              c.q.len(),
		Requests:            st.requests,
		ReservationRequests: st.resvRequests,
		WeightRequests:      st.weightRequests,
		Cost:                st.cost,
		ReservationCost:     st.resvCost,
		WeightCost:          st.weightCost,
		Rejected:            st.rejected,
		Since:               s.at(st.since),
		Rate:                st.lastRate,
		Throttled:           time.Duration(throttled),
		Latency:             st.hist.summary(),
	}
	if d := now - st.since; d > 0 {
		out.AvgRate = st.cost / (d / 1e9)
	}
	return out, nil
}
