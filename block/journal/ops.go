package journal

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/block"
)

// Ops are the operations on a journal, the same offline (vio image journal)
// and, later, on a running VM through the API. A point is named by its
// mark name or its id; "" means the current point.
type Ops interface {
	// List describes the history, base first.
	List() (Status, error)
	// Mark names the current state: the current point if nothing was
	// written since, else a new point made of the writes since.
	Mark(name string) (PointInfo, error)
	// Revert takes the disk to a point of the history. Writes since the
	// last point become a point first, so nothing is lost until a write
	// after the revert forks the history (the points ahead then go).
	Revert(point string) error
	// Commit copies the history up to a point (at or before the current
	// one) into the base; that point becomes the base and the ones before
	// it go. Refused for undo disks.
	Commit(point string) error
	// Compact rewrites the log without what no point needs (committed,
	// forked-off and reverted-over records, retention's leftovers).
	Compact() error
}

// PointInfo describes one point.
type PointInfo struct {
	ID      uint64    `json:"id"`
	Name    string    `json:"name,omitempty"`
	Time    time.Time `json:"time"`           // zero for the base
	Bytes   int64     `json:"bytes"`          // log bytes of its delta
	Base    bool      `json:"base,omitempty"` // the state the base holds
	Current bool      `json:"current,omitempty"`
}

// Status is what List returns.
type Status struct {
	Points    []PointInfo `json:"points"`
	Pending   bool        `json:"pending"`    // writes since the current point
	LogBytes  int64       `json:"log_bytes"`  // the log file's size
	LiveBytes int64       `json:"live_bytes"` // what compaction would keep, about
	Undo      bool        `json:"undo"`
}

func (j *Journal) info(i int) PointInfo {
	p := j.h.chain[i]
	pi := PointInfo{ID: p.id, Name: p.name, Bytes: p.bytes, Base: i == 0, Current: i == j.h.cur}
	if p.time != 0 {
		pi.Time = time.Unix(0, p.time)
	}
	return pi
}

// List describes the history.
func (j *Journal) List() (Status, error) {
	j.mu.RLock()
	defer j.mu.RUnlock()
	if err := j.check(); err != nil {
		return Status{}, err
	}
	s := Status{Pending: j.h.dirty, LogBytes: j.end, LiveBytes: headerSize + j.h.live(), Undo: j.opts.Undo}
	for i := range j.h.chain {
		s.Points = append(s.Points, j.info(i))
	}
	return s, nil
}

// resolve finds a point by name or id ("" is the current point).
func (j *Journal) resolve(s string) (int, error) {
	if s == "" {
		return j.h.cur, nil
	}
	if i := j.h.findName(s); i >= 0 {
		return i, nil
	}
	if id, err := strconv.ParseUint(s, 10, 64); err == nil {
		if i := j.h.index(id); i >= 0 {
			return i, nil
		}
	}
	return 0, fmt.Errorf("%w: %q is neither a mark nor the id of a point in the history (list them with vio image journal list)", ErrNoPoint, s)
}

// Mark names the current state.
func (j *Journal) Mark(name string) (PointInfo, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.writable(); err != nil {
		return PointInfo{}, err
	}
	if err := checkName(name); err != nil {
		return PointInfo{}, fmt.Errorf("journal: %w: %w", ErrBadRequest, err)
	}
	if j.h.findName(name) >= 0 {
		return PointInfo{}, fmt.Errorf("journal: %w: mark %q exists already: choose another name", ErrBadRequest, name)
	}
	if j.h.dirty {
		if err := j.closePoint(name); err != nil {
			return PointInfo{}, err
		}
	} else {
		if err := j.appendRec(&record{typ: recName, a: j.h.chain[j.h.cur].id}, []byte(name)); err != nil {
			return PointInfo{}, err
		}
		if err := j.sync(); err != nil {
			return PointInfo{}, err
		}
	}
	return j.info(j.h.cur), nil
}

// Revert takes the disk to a point.
func (j *Journal) Revert(point string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.writable(); err != nil {
		return err
	}
	if j.h.dirty {
		if err := j.closePoint(""); err != nil {
			return err
		}
	}
	i, err := j.resolve(point)
	if err != nil {
		return err
	}
	if i == j.h.cur {
		return nil
	}
	if err := j.appendRec(&record{typ: recRevert, a: j.h.chain[i].id, c: j.h.maxID + 1}, nil); err != nil {
		return err
	}
	if err := j.sync(); err != nil {
		return err
	}
	return j.rebuild()
}

// Commit copies the history up to a point into the base.
func (j *Journal) Commit(point string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.writable(); err != nil {
		return err
	}
	if j.opts.Undo {
		return fmt.Errorf("journal: %w: an undo disk never changes its base: commit is refused", ErrBadRequest)
	}
	if r, ok := j.base.(block.ReadOnlyReporter); ok && r.ReadOnly() {
		return fmt.Errorf("journal: commit needs a writable base: %w", block.ErrReadOnly)
	}
	if j.h.dirty {
		if err := j.closePoint(""); err != nil {
			return err
		}
	}
	i, err := j.resolve(point)
	if err != nil {
		return err
	}
	if i > j.h.cur {
		return fmt.Errorf("journal: %w: point %s is ahead of the current point %d: revert to it first, then commit", ErrBadRequest, point, j.h.chain[j.h.cur].id)
	}
	if err := j.commitLocked(i); err != nil {
		return err
	}
	return j.maybeCompact()
}

// commitLocked commits chain[i] (i <= cur; 0 is a no-op).
func (j *Journal) commitLocked(i int) error {
	if i == 0 {
		return nil
	}
	id := j.h.chain[i].id
	if err := j.appendRec(&record{typ: recCommitBegin, a: id}, nil); err != nil {
		return err
	}
	if err := j.sync(); err != nil {
		return err
	}
	return j.finishCommit(id)
}

// finishCommit copies the state at point id into the base, flushes the
// base and records the commit done. Copying again what an interrupted run
// copied already is harmless: the same bytes land in the same places.
func (j *Journal) finishCommit(id uint64) error {
	i := j.h.index(id)
	if i < 0 {
		return fmt.Errorf("journal: commit of point %d, which is not in the history", id)
	}
	x, err := j.indexFor(i)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	zw, _ := j.base.(block.ZeroWriter)
	err = x.all(func(e extent) error {
		if e.log < 0 && zw != nil {
			return zw.WriteZeroes(e.off, e.n, false)
		}
		for done := int64(0); done < e.n; {
			n := min(e.n-done, int64(len(buf)))
			b := buf[:n]
			if e.log < 0 {
				clear(b)
			} else if _, err := j.f.ReadAt(b, e.log+done); err != nil {
				return fmt.Errorf("reading the log: %w", err)
			}
			if _, err := j.base.WriteAt(b, e.off+done); err != nil {
				return err
			}
			done += n
		}
		return nil
	})
	if err == nil {
		err = j.base.Flush()
	}
	if err != nil {
		return fmt.Errorf("journal: committing point %d into the base: %w", id, err)
	}
	if err := j.appendRec(&record{typ: recCommitDone, a: id}, nil); err != nil {
		return err
	}
	// The index stays right: the committed ranges read the same from the
	// log as from the base until compaction rebuilds it.
	return j.sync()
}

// Compact rewrites the log without what no point needs.
func (j *Journal) Compact() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.writable(); err != nil {
		return err
	}
	if j.h.dirty {
		if err := j.closePoint(""); err != nil {
			return err
		}
	}
	return j.compactLocked()
}

// maybeCompact compacts when most of the log is dead, or when merged
// points left many segments to track.
func (j *Journal) maybeCompact() error {
	if j.opts.noAutoCompact {
		return nil
	}
	if j.h.dead > 0 && j.h.dead >= (j.end-headerSize)/2 || j.h.tooManySegments() {
		return j.compactLocked()
	}
	return nil
}

// compactLocked writes the live records, point by point, into a new log
// file, syncs it and renames it over the old one, then replays it. Needs
// no pending writes and no commit under way.
func (j *Journal) compactLocked() error {
	h := j.h
	if h.dirty || h.commit != 0 {
		return errors.New("journal: compaction with writes pending (a bug)")
	}
	var nf *os.File
	var err error
	tmp := ""
	if j.path == "" {
		nf, err = os.CreateTemp("", "vio-undo-*.log")
		if err == nil {
			os.Remove(nf.Name())
		}
	} else {
		tmp = j.path + ".compact"
		nf, err = os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	}
	if err != nil {
		return fmt.Errorf("journal: compacting: %w", err)
	}
	fail := func(err error) error {
		nf.Close()
		if tmp != "" {
			os.Remove(tmp)
		}
		return fmt.Errorf("journal: compacting: %w", err)
	}
	if err := unix.Flock(int(nf.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return fail(err)
	}
	head := h.head()
	hdr := header{baseSize: h.size, baseID: h.chain[0].id, firstSeg: h.seg}
	if head >= 1 {
		hdr.firstSeg = h.chain[1].id
	}
	if _, err := nf.WriteAt(hdr.encode(), 0); err != nil {
		return fail(err)
	}
	w := &recWriter{f: nf, end: headerSize, seq: 1}
	if h.chain[0].name != "" {
		if err := w.put(&record{typ: recName, a: h.chain[0].id}, []byte(h.chain[0].name)); err != nil {
			return fail(err)
		}
	}
	// After the newest point, the open segment is the current one; when
	// the disk is behind the newest point, a revert record puts it back
	// there, and the newest point opens a throw-away segment.
	spare := max(h.maxID, h.seg) + 1
	nextSeg := func(i int) uint64 {
		switch {
		case i < head:
			return h.chain[i+1].id
		case h.cur == head:
			return h.seg
		}
		return spare
	}
	due := 1 // the next point whose record is to be written
	putPoint := func(i int) error {
		p := h.chain[i]
		return w.put(&record{typ: recPoint, a: p.id, b: uint64(p.time), c: nextSeg(i)}, []byte(p.name))
	}
	owner := h.ownerPos()
	buf := make([]byte, maxData)
	_, _, err = scanLog(j.f, headerSize, j.end, 1, false, func(r *record) error {
		if r.typ != recWrite && r.typ != recZero {
			return nil
		}
		i := owner(r.a)
		if i < 0 {
			return nil
		}
		// Chain order is log order, so the owners only grow.
		for ; due < i; due++ {
			if err := putPoint(due); err != nil {
				return err
			}
		}
		nr := &record{typ: r.typ, a: h.chain[i].id, b: r.b, c: r.c}
		var payload []byte
		if r.typ == recWrite {
			payload = buf[:r.plen]
			if _, err := j.f.ReadAt(payload, r.pos+recHeaderSize); err != nil {
				return err
			}
		}
		return w.put(nr, payload)
	})
	if err != nil {
		return fail(err)
	}
	for ; due <= head; due++ {
		if err := putPoint(due); err != nil {
			return fail(err)
		}
	}
	if h.cur != head {
		if err := w.put(&record{typ: recRevert, a: h.chain[h.cur].id, c: h.seg}, nil); err != nil {
			return fail(err)
		}
	}
	if !j.opts.Undo && !j.opts.noSync {
		if err := nf.Sync(); err != nil {
			return fail(err)
		}
	}
	// Check the new log before it replaces the old one: it must replay to
	// the same history.
	nh, end, _, err := readHistory(nf, w.end, h.size, tmp)
	if err != nil {
		return fail(err)
	}
	if !sameHistory(h, nh) || end != w.end {
		return fail(errors.New("the compacted log replays to another history (a bug; the old log is kept)"))
	}
	if tmp != "" {
		if err := os.Rename(tmp, j.path); err != nil {
			return fail(err)
		}
		if !j.opts.noSync {
			syncDir(filepath.Dir(j.path))
		}
	}
	old := j.f
	j.f = nf
	old.Close()
	return j.replay(w.end)
}

// sameHistory compares what a compaction must keep: the points, their
// names and times, and where the disk is.
func sameHistory(a, b *history) bool {
	if a.cur != b.cur || len(a.chain) != len(b.chain) {
		return false
	}
	for i := range a.chain {
		p, q := a.chain[i], b.chain[i]
		if p.id != q.id || p.name != q.name || i > 0 && p.time != q.time {
			return false
		}
	}
	return true
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// recWriter appends records to a log file other than the journal's own.
type recWriter struct {
	f   *os.File
	end int64
	seq uint64
}

func (w *recWriter) put(r *record, payload []byte) error {
	r.seq, r.plen, r.pcrc = w.seq, uint32(len(payload)), crcOf(payload)
	var hb [recHeaderSize]byte
	r.encodeHeader(hb[:])
	if err := pwritev(w.f, [][]byte{hb[:], payload}, w.end); err != nil {
		return err
	}
	w.end += r.size()
	w.seq++
	return nil
}

// retain applies the retention options after a new point.
func (j *Journal) retain() error {
	h := j.h
	keep := j.opts.KeepPoints
	now := j.opts.Now().UnixNano()
	age := int64(j.opts.KeepAge)
	// Act only past some slack, so that retention's cost (a commit, a
	// compaction) comes once per many points, not at every flush.
	unnamed, oldestAge := 0, int64(0)
	for i := 1; i < h.head(); i++ {
		if h.chain[i].name == "" && i != h.cur {
			unnamed++
			oldestAge = max(oldestAge, now-h.chain[i].time)
		}
	}
	act := unnamed > keep+keep/4 || len(h.chain) >= MaxPoints-1 || age > 0 && oldestAge > age+age/4
	if act {
		var drop []uint64
		n := 0
		for i := h.head() - 1; i >= 1; i-- {
			p := h.chain[i]
			if p.name != "" || i == h.cur {
				continue
			}
			n++
			if n > keep || age > 0 && now-p.time > age || len(h.chain)-len(drop) >= MaxPoints-1 {
				drop = append(drop, p.id)
			}
		}
		dropped := map[uint64]bool{}
		for _, id := range drop {
			dropped[id] = true
		}
		// The oldest points, up to the first one kept, go into the base;
		// the others merge into their successors.
		prefix := 0
		for prefix+1 < h.cur && dropped[h.chain[prefix+1].id] {
			prefix++
		}
		if prefix > 0 && j.canCommit() {
			for _, p := range h.chain[1 : prefix+1] {
				delete(dropped, p.id)
			}
			if err := j.commitLocked(prefix); err != nil {
				return err
			}
		}
		for _, id := range drop {
			if !dropped[id] {
				continue
			}
			if err := j.appendRec(&record{typ: recDrop, a: id}, nil); err != nil {
				return err
			}
		}
		if err := j.sync(); err != nil {
			return err
		}
	}
	if limit := j.opts.MaxLog; limit > 0 && j.end > limit {
		if j.h.dead >= (j.end-headerSize)/4 {
			if err := j.compactLocked(); err != nil {
				return err
			}
		}
		if j.end > limit && j.canCommit() && j.h.cur > 0 {
			if err := j.commitLocked(j.h.cur); err != nil {
				return err
			}
			return j.compactLocked()
		}
		return nil
	}
	return j.maybeCompact()
}

func (j *Journal) canCommit() bool {
	if j.opts.Undo {
		return false
	}
	r, ok := j.base.(block.ReadOnlyReporter)
	return !ok || !r.ReadOnly()
}
