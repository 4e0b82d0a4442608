// Package mirror is a replicating interposer (RAID 1): every write goes to
// all healthy children and completes when each has it, reads come from one
// healthy child (the least loaded), and a child that fails is dropped with
// a loud event while the disk stays up. A rebuild brings a new or returning
// child into sync while the guest keeps writing, and a persistent
// dirty-region log (log.go) limits the resync after a crash or a child's
// return to the regions that may differ. Adding a child, letting it sync
// and removing the old one is live storage migration.
//
// Children live in slots (their position in the graph, or the slot a
// run-time Attach gave them). A slot is absent, in sync (served reads and
// writes), syncing (gets every write, being copied to; never read) or
// failed (out: gets nothing until it is attached again or removed).
package mirror

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/filter"
)

// State is a slot's state.
type State int32

const (
	Absent  State = iota // no child in this slot
	InSync               // a full copy: reads and writes
	Syncing              // gets writes, being rebuilt; not read
	Failed               // dropped after an error, or stale: gets nothing
)

func (s State) String() string {
	switch s {
	case InSync:
		return "in-sync"
	case Syncing:
		return "syncing"
	case Failed:
		return "failed"
	}
	return "absent"
}

// ErrNoChild is returned when no child can serve a request.
var ErrNoChild = errors.New("mirror: no child in sync")

// Options configure a mirror.
type Options struct {
	// Log is the dirty-region log file ("": none, so every open resyncs
	// all but the first child in full unless AssumeClean). Created when
	// missing.
	Log string
	// Region is the bytes one log bit stands for and a rebuild copies at
	// a time (a power of two; 0: the log's, or DefaultRegion).
	Region int64
	// AssumeClean takes the children as identical when there is no log
	// saying otherwise (new disks, or copies made while the VM was off).
	AssumeClean bool
	// ReadOnly opens the log (if any) read-only and never resyncs; reads
	// come from the first child in sync only.
	ReadOnly bool
	// Primary makes slot 0 the disk of record and the others copies it
	// feeds: reads come from slot 0 alone, and slot 0 is never dropped
	// (a request it fails, fails, as on a lone disk), so the mirror can
	// always be taken away leaving slot 0 with everything the guest was
	// told was written. A live migration's disk copy sets it
	// (vmm/diskcopy.go): the source must be able to go on alone with its
	// image whatever happened to the copy.
	Primary bool
	// Events receives what happens to the children: child-failed,
	// child-added, child-removed, resync-started, resync-progress (each
	// tenth), resync-done, resync-failed, log-failed (key, value pairs follow). Nil: nothing.
	Events func(event string, kv ...string)
}

type child struct {
	be      block.Backend
	state   atomic.Int32
	loading atomic.Int64 // reads in flight
	err     string       // why it failed; guarded by Mirror.mu
}

func (c *child) st() State { return State(c.state.Load()) }

// Mirror is the interposer. Use New, and Of to reach it behind its view.
type Mirror struct {
	size, region, nreg int64
	opts               Options
	caps               filter.Caps

	// slots is replaced whole (copy on write) under mu and cfg.
	slots atomic.Pointer[[]*child]
	// cfg: requests hold it shared; changing who gets writes holds it
	// exclusively, so a child starts (or stops) getting writes at a point
	// where none is in flight.
	cfg   sync.RWMutex
	locks regionLocks

	mu       sync.Mutex // guards the fields below and the log's in-memory state
	st       logState   // region, size, slot states, W, D
	inflight map[int64]int32
	touched  map[int64]struct{} // regions written (started or completed) since the last flush began
	gen      uint64             // bumped when the log's image changes
	dirty    map[int64]struct{}
	logErr   error
	resync   Resync
	progress *Progress

	logMu     sync.Mutex // serialises writes of the log file
	log       *os.File
	committed uint64

	flushMu  sync.Mutex
	closed   atomic.Bool
	stop     chan struct{}
	rebuildW sync.WaitGroup
	running  bool // a rebuild goroutine runs; guarded by mu
}

var _ filter.Interposer = (*Mirror)(nil)

// Resync reports the last resync (at open or by a rebuild).
type Resync struct {
	Slots    []int  `json:"slots"`
	Reason   string `json:"reason"` // "crash", "returning", "new", "log-missing"
	Bytes    int64  `json:"bytes"`  // bytes to copy
	Copied   int64  `json:"copied"`
	Done     bool   `json:"done"`
	Error    string `json:"error,omitempty"`
	Duration string `json:"duration,omitempty"`
}

// Progress is a running rebuild's.
type Progress struct {
	Slots  []int `json:"slots"`
	Total  int64 `json:"total_bytes"`
	Copied int64 `json:"copied_bytes"`
}

// New returns a mirror over children (slot i is children[i]); it owns them
// on success. A child may be larger than the first; the disk is the first
// child's size. With a log that names stale children, or without a log
// and AssumeClean unset, New starts a rebuild in the background; regions a
// crash left in doubt among in-sync children are copied before it returns.
func New(children []block.Backend, o Options) (*Mirror, error) {
	if len(children) == 0 || len(children) > MaxSlots {
		return nil, fmt.Errorf("mirror: %d children: give 1 to %d", len(children), MaxSlots)
	}
	size := children[0].Size()
	caps := filter.CapsOf(children[0])
	for i, c := range children[1:] {
		if c.Size() < size {
			return nil, fmt.Errorf("mirror: child %d is %d bytes, smaller than child 0 (%d bytes)", i+1, c.Size(), size)
		}
		caps = caps.And(filter.CapsOf(c))
	}
	// Discard is done as WriteZeroes, so that every child reads alike
	// afterwards; Resize is not offered.
	caps = filter.Caps{Discard: caps.WriteZeroes, WriteZeroes: caps.WriteZeroes}
	m := &Mirror{size: size, opts: o, caps: caps, inflight: map[int64]int32{}, dirty: map[int64]struct{}{}, stop: make(chan struct{})}

	var old *logState
	if o.Log != "" {
		f, s, err := openLogFile(o.Log, o.ReadOnly)
		if err != nil {
			return nil, fmt.Errorf("mirror: log %w", err)
		}
		m.log, old = f, s
	}
	fail := func(err error) (*Mirror, error) {
		if m.log != nil {
			m.log.Close()
		}
		return nil, err
	}
	region := o.Region
	if old != nil {
		if region != 0 && region != old.region {
			return fail(fmt.Errorf("mirror: the log %s was written with regions of %d bytes, the options say %d: give %d (or delete the log, which forces a full resync)", o.Log, old.region, region, old.region))
		}
		if old.size != size {
			return fail(fmt.Errorf("mirror: the log %s is for a disk of %d bytes, this one is %d: give the right log (or delete it, which forces a full resync)", o.Log, old.size, size))
		}
		region = old.region
	}
	if region == 0 {
		region = DefaultRegion
	}
	if err := checkGeometry(size, region); err != nil {
		return fail(fmt.Errorf("mirror: %w", err))
	}
	m.region, m.nreg = region, regionsOf(size, region)
	m.st = logState{region: region, size: size, w: newBitmap(m.nreg), d: newBitmap(m.nreg)}
	m.touched = map[int64]struct{}{}

	// Each child's state: from the log, or new.
	kids := make([]*child, len(children))
	reason := "crash"
	for i, be := range children {
		c := &child{be: be}
		kids[i] = c
		switch {
		case old != nil && i < len(old.slots) && old.slots[i] == slotInSync:
			c.state.Store(int32(InSync))
		case old != nil && i < len(old.slots) && old.slots[i] == slotStale:
			c.state.Store(int32(Failed))
			c.err = "stale in the log"
		case old == nil && (i == 0 || o.AssumeClean):
			c.state.Store(int32(InSync))
		default:
			c.state.Store(int32(Failed))
			c.err = "new"
		}
	}
	if old != nil {
		copy(m.st.w, old.w)
		copy(m.st.d, old.d)
	} else if !o.AssumeClean && len(children) > 1 {
		reason = "log-missing"
	}
	inSync := 0
	for _, c := range kids {
		if c.st() == InSync {
			inSync++
		}
	}
	if inSync == 0 {
		return fail(fmt.Errorf("mirror: the log %s says no child of this mirror is in sync: give the children it was written for (or delete it and name the good copy first)", o.Log))
	}
	// Slots past the log's children, or marked absent there, are new: they
	// need everything.
	for i, c := range kids {
		if c.st() == Failed && (old == nil || i >= len(old.slots) || old.slots[i] == slotAbsent) {
			for r := range m.nreg {
				m.st.d.set(r)
			}
			if old != nil {
				reason = "new"
			}
		}
	}
	m.slots.Store(&kids)
	m.syncSlotsLocked()
	if !m.anyOutLocked() {
		// Stale slots the graph no longer names: nobody needs D.
		m.clearD()
	}

	if o.ReadOnly {
		return m, nil
	}
	// Children that are out need what the in-sync ones wrote in doubt too.
	if m.anyOutLocked() {
		m.orInto(m.st.d, m.st.w)
	}
	if err := m.writeWholeLog(); err != nil {
		return fail(fmt.Errorf("mirror: log %s: %w", o.Log, err))
	}
	if err := m.resyncInSync(); err != nil {
		return fail(err)
	}
	// Stale children start syncing; the rebuild runs in the background.
	stale := false
	for _, c := range kids {
		if c.st() == Failed {
			c.state.Store(int32(Syncing))
			stale = true
		}
	}
	if stale {
		m.mu.Lock()
		m.startRebuildLocked(reason)
		m.mu.Unlock()
	}
	return m, nil
}

// NewBackend returns New's mirror behind a view with the capabilities it
// can honour.
func NewBackend(children []block.Backend, o Options) (block.Backend, error) {
	m, err := New(children, o)
	if err != nil {
		return nil, err
	}
	return filter.View(m, m.caps), nil
}

// Of returns the mirror behind a back-end NewBackend made, or nil.
func Of(b block.Backend) *Mirror {
	m, _ := filter.Unwrap(b).(*Mirror)
	return m
}

func (m *Mirror) emit(ev string, kv ...string) {
	if m.opts.Events != nil {
		m.opts.Events(ev, kv...)
	}
}

// syncSlotsLocked copies the slots' states into the log's header.
func (m *Mirror) syncSlotsLocked() {
	kids := *m.slots.Load()
	m.st.slots = make([]uint8, len(kids))
	for i, c := range kids {
		switch c.st() {
		case InSync:
			m.st.slots[i] = slotInSync
		case Syncing, Failed:
			m.st.slots[i] = slotStale
		}
	}
	m.markPage(0)
}

func (m *Mirror) markPage(p int64) {
	m.dirty[p] = struct{}{}
	m.gen++
}

// anyOutLocked: some slot is failed or syncing.
func (m *Mirror) anyOutLocked() bool {
	for _, c := range *m.slots.Load() {
		if s := c.st(); s == Failed || s == Syncing {
			return true
		}
	}
	return false
}

// failedLocked: some slot gets no writes although it will need them.
func (m *Mirror) failedLocked() bool {
	for _, c := range *m.slots.Load() {
		if c.st() == Failed {
			return true
		}
	}
	return false
}

// orInto sets in dst (D) every bit of src, marking D's pages.
func (m *Mirror) orInto(dst, src bitmap) {
	wp := bitmapPages(m.nreg)
	src.each(func(i int64) {
		if dst.set(i) {
			m.markPage(dPage(i, wp))
		}
	})
}

// writeWholeLog writes every page and syncs (at open).
func (m *Mirror) writeWholeLog() error {
	if m.log == nil {
		return nil
	}
	m.mu.Lock()
	data := m.st.encode()
	m.dirty = map[int64]struct{}{}
	g := m.gen
	m.mu.Unlock()
	m.logMu.Lock()
	defer m.logMu.Unlock()
	if err := m.log.Truncate(int64(len(data))); err != nil {
		return err
	}
	if _, err := m.log.WriteAt(data, 0); err != nil {
		return err
	}
	if err := datasync(m.log); err != nil {
		return err
	}
	m.committed = g
	return nil
}

// commit makes the log's image as of generation g durable, with every
// change since (group commit: one sync serves all who wait).
func (m *Mirror) commit(g uint64) error {
	if m.log == nil {
		return nil
	}
	m.logMu.Lock()
	defer m.logMu.Unlock()
	m.mu.Lock()
	if err := m.logErr; err != nil {
		m.mu.Unlock()
		return err
	}
	if m.committed >= g {
		m.mu.Unlock()
		return nil
	}
	pages := make(map[int64][]byte, len(m.dirty))
	for p := range m.dirty {
		pages[p] = m.st.encodePage(p)
	}
	m.dirty = map[int64]struct{}{}
	cur := m.gen
	m.mu.Unlock()
	var err error
	for p, b := range pages {
		if _, err = m.log.WriteAt(b, p*pageSize); err != nil {
			break
		}
	}
	if err == nil {
		err = datasync(m.log)
	}
	if err != nil {
		err = fmt.Errorf("mirror: writing the dirty-region log %s: %w", m.opts.Log, err)
		m.mu.Lock()
		m.logErr = err
		m.mu.Unlock()
		m.emit("log-failed", "error", err.Error())
		return err
	}
	m.committed = cur
	return nil
}

func (m *Mirror) regions(off, n int64) (first, last int64) {
	if n == 0 {
		return off / m.region, off / m.region
	}
	return off / m.region, (off + n - 1) / m.region
}

// beginWrite records a write to regions first..last before it is issued:
// W always, D while a child is out, durable before it returns.
func (m *Mirror) beginWrite(first, last int64) error {
	m.mu.Lock()
	if m.logErr != nil {
		err := m.logErr
		m.mu.Unlock()
		return err
	}
	failed := m.failedLocked()
	wp := bitmapPages(m.nreg)
	changed := false
	for r := first; r <= last; r++ {
		m.inflight[r]++
		m.touched[r] = struct{}{}
		if m.st.w.set(r) {
			m.markPage(wPage(r))
			changed = true
		}
		if failed && m.st.d.set(r) {
			m.markPage(dPage(r, wp))
			changed = true
		}
	}
	g := m.gen
	m.mu.Unlock()
	if changed {
		if err := m.commit(g); err != nil {
			m.endWrite(first, last)
			return err
		}
	}
	return nil
}

func (m *Mirror) endWrite(first, last int64) {
	m.mu.Lock()
	for r := first; r <= last; r++ {
		m.touched[r] = struct{}{}
		if m.inflight[r]--; m.inflight[r] == 0 {
			delete(m.inflight, r)
		}
	}
	m.mu.Unlock()
}

// receivers returns the slots that get writes, and whether one of them is
// syncing (then writes take the region locks).
func (m *Mirror) receivers() (kids []*child, states []State, syncing bool) {
	for _, c := range *m.slots.Load() {
		if s := c.st(); s == InSync || s == Syncing {
			kids = append(kids, c)
			states = append(states, s)
			syncing = syncing || s == Syncing
		}
	}
	return
}

// fanout runs f on every child concurrently (the first inline).
func fanout(kids []*child, f func(c *child) error) []error {
	errs := make([]error, len(kids))
	if len(kids) == 1 {
		errs[0] = f(kids[0])
		return errs
	}
	var wg sync.WaitGroup
	for i := 1; i < len(kids); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f(kids[i])
		}()
	}
	errs[0] = f(kids[0])
	wg.Wait()
	return errs
}

// write runs a write-like request on every child that gets writes.
func (m *Mirror) write(op string, off, n int64, f func(b block.Backend) error) error {
	if m.closed.Load() {
		return block.ErrClosed
	}
	if err := block.CheckRange(off, n, m.size); err != nil {
		return err
	}
	if m.opts.ReadOnly {
		return block.ErrReadOnly
	}
	if n == 0 {
		return nil
	}
	m.cfg.RLock()
	defer m.cfg.RUnlock()
	kids, states, syncing := m.receivers()
	first, last := m.regions(off, n)
	if syncing {
		m.locks.rlock(first, last)
		defer m.locks.runlock(first, last)
	}
	if err := m.beginWrite(first, last); err != nil {
		return err
	}
	errs := fanout(kids, func(c *child) error { return f(c.be) })
	defer m.endWrite(first, last)
	return m.settle(op, kids, states, errs)
}

// settle drops the children that failed a request and says whether it
// succeeded: it did when a child that is still in sync has it. If every
// in-sync child failed, none is dropped (the disk fails the request, as a
// single disk would).
func (m *Mirror) settle(op string, kids []*child, states []State, errs []error) error {
	if m.opts.Primary {
		if err := m.primaryErr(kids, errs); err != nil {
			// The others are dropped if they failed too; those that
			// succeeded hold what slot 0 may lack, which is allowed of
			// a failed write.
			for i, e := range errs {
				if e != nil && kids[i] != m.primary() {
					m.drop(kids[i], op, e)
				}
			}
			return err
		}
	}
	var firstErr error
	okInSync := false
	for i, err := range errs {
		if err == nil && states[i] == InSync {
			okInSync = true
		}
		if err != nil && firstErr == nil && states[i] == InSync {
			firstErr = err
		}
	}
	if !okInSync {
		for i, err := range errs {
			if err != nil && states[i] == Syncing {
				m.drop(kids[i], op, err)
			}
		}
		if firstErr == nil {
			firstErr = ErrNoChild
		}
		return firstErr
	}
	var logErr error
	for i, err := range errs {
		if err != nil {
			if _, e := m.drop(kids[i], op, err); e != nil {
				logErr = e
			}
		}
	}
	if logErr != nil {
		return logErr
	}
	// Concurrent failures may have dropped the children that had it.
	for i, err := range errs {
		if err == nil && kids[i].st() == InSync {
			return nil
		}
	}
	return fmt.Errorf("%w: every child that had this %s failed since", ErrNoChild, op)
}

// drop takes a child out after err. An in-sync child is dropped only when
// another stays in sync. It reports whether the child was dropped; the
// error is the log's, if it could not record it.
func (m *Mirror) drop(c *child, op string, err error) (bool, error) {
	m.mu.Lock()
	s := c.st()
	if s != InSync && s != Syncing || m.opts.Primary && c == m.primary() {
		m.mu.Unlock()
		return false, nil
	}
	if s == InSync {
		others := 0
		for _, o := range *m.slots.Load() {
			if o != c && o.st() == InSync {
				others++
			}
		}
		if others == 0 {
			m.mu.Unlock()
			return false, nil
		}
	}
	c.state.Store(int32(Failed))
	c.err = fmt.Sprintf("%s: %v", op, err)
	// What it may have lost: everything written since the last flush all
	// children passed.
	m.orInto(m.st.d, m.st.w)
	m.syncSlotsLocked()
	g := m.gen
	slot := m.slotOfLocked(c)
	m.mu.Unlock()
	m.emit("child-failed", "slot", strconv.Itoa(slot), "was", s.String(), "op", op, "error", err.Error())
	return true, m.commit(g)
}

// primary is slot 0's child (Options.Primary).
func (m *Mirror) primary() *child { return (*m.slots.Load())[0] }

// primaryErr is slot 0's error among a request's, if it had one.
func (m *Mirror) primaryErr(kids []*child, errs []error) error {
	p := m.primary()
	for i, c := range kids {
		if c == p {
			return errs[i]
		}
	}
	return nil
}

func (m *Mirror) slotOfLocked(c *child) int {
	for i, o := range *m.slots.Load() {
		if o == c {
			return i
		}
	}
	return -1
}

// pick returns the in-sync child with the fewest reads in flight, the
// lowest slot among equals: a lone reader stays on one child, whose cache
// (the host's page cache, an NBD server's) stays warm, and parallel
// readers spread over the children as they queue up.
func (m *Mirror) pick() *child {
	if m.opts.Primary {
		if p := m.primary(); p.st() == InSync {
			return p
		}
		return nil
	}
	var best *child
	var load int64
	for _, c := range *m.slots.Load() {
		if c.st() != InSync {
			continue
		}
		if m.opts.ReadOnly {
			return c
		}
		if l := c.loading.Load(); best == nil || l < load {
			best, load = c, l
			if l == 0 {
				break
			}
		}
	}
	return best
}

func (m *Mirror) ReadAt(p []byte, off int64) (int, error) {
	if m.closed.Load() {
		return 0, block.ErrClosed
	}
	if off < 0 {
		return 0, fmt.Errorf("mirror: negative offset %d", off)
	}
	if off >= m.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	n := min(int64(len(p)), m.size-off)
	if n > 0 {
		q := p[:n]
		m.cfg.RLock()
		err := m.readWith(func(b block.Backend) error {
			_, err := b.ReadAt(q, off)
			return err
		})
		m.cfg.RUnlock()
		if err != nil {
			return 0, err
		}
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// ReadvAt reads from one in-sync child; a child that fails the read is
// dropped (unless it is the last) and the read is tried on another.
func (m *Mirror) ReadvAt(bufs [][]byte, off int64) (int, error) {
	if m.closed.Load() {
		return 0, block.ErrClosed
	}
	if off < 0 {
		return 0, fmt.Errorf("mirror: negative offset %d", off)
	}
	want := filter.Len(bufs)
	if off >= m.size {
		if want == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	n := min(want, m.size-off)
	if n > 0 {
		sub := filter.Sub(bufs, 0, n)
		m.cfg.RLock()
		err := m.readWith(func(b block.Backend) error {
			_, err := block.ReadvAt(b, sub, off)
			return err
		})
		m.cfg.RUnlock()
		if err != nil {
			return 0, err
		}
	}
	if n < want {
		return int(n), io.EOF
	}
	return int(n), nil
}

// readWith runs a read on an in-sync child; cfg is held.
func (m *Mirror) readWith(read func(block.Backend) error) error {
	for range MaxSlots + 1 {
		c := m.pick()
		if c == nil {
			return ErrNoChild
		}
		c.loading.Add(1)
		err := read(c.be)
		c.loading.Add(-1)
		if err == nil {
			return nil
		}
		dropped, logErr := m.drop(c, "read", err)
		if logErr != nil {
			return logErr
		}
		if !dropped && c.st() == InSync {
			return err // the last child in sync: its error is the disk's
		}
	}
	return ErrNoChild
}

func (m *Mirror) WriteAt(p []byte, off int64) (int, error) {
	return m.WritevAt([][]byte{p}, off)
}

func (m *Mirror) WritevAt(bufs [][]byte, off int64) (int, error) {
	n := filter.Len(bufs)
	if err := m.write("write", off, n, func(b block.Backend) error {
		_, err := block.WritevAt(b, bufs, off)
		return err
	}); err != nil {
		return 0, err
	}
	return int(n), nil
}

// Discard writes zeroes (with unmap) on every child, so that all of them
// read alike afterwards, as a mirror must.
func (m *Mirror) Discard(off, n int64) error {
	return m.WriteZeroes(off, n, true)
}

func (m *Mirror) WriteZeroes(off, n int64, unmap bool) error {
	return m.write("write-zeroes", off, n, func(b block.Backend) error {
		z, ok := b.(block.ZeroWriter)
		if !ok {
			return errors.ErrUnsupported
		}
		return z.WriteZeroes(off, n, unmap)
	})
}

// Flush flushes every child that gets writes. It succeeds when every one
// of them did, or when those that failed could be dropped and an in-sync
// one succeeded; afterwards the write-intent bits of regions no write
// touched while it ran are cleared.
func (m *Mirror) Flush() error {
	if m.closed.Load() {
		return block.ErrClosed
	}
	return m.flush()
}

func (m *Mirror) flush() error {
	m.flushMu.Lock()
	defer m.flushMu.Unlock()
	// A W bit may be cleared once a flush covers every write to its
	// region: one that completed before the flush began, with none in
	// flight or begun since. Writes mark touched when they begin and when
	// they complete, so "not touched since the flush began and none in
	// flight" is exactly that.
	m.mu.Lock()
	m.touched = map[int64]struct{}{}
	m.mu.Unlock()

	m.cfg.RLock()
	kids, states, _ := m.receivers()
	errs := fanout(kids, func(c *child) error { return c.be.Flush() })
	err := m.settle("flush", kids, states, errs)
	m.cfg.RUnlock()
	if err != nil {
		return err
	}
	if m.opts.ReadOnly {
		return nil
	}
	m.mu.Lock()
	changed := false
	m.st.w.each(func(r int64) {
		if _, t := m.touched[r]; !t && m.inflight[r] == 0 {
			m.st.w.clear(r)
			m.markPage(wPage(r))
			changed = true
		}
	})
	g := m.gen
	m.mu.Unlock()
	if changed {
		return m.commit(g)
	}
	return nil
}

func (m *Mirror) Size() int64 { return m.size }

// ReadOnly reports whether the mirror was opened read-only or a child is.
func (m *Mirror) ReadOnly() bool {
	if m.opts.ReadOnly {
		return true
	}
	for _, c := range *m.slots.Load() {
		if r, ok := c.be.(block.ReadOnlyReporter); ok && c.st() != Absent && r.ReadOnly() {
			return true
		}
	}
	return false
}

func (m *Mirror) Drain(on bool) {
	for _, c := range *m.slots.Load() {
		if d, ok := c.be.(block.Drainer); ok && c.st() != Absent {
			d.Drain(on)
		}
	}
}

// Resize is not supported: children would have to grow together.
func (m *Mirror) Resize(int64) error {
	if m.closed.Load() {
		return block.ErrClosed
	}
	return errors.ErrUnsupported
}

// Close stops a rebuild (the log keeps what is left to copy), flushes, and
// closes the children and the log. It returns the flush's error.
func (m *Mirror) Close() error {
	if m.closed.Swap(true) {
		return block.ErrClosed
	}
	close(m.stop)
	m.rebuildW.Wait()
	err := m.flush()
	if !m.opts.ReadOnly && m.log != nil {
		m.mu.Lock()
		m.syncSlotsLocked()
		g := m.gen
		m.mu.Unlock()
		if e := m.commit(g); err == nil {
			err = e
		}
	}
	for _, c := range *m.slots.Load() {
		if c.st() != Absent {
			if e := c.be.Close(); e != nil && err == nil && c.st() != Failed {
				err = e
			}
		}
	}
	if m.log != nil {
		if e := m.log.Close(); err == nil {
			err = e
		}
	}
	return err
}

// now is the rebuild's clock (a variable for nothing but clarity).
var now = time.Now
