package mirror

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/viovmm/vio/block"
	"golang.org/x/sys/unix"
	"os"
)

func datasync(f *os.File) error {
	for {
		err := unix.Fdatasync(int(f.Fd()))
		if err != unix.EINTR {
			return err
		}
	}
}

// clearD empties the degraded bitmap (no child is out); mu is held or the
// mirror is not shared yet.
func (m *Mirror) clearD() {
	wp := bitmapPages(m.nreg)
	for i, w := range m.st.d {
		if w != 0 {
			m.st.d[i] = 0
			m.markPage(dPage(int64(i)*64, wp))
		}
	}
}

// copyChunk is the most a rebuild reads at once; a region larger than that
// is copied in pieces under its lock.
const copyChunk = 1 << 20

// copyRegion copies region r from an in-sync child to each of targets
// (those still in state want), holding r's lock so no write to r runs
// meanwhile. It returns the bytes copied and the targets left; a target
// that fails is dropped; no source left is an error.
func (m *Mirror) copyRegion(r int64, targets []*child, want State, buf []byte) (int64, []*child, error) {
	m.cfg.RLock()
	defer m.cfg.RUnlock()
	m.locks.lock(r)
	defer m.locks.unlock(r)
	live := targets[:0:0]
	for _, t := range targets {
		if t.st() == want {
			live = append(live, t)
		}
	}
	off := r * m.region
	end := min(off+m.region, m.size)
	for pos := off; pos < end && len(live) > 0; {
		n := min(int64(len(buf)), end-pos)
		p := buf[:n]
		if err := m.readFrom(p, pos, live); err != nil {
			return pos - off, live, err
		}
		errs := fanout(live, func(c *child) error {
			_, err := c.be.WriteAt(p, pos)
			return err
		})
		keep := live[:0:0]
		for i, err := range errs {
			if err != nil {
				if _, e := m.drop(live[i], "rebuild write", err); e != nil {
					return pos - off, nil, e
				}
				continue
			}
			keep = append(keep, live[i])
		}
		live = keep
		pos += n
	}
	return end - off, live, nil
}

// readFrom reads p at off from an in-sync child that is not one of
// exclude, dropping children that fail (never the last in sync).
func (m *Mirror) readFrom(p []byte, off int64, exclude []*child) error {
	for range MaxSlots + 1 {
		var src *child
	scan:
		for _, c := range *m.slots.Load() {
			if c.st() != InSync {
				continue
			}
			for _, x := range exclude {
				if x == c {
					continue scan
				}
			}
			src = c
			break
		}
		if src == nil {
			return ErrNoChild
		}
		_, err := src.be.ReadAt(p, off)
		if err == nil {
			return nil
		}
		dropped, logErr := m.drop(src, "rebuild read", err)
		if logErr != nil {
			return logErr
		}
		if !dropped {
			return fmt.Errorf("mirror: reading the source of a resync: %w", err)
		}
	}
	return ErrNoChild
}

// resyncInSync makes the in-sync children agree on the regions a crash
// left in doubt (W), before the mirror is used: from the first in-sync
// child to the others.
func (m *Mirror) resyncInSync() error {
	var kids []*child
	for _, c := range *m.slots.Load() {
		if c.st() == InSync {
			kids = append(kids, c)
		}
	}
	m.mu.Lock()
	set := append(bitmap(nil), m.st.w...)
	m.mu.Unlock()
	if set.empty() {
		return nil
	}
	start := now()
	total := m.setBytes(set)
	slots := []int{}
	for i, c := range *m.slots.Load() {
		if c.st() == InSync && c != kids[0] {
			slots = append(slots, i)
		}
	}
	rs := Resync{Slots: slots, Reason: "crash", Bytes: total}
	if len(kids) > 1 {
		m.emit("resync-started", "reason", "crash", "slots", fmt.Sprint(slots), "bytes", strconv.FormatInt(total, 10), "disk_bytes", strconv.FormatInt(m.size, 10))
		buf := make([]byte, min(m.region, copyChunk))
		var err error
		set.each(func(r int64) {
			if err != nil {
				return
			}
			// Source: the first in-sync child; the others are targets.
			var src *child
			var targets []*child
			for _, c := range *m.slots.Load() {
				if c.st() == InSync {
					if src == nil {
						src = c
					} else {
						targets = append(targets, c)
					}
				}
			}
			if len(targets) == 0 {
				return
			}
			var n int64
			n, _, err = m.copyRegion(r, targets, InSync, buf)
			rs.Copied += n
		})
		if err != nil {
			rs.Error = err.Error()
			m.mu.Lock()
			m.resync = rs
			m.mu.Unlock()
			m.emit("resync-failed", "reason", "crash", "error", err.Error())
			return fmt.Errorf("mirror: resync after a crash: %w", err)
		}
	}
	// Durable on every child, then the doubt is gone.
	errs := fanout(kids, func(c *child) error { return c.be.Flush() })
	states := make([]State, len(kids))
	for i := range states {
		states[i] = InSync
	}
	if err := m.settle("flush", kids, states, errs); err != nil {
		return fmt.Errorf("mirror: resync after a crash: %w", err)
	}
	m.mu.Lock()
	for r := range m.st.w {
		if m.st.w[r] != 0 {
			m.st.w[r] = 0
			m.markPage(wPage(int64(r) * 64))
		}
	}
	rs.Done = true
	rs.Duration = time.Since(start).Round(time.Millisecond).String()
	m.resync = rs
	g := m.gen
	m.mu.Unlock()
	if len(kids) > 1 {
		m.emit("resync-done", "reason", "crash", "copied", strconv.FormatInt(rs.Copied, 10), "disk_bytes", strconv.FormatInt(m.size, 10), "duration", rs.Duration)
	}
	return m.commit(g)
}

// setBytes is how many bytes the regions in set hold.
func (m *Mirror) setBytes(set bitmap) int64 {
	n := set.count() * m.region
	if last := m.nreg - 1; set.test(last) {
		n -= m.nreg*m.region - m.size
	}
	return n
}

// startRebuildLocked starts the rebuild goroutine unless it runs.
func (m *Mirror) startRebuildLocked(reason string) {
	if m.running || m.closed.Load() {
		return
	}
	m.running = true
	m.rebuildW.Add(1)
	go m.rebuild(reason)
}

// rebuildBatch is how many regions are copied between flushes of the
// targets (after which their D bits may be cleared).
const rebuildBatch = 64

// rebuild copies D's regions to the syncing children, pass after pass
// while children are attached, and marks them in sync.
func (m *Mirror) rebuild(reason string) {
	defer m.rebuildW.Done()
	for {
		m.mu.Lock()
		var targets []*child
		var slots []int
		for i, c := range *m.slots.Load() {
			if c.st() == Syncing {
				targets = append(targets, c)
				slots = append(slots, i)
			}
		}
		if len(targets) == 0 || m.closed.Load() {
			m.running = false
			m.mu.Unlock()
			return
		}
		set := append(bitmap(nil), m.st.d...)
		total := m.setBytes(set)
		m.progress = &Progress{Slots: slots, Total: total}
		m.resync = Resync{Slots: slots, Reason: reason, Bytes: total}
		m.mu.Unlock()
		m.emit("resync-started", "reason", reason, "slots", fmt.Sprint(slots), "bytes", strconv.FormatInt(total, 10), "disk_bytes", strconv.FormatInt(m.size, 10))
		start := now()
		err := m.rebuildPass(set, targets)
		m.mu.Lock()
		m.progress = nil
		m.resync.Duration = time.Since(start).Round(time.Millisecond).String()
		if err != nil {
			m.resync.Error = err.Error()
			m.running = false
			rs := m.resync
			m.mu.Unlock()
			if !errors.Is(err, errStopped) {
				m.emit("resync-failed", "reason", reason, "slots", fmt.Sprint(slots), "copied", strconv.FormatInt(rs.Copied, 10), "error", err.Error())
			}
			return
		}
		var done []int
		for i, c := range *m.slots.Load() {
			for _, t := range targets {
				if c == t && c.st() == Syncing {
					c.state.Store(int32(InSync))
					done = append(done, i)
				}
			}
		}
		if !m.anyOutLocked() {
			m.clearD()
		}
		m.syncSlotsLocked()
		m.resync.Done = true
		rs := m.resync
		g := m.gen
		m.mu.Unlock()
		if err := m.commit(g); err != nil {
			m.mu.Lock()
			m.running = false
			m.mu.Unlock()
			return
		}
		m.emit("resync-done", "reason", reason, "slots", fmt.Sprint(done), "copied", strconv.FormatInt(rs.Copied, 10), "disk_bytes", strconv.FormatInt(m.size, 10), "duration", rs.Duration)
		reason = "attached"
	}
}

var errStopped = errors.New("mirror: the rebuild was stopped by Close")

func (m *Mirror) rebuildPass(set bitmap, targets []*child) error {
	buf := make([]byte, min(m.region, copyChunk))
	var batch []int64
	finish := func() error {
		if len(batch) == 0 {
			return nil
		}
		live := targets[:0:0]
		for _, t := range targets {
			if t.st() == Syncing {
				live = append(live, t)
			}
		}
		errs := fanout(live, func(c *child) error { return c.be.Flush() })
		for i, err := range errs {
			if err != nil {
				if _, e := m.drop(live[i], "rebuild flush", err); e != nil {
					return e
				}
			}
		}
		// The batch is durable on the targets. Its D bits may go if the
		// targets are all the children that are out (none is failed, so
		// every write since reached them).
		m.mu.Lock()
		clear := true
		for _, c := range *m.slots.Load() {
			if c.st() == Failed {
				clear = false
			}
			if c.st() == Syncing {
				in := false
				for _, t := range targets {
					in = in || t == c
				}
				clear = clear && in
			}
		}
		wp := bitmapPages(m.nreg)
		if clear {
			for _, r := range batch {
				if m.st.d.clear(r) {
					m.markPage(dPage(r, wp))
				}
			}
		}
		g := m.gen
		m.mu.Unlock()
		batch = batch[:0]
		return m.commit(g)
	}
	var err error
	set.each(func(r int64) {
		if err != nil {
			return
		}
		select {
		case <-m.stop:
			err = errStopped
			return
		default:
		}
		var n int64
		var live []*child
		n, live, err = m.copyRegion(r, targets, Syncing, buf)
		m.mu.Lock()
		m.resync.Copied += n
		var report *Progress
		if p := m.progress; p != nil {
			before := p.Copied
			p.Copied += n
			// An event at each tenth of the way.
			if p.Total > 0 && before*10/p.Total != p.Copied*10/p.Total && p.Copied < p.Total {
				r := *p
				report = &r
			}
		}
		m.mu.Unlock()
		if report != nil {
			m.emit("resync-progress", "slots", fmt.Sprint(report.Slots), "copied", strconv.FormatInt(report.Copied, 10),
				"bytes", strconv.FormatInt(report.Total, 10), "percent", strconv.FormatInt(report.Copied*100/report.Total, 10))
		}
		if err == nil && len(live) == 0 {
			err = errors.New("mirror: every child being rebuilt failed")
		}
		if err == nil {
			batch = append(batch, r)
			if len(batch) >= rebuildBatch {
				err = finish()
			}
		}
	})
	if err != nil {
		return err
	}
	return finish()
}

// ChildStatus is one slot's state.
type ChildStatus struct {
	Slot  int    `json:"slot"`
	State string `json:"state"`
	Error string `json:"error,omitempty"`
}

// Status is what the control interface reports.
type Status struct {
	Size     int64         `json:"size"`
	Region   int64         `json:"region"`
	Children []ChildStatus `json:"children"`
	// DirtyRegions: write-intent bits set (writes since the last flush);
	// DegradedRegions: regions a child that is out lacks.
	DirtyRegions    int64     `json:"dirty_regions"`
	DegradedRegions int64     `json:"degraded_regions"`
	Rebuild         *Progress `json:"rebuild,omitempty"`
	LastResync      *Resync   `json:"last_resync,omitempty"`
	LogError        string    `json:"log_error,omitempty"`
}

// Status reports the slots, a running rebuild's progress and the last
// resync.
func (m *Mirror) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := Status{Size: m.size, Region: m.region, DirtyRegions: m.st.w.count(), DegradedRegions: m.st.d.count()}
	for i, c := range *m.slots.Load() {
		cs := ChildStatus{Slot: i, State: c.st().String()}
		if c.st() == Failed {
			cs.Error = c.err
		}
		s.Children = append(s.Children, cs)
	}
	if m.progress != nil {
		p := *m.progress
		s.Rebuild = &p
	}
	if m.resync.Reason != "" {
		r := m.resync
		s.LastResync = &r
	}
	if m.logErr != nil {
		s.LogError = m.logErr.Error()
	}
	return s
}

// Attach puts be into a slot and starts syncing it while the guest keeps
// writing. slot < 0 takes the first free slot. A slot whose child failed
// gets a returning child: only the regions written since it dropped out
// (and those in doubt when it did) are copied, so be must be that child's
// storage, back again. A free slot gets a new child, copied in full. It
// returns the slot; the mirror owns be on success.
func (m *Mirror) Attach(slot int, be block.Backend) (int, error) {
	if m.closed.Load() {
		return -1, block.ErrClosed
	}
	if m.opts.ReadOnly {
		return -1, errors.New("mirror: the mirror is read-only: it cannot take a child")
	}
	if be.Size() < m.size {
		return -1, fmt.Errorf("mirror: the new child is %d bytes, smaller than the disk (%d bytes)", be.Size(), m.size)
	}
	if r, ok := be.(block.ReadOnlyReporter); ok && r.ReadOnly() {
		return -1, errors.New("mirror: the new child is read-only: a mirror's children take writes")
	}
	if m.caps.WriteZeroes {
		if _, ok := be.(block.ZeroWriter); !ok {
			return -1, errors.New("mirror: the new child cannot write zeroes, which this mirror offers: give storage of the same kind as the others")
		}
	}
	m.cfg.Lock()
	m.mu.Lock()
	kids := *m.slots.Load()
	if slot < 0 {
		slot = len(kids)
		for i, c := range kids {
			if c.st() == Absent {
				slot = i
				break
			}
		}
	}
	if slot > len(kids) || slot >= MaxSlots {
		m.mu.Unlock()
		m.cfg.Unlock()
		return -1, fmt.Errorf("mirror: slot %d: the mirror has %d slots (at most %d); give one of them or -1 for the next free one", slot, len(kids), MaxSlots)
	}
	var old *child
	reason := "new"
	if slot < len(kids) {
		old = kids[slot]
		switch old.st() {
		case InSync, Syncing:
			m.mu.Unlock()
			m.cfg.Unlock()
			return -1, fmt.Errorf("mirror: slot %d holds a child that is %s: remove it first, or give a free or failed slot", slot, old.st())
		case Failed:
			reason = "returning"
		}
	}
	if reason == "new" {
		wp := bitmapPages(m.nreg)
		for r := range m.nreg {
			if m.st.d.set(r) {
				m.markPage(dPage(r, wp))
			}
		}
	}
	c := &child{be: be}
	c.state.Store(int32(Syncing))
	nk := append([]*child(nil), kids...)
	if slot == len(nk) {
		nk = append(nk, c)
	} else {
		nk[slot] = c
	}
	if old != nil {
		old.state.Store(int32(Absent))
	}
	m.slots.Store(&nk)
	m.syncSlotsLocked()
	g := m.gen
	m.startRebuildLocked(reason)
	m.mu.Unlock()
	m.cfg.Unlock()
	if old != nil && old.be != nil && old.be != be {
		old.be.Close()
	}
	m.emit("child-added", "slot", strconv.Itoa(slot), "sync", reason)
	return slot, m.commit(g)
}

// Remove takes the child out of slot and closes it; a failed child is
// forgotten (it will need a full copy if it comes back). The last child in
// sync cannot be removed. Live storage migration is Attach of the new
// storage, waiting for it to be in sync, and Remove of the old.
func (m *Mirror) Remove(slot int) error {
	if m.closed.Load() {
		return block.ErrClosed
	}
	m.cfg.Lock()
	m.mu.Lock()
	kids := *m.slots.Load()
	if slot < 0 || slot >= len(kids) || kids[slot].st() == Absent {
		m.mu.Unlock()
		m.cfg.Unlock()
		return fmt.Errorf("mirror: slot %d holds no child", slot)
	}
	c := kids[slot]
	if m.opts.Primary && slot == 0 {
		m.mu.Unlock()
		m.cfg.Unlock()
		return errors.New("mirror: slot 0 is the primary, the disk of record: it cannot be removed")
	}
	if c.st() == InSync {
		others := 0
		for _, o := range kids {
			if o != c && o.st() == InSync {
				others++
			}
		}
		if others == 0 {
			m.mu.Unlock()
			m.cfg.Unlock()
			return fmt.Errorf("mirror: slot %d holds the last child in sync: attach another and let it sync first", slot)
		}
	}
	was := c.st()
	c.state.Store(int32(Absent))
	nk := append([]*child(nil), kids...)
	nk[slot] = &child{}
	m.slots.Store(&nk)
	if !m.anyOutLocked() {
		m.clearD()
	}
	m.syncSlotsLocked()
	g := m.gen
	m.mu.Unlock()
	m.cfg.Unlock()
	err := m.commit(g)
	c.be.Close()
	m.emit("child-removed", "slot", strconv.Itoa(slot), "was", was.String())
	return err
}

// Wait blocks until no rebuild runs (for tests and tools; the API polls
// Status instead).
func (m *Mirror) Wait() {
	m.rebuildW.Wait()
}
