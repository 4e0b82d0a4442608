// Package multipath is one logical disk over several paths to the same
// storage (two NBD connections to one export, two servers of one shared
// raw image): a request goes to one path, and a path that fails or does
// not answer within the timeout is taken out and the request re-issued on
// another. A failed path is probed with a small read and taken back when
// it answers.
//
// # The late-write hazard and how it is avoided
//
// A write W1 that times out on path A is re-issued on path B. A's copy of
// W1 may still be executed by the storage later, after B completed W1 and
// even after a later write W2 to the same range: the storage would then
// hold W1 over W2, a silent reordering. Three rules prevent it as far as
// this layer can see:
//
//  1. Fencing: a path that timed out gets no further request until every
//     request it had in flight has returned and a probe read succeeded, so
//     a request issued to it after its return is ordered after its late
//     ones.
//  2. Overlay: a write whose attempt is still outstanding on a fenced path
//     leaves a zombie: its range, with the range's current contents kept
//     in memory (first the re-issued write's data, then every later write
//     to the range on top). Reads of the range are patched from it, so a
//     reader never sees the late W1 over W2.
//  3. Replay: when the late attempt returns (answered or failed), its
//     landing is over; the zombie's contents are then written again on a
//     healthy path, with every other request held back for that moment,
//     and the zombie is dropped. The storage holds W2 again.
//
// What this layer cannot see is a request the storage executes after the
// path's call returned an error (a server that read the request off a
// connection the client already gave up on). Such a server must be
// fenced by the storage side (killed, or its export revoked) before the
// path is used again; docs/disks.md says so.
//
// Flush goes to every path that took writes since the last flush; a path
// whose flush fails is taken out and the flush done on a healthy path,
// which, as the paths reach one storage, makes the same data durable.
package multipath

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/filter"
)

// MaxPaths bounds a multipath's paths.
const MaxPaths = 8

// DefaultMaxInflight is the requests one path may have outstanding; it
// bounds the goroutines a stalled path holds.
const DefaultMaxInflight = 64

// DefaultProbeInterval is how often failed paths are probed.
const DefaultProbeInterval = 5 * time.Second

// ErrAllPathsFailed is returned when no path can serve a request. It
// matches syscall.EIO, the block layer's I/O error.
var ErrAllPathsFailed = fmt.Errorf("multipath: every path has failed: %w", syscall.EIO)

// Policy chooses how requests spread over healthy paths.
type Policy int

const (
	// Failover sends everything to one active path (the first healthy
	// one); the others stand by.
	Failover Policy = iota
	// RoundRobin spreads requests over every healthy path in turn.
	RoundRobin
)

func (p Policy) String() string {
	if p == RoundRobin {
		return "round-robin"
	}
	return "failover"
}

// ParsePolicy reads "failover" or "round-robin" ("" is failover).
func ParsePolicy(s string) (Policy, error) {
	switch s {
	case "", "failover":
		return Failover, nil
	case "round-robin":
		return RoundRobin, nil
	}
	return 0, fmt.Errorf("policy %q: want \"failover\" or \"round-robin\"", s)
}

// Options configure a multipath.
type Options struct {
	Policy Policy
	// Timeout is how long a request may wait for a path's answer before
	// the path counts as failed and the request is re-issued elsewhere
	// (0: no timeout, a path fails only by returning an error).
	Timeout time.Duration
	// ProbeInterval is how often failed paths are probed (0: the default;
	// negative: never automatically, only by Probe).
	ProbeInterval time.Duration
	// MaxInflight bounds one path's outstanding requests (0: default).
	MaxInflight int
	// Events receives path-failed (path, op, error), path-returned
	// (path) and late-answer (path: a timed-out request returned, its
	// answer discarded). Nil: nothing.
	Events func(event string, kv ...string)
}

// State is a path's state.
type State int

const (
	Active State = iota
	Standby
	Failed
)

func (s State) String() string {
	switch s {
	case Active:
		return "active"
	case Standby:
		return "standby"
	}
	return "failed"
}

// PathStatus is one path's part of Status.
type PathStatus struct {
	Path     int    `json:"path"`
	State    string `json:"state"`
	Requests uint64 `json:"requests"`
	Failures uint64 `json:"failures"`
	Reissued uint64 `json:"reissued"`
	InFlight int    `json:"in_flight"`
	Error    string `json:"error,omitempty"`
}

// Status is what a multipath reports.
type Status struct {
	Policy  string       `json:"policy"`
	Paths   []PathStatus `json:"paths"`
	Zombies int          `json:"zombies"` // writes still outstanding on fenced paths
}

type path struct {
	idx int
	be  block.Backend
	sem chan struct{} // one token per outstanding request (bounded goroutines)

	requests, failures, reissued atomic.Uint64

	// Guarded by Multipath.mu.
	failed  bool
	probing bool
	wrote   bool // took a write since the last flush began
	err     string
}

// zombie is a write whose attempt on a fenced path has not returned.
type zombie struct {
	off  int64
	data []byte // the range's current contents
	done bool   // the late attempt returned; replay pending
}

// Multipath is the interposer. Use New, and Of to reach it behind its view.
type Multipath struct {
	paths []*path
	size  int64
	opts  Options

	// order: reads and writes hold it shared; a replay holds it
	// exclusively, so nothing lands on a zombie's range while it is
	// rewritten.
	order sync.RWMutex

	mu      sync.Mutex
	zombies []*zombie
	rr      int

	flushMu sync.Mutex
	closed  atomic.Bool
	stop    chan struct{}
	probeW  sync.WaitGroup
	replayC chan struct{}
}

var _ filter.Interposer = (*Multipath)(nil)

// New returns a multipath over paths, which must be of one size.
func New(paths []block.Backend, o Options) (*Multipath, error) {
	if len(paths) == 0 || len(paths) > MaxPaths {
		return nil, fmt.Errorf("multipath: %d paths: give 1 to %d", len(paths), MaxPaths)
	}
	if o.MaxInflight <= 0 {
		o.MaxInflight = DefaultMaxInflight
	}
	if o.ProbeInterval == 0 {
		o.ProbeInterval = DefaultProbeInterval
	}
	m := &Multipath{size: paths[0].Size(), opts: o, stop: make(chan struct{}), replayC: make(chan struct{}, 1)}
	for i, b := range paths {
		if b.Size() != m.size {
			return nil, fmt.Errorf("multipath: path %d is %d bytes, path 0 is %d: the paths must reach one storage", i, b.Size(), m.size)
		}
		m.paths = append(m.paths, &path{idx: i, be: b, sem: make(chan struct{}, o.MaxInflight)})
	}
	m.probeW.Add(1)
	go m.background()
	return m, nil
}

// NewBackend returns New's multipath as a block.Backend without optional
// capabilities (discard and write zeroes are not offered: their zombie
// could be as large as the disk).
func NewBackend(paths []block.Backend, o Options) (block.Backend, error) {
	m, err := New(paths, o)
	if err != nil {
		return nil, err
	}
	return filter.View(m, filter.Caps{}), nil
}

// Of returns the multipath behind a back-end NewBackend made, or nil.
func Of(b block.Backend) *Multipath {
	m, _ := filter.Unwrap(b).(*Multipath)
	return m
}

func (m *Multipath) emit(ev string, kv ...string) {
	if m.opts.Events != nil {
		m.opts.Events(ev, kv...)
	}
}

// Status reports each path's state and counters.
func (m *Multipath) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := Status{Policy: m.opts.Policy.String(), Zombies: len(m.zombies)}
	active := false
	for _, p := range m.paths {
		ps := PathStatus{Path: p.idx, Requests: p.requests.Load(), Failures: p.failures.Load(),
			Reissued: p.reissued.Load(), InFlight: len(p.sem), Error: p.err}
		switch {
		case p.failed:
			ps.State = Failed.String()
		case m.opts.Policy == RoundRobin || !active:
			ps.State = Active.String()
			active = true
		default:
			ps.State = Standby.String()
		}
		st.Paths = append(st.Paths, ps)
	}
	return st
}

// pick returns a healthy path not in tried, or nil.
func (m *Multipath) pick(tried uint32) *path {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := len(m.paths)
	start := 0
	if m.opts.Policy == RoundRobin {
		start = m.rr
		m.rr = (m.rr + 1) % n
	}
	for k := 0; k < n; k++ {
		p := m.paths[(start+k)%n]
		if !p.failed && tried&(1<<p.idx) == 0 {
			return p
		}
	}
	return nil
}

// fail fences p.
func (m *Multipath) fail(p *path, op string, err error) {
	m.mu.Lock()
	was := p.failed
	p.failed = true
	p.err = err.Error()
	m.mu.Unlock()
	p.failures.Add(1)
	if !was {
		m.emit("path-failed", "path", strconv.Itoa(p.idx), "op", op, "error", err.Error())
	}
}

// requestError says whether err is the request's fault (the same on any
// path) rather than the path's.
func requestError(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, block.ErrOutOfRange) ||
		errors.Is(err, block.ErrReadOnly) || errors.Is(err, block.ErrClosed) ||
		errors.Is(err, block.ErrDrained)
}

var errTimeout = errors.New("no answer within the timeout")

type result struct {
	n   int
	err error
}

// call is one attempt's meeting point between the waiting request and the
// goroutine running it.
type call struct {
	mu        sync.Mutex
	returned  bool
	abandoned bool
	late      func()
	res       result
	done      chan struct{}
}

// attempt runs op on p, bounded by the timeout. When the answer does not
// come in time, abandon is called (under the attempt's lock, so before
// the attempt can return) and the function it returns runs once the late
// answer does come; the answer itself is discarded.
func (m *Multipath) attempt(p *path, op func(block.Backend) (int, error), abandon func() func()) (int, error) {
	p.requests.Add(1)
	if m.opts.Timeout <= 0 {
		p.sem <- struct{}{}
		n, err := op(p.be)
		<-p.sem
		return n, err
	}
	t := time.NewTimer(m.opts.Timeout)
	defer t.Stop()
	select {
	case p.sem <- struct{}{}:
	case <-t.C:
		// Every slot is held by requests that do not return.
		return 0, errTimeout
	}
	c := &call{done: make(chan struct{})}
	go func() {
		n, err := op(p.be)
		<-p.sem
		c.mu.Lock()
		c.returned, c.res = true, result{n, err}
		ab, late := c.abandoned, c.late
		c.mu.Unlock()
		close(c.done)
		if ab {
			if late != nil {
				late()
			}
			m.emit("late-answer", "path", strconv.Itoa(p.idx))
		}
	}()
	select {
	case <-c.done:
		return c.res.n, c.res.err
	case <-t.C:
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.returned {
		return c.res.n, c.res.err
	}
	c.abandoned = true
	if abandon != nil {
		c.late = abandon()
	}
	return 0, errTimeout
}

// ReadAt reads from a healthy path, re-issuing on another when one fails.
func (m *Multipath) ReadAt(p []byte, off int64) (int, error) {
	if m.closed.Load() {
		return 0, block.ErrClosed
	}
	if off < 0 {
		return 0, block.ErrOutOfRange
	}
	if off >= m.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	var eof error
	if int64(len(p)) > m.size-off {
		p, eof = p[:m.size-off], io.EOF
	}
	m.order.RLock()
	defer m.order.RUnlock()
	buf := p
	if m.opts.Timeout > 0 {
		// A late answer must not write into the caller's buffer after
		// the caller got it back.
		buf = make([]byte, len(p))
	}
	var tried uint32
	for {
		pa := m.pick(tried)
		if pa == nil {
			return 0, ErrAllPathsFailed
		}
		if tried != 0 {
			pa.reissued.Add(1)
		}
		abandoned, into := false, buf
		n, err := m.attempt(pa, func(b block.Backend) (int, error) { return b.ReadAt(into, off) },
			func() func() { abandoned = true; return nil })
		if abandoned {
			// The late attempt still owns buf.
			buf = make([]byte, len(p))
		}
		if err == nil && n == len(buf) {
			if m.opts.Timeout > 0 {
				copy(p, buf)
			}
			m.patch(p, off)
			return len(p), eof
		}
		if err != nil && requestError(err) {
			return n, err
		}
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		m.fail(pa, "read", err)
		tried |= 1 << pa.idx
	}
}

// patch overlays the zombies' contents on p read at off.
func (m *Multipath) patch(p []byte, off int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, z := range m.zombies {
		overlap(z, p, off, func(zb, pb []byte) { copy(pb, zb) })
	}
}

// overlap calls f with the parts of z.data and p (at off) that cover the
// same bytes, if any.
func overlap(z *zombie, p []byte, off int64, f func(zb, pb []byte)) {
	lo, hi := max(z.off, off), min(z.off+int64(len(z.data)), off+int64(len(p)))
	if lo >= hi {
		return
	}
	f(z.data[lo-z.off:hi-z.off], p[lo-off:hi-off])
}

// WriteAt writes on a healthy path, re-issuing on another when one fails.
func (m *Multipath) WriteAt(p []byte, off int64) (int, error) {
	if m.closed.Load() {
		return 0, block.ErrClosed
	}
	if err := block.CheckRange(off, int64(len(p)), m.size); err != nil {
		return 0, err
	}
	m.order.RLock()
	defer m.order.RUnlock()
	return m.write(p, off)
}

// write is WriteAt's body; the caller holds order (shared or exclusive).
func (m *Multipath) write(p []byte, off int64) (int, error) {
	data := p
	if m.opts.Timeout > 0 {
		// A late attempt reads its data after the caller got its buffer
		// back and may have reused it.
		data = append([]byte(nil), p...)
	}
	var tried uint32
	for {
		pa := m.pick(tried)
		if pa == nil {
			return 0, ErrAllPathsFailed
		}
		if tried != 0 {
			pa.reissued.Add(1)
		}
		n, err := m.attempt(pa, func(b block.Backend) (int, error) { return b.WriteAt(data, off) },
			func() func() {
				z := &zombie{off: off, data: append([]byte(nil), data...)}
				m.mu.Lock()
				m.zombies = append(m.zombies, z)
				m.mu.Unlock()
				return func() { m.landed(z) }
			})
		if err == nil && n == len(data) {
			m.mu.Lock()
			pa.wrote = true
			for _, z := range m.zombies {
				overlap(z, data, off, func(zb, pb []byte) { copy(zb, pb) })
			}
			m.mu.Unlock()
			return len(p), nil
		}
		if err != nil && requestError(err) {
			return n, err
		}
		if err == nil {
			err = io.ErrShortWrite
		}
		m.fail(pa, "write", err)
		tried |= 1 << pa.idx
	}
}

// landed is called when a zombie's late attempt returns: its range is to
// be written again.
func (m *Multipath) landed(z *zombie) {
	m.mu.Lock()
	z.done = true
	m.mu.Unlock()
	select {
	case m.replayC <- struct{}{}:
	default:
	}
}

// replay rewrites the ranges of zombies whose late attempt has returned,
// with every other read and write held back, and drops them.
func (m *Multipath) replay() error {
	for {
		m.mu.Lock()
		var z *zombie
		for _, c := range m.zombies {
			if c.done {
				z = c
				break
			}
		}
		m.mu.Unlock()
		if z == nil {
			return nil
		}
		m.order.Lock()
		m.mu.Lock()
		data := append([]byte(nil), z.data...)
		m.mu.Unlock()
		_, err := m.write(data, z.off)
		if err == nil {
			m.mu.Lock()
			for i, c := range m.zombies {
				if c == z {
					m.zombies = append(m.zombies[:i], m.zombies[i+1:]...)
					break
				}
			}
			m.mu.Unlock()
		}
		m.order.Unlock()
		if err != nil {
			// Kept: the next probe round tries again.
			return err
		}
	}
}

// Flush flushes every path that took writes since the last flush; a path
// that fails is taken out and the flush done on a healthy one instead.
func (m *Multipath) Flush() error {
	if m.closed.Load() {
		return block.ErrClosed
	}
	return m.flush()
}

func (m *Multipath) flush() error {
	m.flushMu.Lock()
	defer m.flushMu.Unlock()
	var todo []*path
	m.mu.Lock()
	for _, p := range m.paths {
		if p.wrote {
			p.wrote = false
			todo = append(todo, p)
		}
	}
	m.mu.Unlock()
	flush := func(b block.Backend) (int, error) { return 0, b.Flush() }
	var tried uint32
	fallback := false
	for _, p := range todo {
		m.mu.Lock()
		failed := p.failed
		m.mu.Unlock()
		if failed {
			fallback = true
			continue
		}
		if _, err := m.attempt(p, flush, nil); err != nil {
			m.fail(p, "flush", err)
			tried |= 1 << p.idx
			fallback = true
		}
	}
	for fallback {
		p := m.pick(tried)
		if p == nil {
			return ErrAllPathsFailed
		}
		p.reissued.Add(1)
		_, err := m.attempt(p, flush, nil)
		if err == nil {
			return nil
		}
		m.fail(p, "flush", err)
		tried |= 1 << p.idx
	}
	return nil
}

// Probe reads a little from every failed path whose requests have all
// returned and takes back those that answer; then it replays zombies
// whose late attempts have returned. It returns the paths taken back.
// The background prober calls it every ProbeInterval.
func (m *Multipath) Probe() int {
	back := 0
	for _, p := range m.paths {
		m.mu.Lock()
		ok := p.failed && !p.probing && len(p.sem) == 0
		if ok {
			p.probing = true
		}
		m.mu.Unlock()
		if !ok {
			continue
		}
		buf := make([]byte, min(512, m.size))
		done := func() {
			m.mu.Lock()
			p.probing = false
			m.mu.Unlock()
		}
		_, err := m.attempt(p, func(b block.Backend) (int, error) { return b.ReadAt(buf, 0) },
			func() func() { return done })
		if err == errTimeout {
			continue // probing stays set until the probe returns
		}
		m.mu.Lock()
		p.probing = false
		if err == nil && len(p.sem) == 0 {
			p.failed, p.err = false, ""
			back++
		}
		m.mu.Unlock()
		if err == nil {
			m.emit("path-returned", "path", strconv.Itoa(p.idx))
		}
	}
	m.replay()
	return back
}

func (m *Multipath) background() {
	defer m.probeW.Done()
	var tick <-chan time.Time
	if m.opts.ProbeInterval > 0 {
		t := time.NewTicker(m.opts.ProbeInterval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-m.stop:
			return
		case <-tick:
			m.Probe()
		case <-m.replayC:
			m.replay()
		}
	}
}

// ReadvAt reads into bufs as one request.
func (m *Multipath) ReadvAt(bufs [][]byte, off int64) (int, error) {
	flat := make([]byte, filter.Len(bufs))
	n, err := m.ReadAt(flat, off)
	rest := flat[:n]
	for _, b := range bufs {
		c := copy(b, rest)
		rest = rest[c:]
	}
	return n, err
}

// WritevAt writes bufs as one request.
func (m *Multipath) WritevAt(bufs [][]byte, off int64) (int, error) {
	flat := make([]byte, 0, filter.Len(bufs))
	for _, b := range bufs {
		flat = append(flat, b...)
	}
	return m.WriteAt(flat, off)
}

func (m *Multipath) Size() int64 { return m.size }

// ReadOnly reports whether any path is read-only.
func (m *Multipath) ReadOnly() bool {
	for _, p := range m.paths {
		if r, ok := p.be.(block.ReadOnlyReporter); ok && r.ReadOnly() {
			return true
		}
	}
	return false
}

// Discard, WriteZeroes and Resize are not offered (NewBackend's view hides
// them).
func (m *Multipath) Discard(off, n int64) error { return errors.ErrUnsupported }

func (m *Multipath) WriteZeroes(off, n int64, unmap bool) error { return errors.ErrUnsupported }

func (m *Multipath) Resize(size int64) error { return errors.ErrUnsupported }

// Drain forwards to every path that can hold requests back.
func (m *Multipath) Drain(on bool) {
	for _, p := range m.paths {
		if d, ok := p.be.(block.Drainer); ok {
			d.Drain(on)
		}
	}
}

// ErrLateWrites is returned by Close when a write abandoned on a failed
// path had still not returned when Close gave up waiting: it may still
// land over newer data.
var ErrLateWrites = fmt.Errorf("multipath: a timed-out write was still outstanding at close and may land late: %w", syscall.EIO)

// Close closes the failed paths first, which ends what they still hold,
// waits (up to the timeout) for the writes abandoned on them to return,
// writes their ranges again, flushes, and closes the other paths.
func (m *Multipath) Close() error {
	if m.closed.Swap(true) {
		return block.ErrClosed
	}
	close(m.stop)
	m.probeW.Wait()
	var err error
	closed := make([]bool, len(m.paths))
	m.mu.Lock()
	for _, p := range m.paths {
		closed[p.idx] = p.failed
	}
	m.mu.Unlock()
	for i, p := range m.paths {
		if closed[i] {
			p.be.Close()
		}
	}
	if m.pending() {
		t := time.NewTimer(max(m.opts.Timeout, time.Second))
	wait:
		for m.pending() {
			select {
			case <-m.replayC:
			case <-t.C:
				err = ErrLateWrites
				break wait
			}
		}
		t.Stop()
	}
	if rerr := m.replay(); rerr != nil && err == nil {
		err = rerr
	}
	if ferr := m.flush(); ferr != nil && err == nil {
		err = ferr
	}
	for i, p := range m.paths {
		if !closed[i] {
			if cerr := p.be.Close(); cerr != nil && err == nil {
				err = cerr
			}
		}
	}
	return err
}

// pending says whether a zombie's late attempt has not returned.
func (m *Multipath) pending() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, z := range m.zombies {
		if !z.done {
			return true
		}
	}
	return false
}
