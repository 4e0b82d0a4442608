package journal

import (
	"fmt"
	"regexp"
	"slices"
)

// MaxPoints bounds the points a journal holds (its history's metadata);
// past it, retention merges the oldest unnamed points whatever it was
// asked to keep, and a log holding more is refused.
const MaxPoints = 1 << 16

// point is a restorable state: the base plus the deltas of every point
// before it on the chain and its own. Its delta is the writes of its
// segments: the one its id names, and those of the points retention
// merged into it (history.owner).
type point struct {
	id    uint64
	name  string
	time  int64 // Unix ns of the flush or mark that made it
	bytes int64 // log bytes of its delta
}

// maxSegments bounds the segments a history tracks (one per point record
// since the log was last written afresh). Retention compacts long before
// (see tooManySegments); a log holding more is refused.
const maxSegments = 1 << 20

// history is the journal's state machine: the chain of points from the
// base, where the disk is on it, and the open segment. The live journal
// and the replay of a log both change it only through apply, so a log
// replays to exactly the state the journal had.
type history struct {
	chain    []point // chain[0] is the base
	cur      int     // index in chain of the point the disk is at
	seg      uint64  // open segment: writes since chain[cur]
	dirty    bool    // the open segment has writes
	segBytes int64
	maxID    uint64 // highest point or segment id seen
	commit   uint64 // a commit begun and not done (point id), or 0
	size     int64  // the disk's size
	dead     int64  // log bytes no point needs any more
	// owner links each closed segment to the point whose delta holds
	// it, as a union-find forest: a point's own segment is a root while
	// the point is on the chain; merging a point links its root to its
	// successor's. Segments of points no longer on the chain (forked
	// off, committed) lead to ids that are not on it.
	owner map[uint64]uint64
}

func newHistory(h header) *history {
	return &history{chain: []point{{id: h.baseID}}, seg: h.firstSeg, maxID: h.firstSeg, size: h.baseSize, owner: map[uint64]uint64{}}
}

var nameRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_.-]{0,63}$`)

// checkName validates a mark's name: it starts with a letter, so that it
// never reads as a point id.
func checkName(s string) error {
	if !nameRE.MatchString(s) {
		return fmt.Errorf("mark name %q: use letters, digits, '_', '.' and '-', starting with a letter (at most 64)", s)
	}
	return nil
}

func (h *history) index(id uint64) int {
	for i, p := range h.chain {
		if p.id == id {
			return i
		}
	}
	return -1
}

func (h *history) findName(name string) int {
	for i, p := range h.chain {
		if p.name == name {
			return i
		}
	}
	return -1
}

func (h *history) head() int { return len(h.chain) - 1 }

// nextIDOK reports whether id may open a new segment: above every id in
// use.
func (h *history) nextIDOK(id uint64) bool {
	if id >= 1<<62 {
		return false
	}
	return id > h.maxID || id > h.chain[h.head()].id && id != h.seg && h.index(id) < 0
}

// apply changes the history by one record, checking that the record makes
// sense here (a hostile log gets an error, never a panic).
func (h *history) apply(r *record) error {
	if h.commit != 0 && r.typ != recCommitDone {
		return fmt.Errorf("record type %d in the middle of a commit", r.typ)
	}
	switch r.typ {
	case recWrite, recZero:
		n := int64(r.plen)
		if r.typ == recZero {
			n = int64(r.c)
		}
		if r.a != h.seg {
			return fmt.Errorf("write to segment %d, but segment %d is open", r.a, h.seg)
		}
		if r.b > uint64(h.size) || n < 0 || n > h.size-int64(r.b) || r.c > uint64(h.size) {
			return fmt.Errorf("write of %d bytes at %d beyond the disk's %d bytes", n, r.b, h.size)
		}
		if h.cur != h.head() {
			// The first write after going back forks: the points
			// ahead are gone.
			for _, p := range h.chain[h.cur+1:] {
				h.dead += p.bytes
			}
			h.chain = h.chain[:h.cur+1]
		}
		h.dirty = true
		h.segBytes += r.size()
	case recPoint:
		if r.a != h.seg || h.cur != h.head() {
			return fmt.Errorf("point for segment %d, but segment %d is open", r.a, h.seg)
		}
		name := string(r.payload)
		if name != "" {
			if err := checkName(name); err != nil {
				return err
			}
			if h.findName(name) >= 0 {
				return fmt.Errorf("mark %q set twice", name)
			}
		}
		if len(h.chain) >= MaxPoints {
			return fmt.Errorf("more than %d points", MaxPoints)
		}
		if !h.nextIDOK(r.c) || r.c == r.a {
			return fmt.Errorf("point opens segment %d, which is in use", r.c)
		}
		if _, used := h.owner[r.a]; used || len(h.owner) >= maxSegments {
			return fmt.Errorf("point %d: segment reused, or more than %d segments", r.a, maxSegments)
		}
		h.owner[r.a] = r.a
		h.chain = append(h.chain, point{id: r.a, name: name, time: int64(r.b), bytes: h.segBytes + r.size()})
		h.cur = h.head()
		h.openSeg(r.c)
	case recName:
		i := h.index(r.a)
		if i < 0 {
			return fmt.Errorf("name for point %d, which is not in the history", r.a)
		}
		name := string(r.payload)
		if err := checkName(name); err != nil {
			return err
		}
		if j := h.findName(name); j >= 0 {
			return fmt.Errorf("mark %q set twice", name)
		}
		h.chain[i].name = name
		h.dead += r.size()
	case recRevert:
		i := h.index(r.a)
		if i < 0 || h.dirty {
			return fmt.Errorf("revert to point %d, which is not in the history or with writes pending", r.a)
		}
		if !h.nextIDOK(r.c) {
			return fmt.Errorf("revert opens segment %d, which is in use", r.c)
		}
		h.cur = i
		h.openSeg(r.c)
		h.dead += r.size()
	case recDrop:
		i := h.index(r.a)
		if i <= 0 || i == h.head() || i == h.cur || h.chain[i].name != "" {
			return fmt.Errorf("drop of point %d, which cannot be dropped", r.a)
		}
		next := &h.chain[i+1]
		h.owner[h.chain[i].id] = next.id
		next.bytes += h.chain[i].bytes
		h.chain = slices.Delete(h.chain, i, i+1)
		if h.cur > i {
			h.cur--
		}
		h.dead += r.size()
	case recCommitBegin:
		i := h.index(r.a)
		if i <= 0 || i > h.cur || h.dirty {
			return fmt.Errorf("commit of point %d, which is not at or before the current point", r.a)
		}
		h.commit = r.a
		h.dead += r.size()
	case recCommitDone:
		if h.commit == 0 || r.a != h.commit {
			return fmt.Errorf("commit of point %d done, but it was not begun", r.a)
		}
		i := h.index(r.a)
		for _, p := range h.chain[1 : i+1] {
			h.dead += p.bytes
		}
		base := point{id: h.chain[i].id, name: h.chain[i].name, time: h.chain[i].time}
		h.chain = append([]point{base}, h.chain[i+1:]...)
		h.cur -= i
		h.commit = 0
		h.dead += r.size()
	default:
		return fmt.Errorf("unknown record type %d", r.typ)
	}
	return nil
}

func (h *history) openSeg(id uint64) {
	h.seg = id
	h.maxID = max(h.maxID, id)
	h.dirty = false
	h.segBytes = 0
}

// find returns the point id whose delta holds segment s (or an id that is
// not on the chain), compressing the path it walked.
func (h *history) find(s uint64) uint64 {
	root := s
	for {
		next, ok := h.owner[root]
		if !ok || next == root {
			break
		}
		root = next
	}
	for s != root {
		next := h.owner[s]
		h.owner[s] = root
		s = next
	}
	return root
}

// upTo returns a test for the segments whose writes make up the state at
// chain[i] (with the open segment when i is the current point and it has
// writes).
func (h *history) upTo(i int) func(seg uint64) bool {
	pos := make(map[uint64]int, len(h.chain))
	for k, p := range h.chain {
		pos[p.id] = k
	}
	open := i == h.cur && h.dirty
	return func(seg uint64) bool {
		if open && seg == h.seg {
			return true
		}
		if _, ok := h.owner[seg]; !ok {
			return false
		}
		k, ok := pos[h.find(seg)]
		return ok && k >= 1 && k <= i
	}
}

// ownerPos returns the chain position of the point whose delta holds seg,
// or -1 (for compaction).
func (h *history) ownerPos() func(seg uint64) int {
	pos := make(map[uint64]int, len(h.chain))
	for k, p := range h.chain {
		pos[p.id] = k
	}
	return func(seg uint64) int {
		if _, ok := h.owner[seg]; !ok {
			return -1
		}
		if k, ok := pos[h.find(seg)]; ok && k >= 1 {
			return k
		}
		return -1
	}
}

// tooManySegments says when compaction should fold merged segments into
// one per point.
func (h *history) tooManySegments() bool { return len(h.owner) > 2*len(h.chain)+1<<16 }

// live returns the log bytes the history still needs.
func (h *history) live() int64 {
	n := h.segBytes
	for _, p := range h.chain[1:] {
		n += p.bytes
	}
	return n
}
