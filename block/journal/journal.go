// Package journal is a log-structured overlay over any block.Backend (the
// base): time travel for a disk, and undo disks.
//
// Writes never reach the base. They are appended to a log file, and an
// in-memory index maps each written range to its data in the log. Every
// guest flush that follows writes closes a restorable point; a named mark
// can be set at any time. The disk can then be taken back to any point still
// in the history (Revert), forward again along the same history until a new
// write forks it, have a prefix of its history copied into the base
// (Commit), or be rewritten without what no point needs (Compact). Retention
// (Options) bounds the history by count, age and log size. In undo mode the
// log is thrown away when the disk closes, so the base never changes.
//
// Crash safety rests on the log alone: records are checksummed and numbered,
// and a flush writes its point record only after the data records are on
// stable storage, and syncs again. On open the log is replayed up to the
// last record that is not a write (a point, a mark, a revert, ...), so after
// kill -9 or a power cut the disk comes back at the last completed flush,
// never in between. A commit writes an intent record first and is finished
// on the next open if it was interrupted.
package journal

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/filter"
)

// Options configure a journal.
type Options struct {
	// Undo throws every change away when the journal closes: the log is a
	// scratch file (Path may be empty: an unlinked temporary file), any
	// log found at open is from a VM that ended and is discarded, and
	// Commit is refused.
	Undo bool
	// ReadOnly refuses writes, marks, reverts, commits and compaction.
	ReadOnly bool
	// KeepPoints is how many unnamed flush points retention keeps besides
	// the current and newest ones (0: DefaultKeepPoints). Marks are not
	// counted and are kept until MaxLog forces a commit.
	KeepPoints int
	// KeepAge drops unnamed points older than this (0: no age limit).
	KeepAge time.Duration
	// MaxLog bounds the log file's size: past it, retention compacts the
	// log and, if that is not enough, commits the history up to the
	// current point into the base, marks included (0: no bound; undo
	// disks only compact).
	MaxLog int64
	// MaxExtents bounds the index (0: DefaultMaxExtents); a write that
	// would pass it fails with ErrIndexFull.
	MaxExtents int
	// Now is the clock for point times (nil: time.Now).
	Now func() time.Time

	// noAutoCompact keeps the log's offsets stable for the crash test.
	noAutoCompact bool
	// noSync skips fdatasync, for the fuzz target (it is about parsing).
	noSync bool
}

// Defaults for Options.
const (
	DefaultKeepPoints = 1024
	// DefaultMaxExtents is about 24 bytes each: 48 MiB of index at most.
	DefaultMaxExtents = 2 << 20
)

// ErrNoPoint is returned when a point named in an operation is not in the
// history.
var ErrNoPoint = errors.New("journal: no such point")

// Journal is a journalled disk. Its Ops methods (List, Mark, Revert,
// Commit, Compact) work offline and on a disk in use; the guest sees a
// revert as a disk whose contents changed under it.
type Journal struct {
	base block.Backend
	path string
	opts Options

	mu     sync.RWMutex // guards everything below; reads take it shared
	f      *os.File
	end    int64  // where the next record goes
	seq    uint64 // the next record's sequence number
	h      *history
	idx    *index
	closed bool
}

var (
	_ filter.Interposer = (*Journal)(nil)
	_ Ops               = (*Journal)(nil)
)

// Open opens (or creates) the journal whose log is at path over base and
// returns it as a block.Backend that can discard and write zeroes whatever
// the base can. The journal owns base once open (Close closes it); on
// error base stays open and the caller's. The log file is locked against
// a second user.
func Open(base block.Backend, path string, o Options) (block.Backend, error) {
	j, err := OpenJournal(base, path, o)
	if err != nil {
		return nil, err
	}
	return filter.View(j, filter.Caps{Discard: true, WriteZeroes: true}), nil
}

// OpenJournal is Open returning the *Journal itself, for tools that only
// run operations on it.
func OpenJournal(base block.Backend, path string, o Options) (*Journal, error) {
	return open(base, path, o)
}

// Of returns the journal behind a back-end made by Open, or nil.
func Of(b block.Backend) *Journal {
	if j, ok := b.(*Journal); ok {
		return j
	}
	j, _ := filter.Unwrap(b).(*Journal)
	return j
}

func open(base block.Backend, path string, o Options) (*Journal, error) {
	if o.KeepPoints <= 0 {
		o.KeepPoints = DefaultKeepPoints
	}
	if o.MaxExtents <= 0 {
		o.MaxExtents = DefaultMaxExtents
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Undo && o.ReadOnly {
		return nil, errors.New("journal: an undo disk is there to be written: drop readonly or undo")
	}
	j := &Journal{base: base, path: path, opts: o}
	var f *os.File
	var err error
	switch {
	case path == "" && o.Undo:
		f, err = os.CreateTemp("", "vio-undo-*.log")
		if err == nil {
			os.Remove(f.Name())
		}
	case path == "":
		return nil, errors.New("journal: no log path: give the log file (only an undo disk may go without)")
	default:
		flags := os.O_RDWR | os.O_CREATE
		if o.ReadOnly {
			flags = os.O_RDONLY
		}
		f, err = os.OpenFile(path, flags, 0o600)
	}
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	lock := unix.LOCK_EX
	if o.ReadOnly {
		lock = unix.LOCK_SH
	}
	if err := unix.Flock(int(f.Fd()), lock|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("journal: log %s is in use by another process (%w): stop the VM or tool using it", path, err)
	}
	j.f = f
	if err := j.load(o.Undo); err != nil {
		f.Close()
		return nil, err
	}
	return j, nil
}

// load reads the log (or starts a fresh one) and builds the history and
// index; it finishes a commit that was interrupted.
func (j *Journal) load(fresh bool) error {
	st, err := j.f.Stat()
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	if fresh || st.Size() == 0 {
		if j.opts.ReadOnly {
			return fmt.Errorf("journal: log %s is empty: it cannot be created read-only", j.path)
		}
		return j.reset(header{baseSize: j.base.Size(), baseID: 0, firstSeg: 1})
	}
	if err := j.replay(st.Size()); err != nil {
		return err
	}
	if j.h.commit != 0 {
		if j.opts.ReadOnly {
			return fmt.Errorf("journal: log %s holds an interrupted commit: open it writable to finish it", j.path)
		}
		if err := j.finishCommit(j.h.commit); err != nil {
			return err
		}
	}
	return nil
}

// reset makes the log an empty one with header h.
func (j *Journal) reset(h header) error {
	if err := j.f.Truncate(0); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	if _, err := j.f.WriteAt(h.encode(), 0); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	if err := j.sync(); err != nil {
		return err
	}
	j.end, j.seq = headerSize, 1
	j.h = newHistory(h)
	j.idx = newIndex(j.opts.MaxExtents)
	return nil
}

// replay reads a log of size bytes: the records up to the last one that
// is not a write define the state; anything after it (writes no flush
// covered, a torn record) is cut off.
func (j *Journal) replay(size int64) error {
	h, barrier, seq, err := readHistory(j.f, size, j.base.Size(), j.path)
	if err != nil {
		return err
	}
	j.h, j.end, j.seq = h, barrier, seq
	if barrier < size && !j.opts.ReadOnly {
		// Cut the unflushed tail so that new records follow the last
		// good one.
		if err := j.f.Truncate(barrier); err != nil {
			return fmt.Errorf("journal: %w", err)
		}
		if err := j.sync(); err != nil {
			return err
		}
	}
	return j.rebuild()
}

// readHistory reads the history a log of size bytes holds, up to its last
// barrier, and returns it with where that barrier ends and the next
// record's sequence number.
func readHistory(f io.ReaderAt, size, baseSize int64, path string) (*history, int64, uint64, error) {
	hb := make([]byte, headerSize)
	if _, err := f.ReadAt(hb, 0); err != nil {
		return nil, 0, 0, fmt.Errorf("journal: log %s: %w: %w", path, errFormat, err)
	}
	hdr, err := decodeHeader(hb)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("journal: log %s: %w", path, err)
	}
	if hdr.baseSize != baseSize {
		return nil, 0, 0, fmt.Errorf("journal: log %s was made for a base of %d bytes, this base has %d: it belongs to another disk", path, hdr.baseSize, baseSize)
	}
	// Pass 1: where the last barrier ends, checking every checksum.
	barrier := int64(headerSize)
	_, _, err = scanLog(f, headerSize, size, 1, true, func(r *record) error {
		if r.typ != recWrite && r.typ != recZero {
			barrier = r.pos + r.size()
		}
		return nil
	})
	if err != nil {
		return nil, 0, 0, err
	}
	// Pass 2: the history up to there.
	h := newHistory(hdr)
	_, seq, err := scanLog(f, headerSize, barrier, 1, false, func(r *record) error {
		if err := h.apply(r); err != nil {
			return fmt.Errorf("journal: log %s is damaged at offset %d: %w: %w", path, r.pos, errFormat, err)
		}
		return nil
	})
	if err != nil {
		return nil, 0, 0, err
	}
	return h, barrier, seq, nil
}

// rebuild makes the index for the current point.
func (j *Journal) rebuild() error {
	x, err := j.indexFor(j.h.cur)
	if err != nil {
		return err
	}
	j.idx = x
	return nil
}

// indexFor builds the index of the state at chain[i].
func (j *Journal) indexFor(i int) (*index, error) {
	in := j.h.upTo(i)
	x := newIndex(j.opts.MaxExtents)
	_, _, err := scanLog(j.f, headerSize, j.end, 1, false, func(r *record) error {
		if (r.typ != recWrite && r.typ != recZero) || !in(r.a) {
			return nil
		}
		if r.typ == recZero {
			return x.insert(int64(r.b), int64(r.c), -1)
		}
		return x.insert(int64(r.b), int64(r.plen), r.pos+recHeaderSize)
	})
	if err != nil {
		return nil, fmt.Errorf("journal: log %s: %w", j.path, err)
	}
	return x, nil
}

func (j *Journal) sync() error {
	if j.opts.Undo || j.opts.noSync {
		return nil // nothing of an undo disk outlives it
	}
	if err := unix.Fdatasync(int(j.f.Fd())); err != nil {
		return fmt.Errorf("journal: syncing the log: %w", err)
	}
	return nil
}

// appendRec writes a record at the end of the log and applies it to the
// history. A failed write leaves end where it was, so the next record
// overwrites the torn one.
func (j *Journal) appendRec(r *record, payload []byte) error {
	r.seq = j.seq
	r.plen = uint32(len(payload))
	r.pcrc = crcOf(payload)
	r.payload = payload
	r.pos = j.end
	var hb [recHeaderSize]byte
	r.encodeHeader(hb[:])
	if err := pwritev(j.f, [][]byte{hb[:], payload}, j.end); err != nil {
		return fmt.Errorf("journal: appending to the log: %w", err)
	}
	if err := j.h.apply(r); err != nil {
		// Our own record refused (ids exhausted by a hostile log, or a
		// bug): take it back out so that no replay ever sees it.
		j.f.Truncate(j.end)
		return fmt.Errorf("journal: %w", err)
	}
	j.end += r.size()
	j.seq++
	return nil
}

func pwritev(f *os.File, bufs [][]byte, off int64) error {
	for len(bufs) > 0 {
		if len(bufs[0]) == 0 {
			bufs = bufs[1:]
			continue
		}
		n, err := unix.Pwritev(int(f.Fd()), bufs, off)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return err
		}
		off += int64(n)
		for n > 0 {
			if n >= len(bufs[0]) {
				n -= len(bufs[0])
				bufs = bufs[1:]
			} else {
				bufs[0] = bufs[0][n:]
				n = 0
			}
		}
	}
	return nil
}

func (j *Journal) check() error {
	if j.closed {
		return block.ErrClosed
	}
	return nil
}

// ReadAt reads the disk as the current point plus the writes since.
func (j *Journal) ReadAt(p []byte, off int64) (int, error) {
	j.mu.RLock()
	defer j.mu.RUnlock()
	if err := j.check(); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, fmt.Errorf("journal: negative offset %d", off)
	}
	size := j.h.size
	if off >= size {
		return 0, io.EOF
	}
	want := p
	if int64(len(p)) > size-off {
		want = p[:size-off]
	}
	err := j.idx.walk(off, int64(len(want)), func(o, n, log int64, mapped bool) error {
		b := want[o-off : o-off+n]
		switch {
		case !mapped:
			_, err := j.base.ReadAt(b, o)
			return err
		case log < 0:
			clear(b)
			return nil
		default:
			_, err := j.f.ReadAt(b, log)
			if err != nil {
				return fmt.Errorf("journal: reading the log: %w", err)
			}
			return nil
		}
	})
	if err != nil {
		return 0, err
	}
	if len(want) < len(p) {
		return len(want), io.EOF
	}
	return len(p), nil
}

// WriteAt appends the data to the log.
func (j *Journal) WriteAt(p []byte, off int64) (int, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.writable(); err != nil {
		return 0, err
	}
	if err := block.CheckRange(off, int64(len(p)), j.h.size); err != nil {
		return 0, err
	}
	done := 0
	for done < len(p) {
		n := min(len(p)-done, maxData)
		o := off + int64(done)
		if !j.idx.fits(o, int64(n)) {
			return done, ErrIndexFull
		}
		r := &record{typ: recWrite, a: j.h.seg, b: uint64(o)}
		if err := j.appendRec(r, p[done:done+n]); err != nil {
			return done, err
		}
		if err := j.idx.insert(o, int64(n), r.pos+recHeaderSize); err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

func (j *Journal) writable() error {
	if err := j.check(); err != nil {
		return err
	}
	if j.opts.ReadOnly {
		return block.ErrReadOnly
	}
	return nil
}

// zero records [off, off+n) as zeroes: WriteZeroes and Discard both, so a
// discard is part of the history like any write.
func (j *Journal) zero(off, n int64) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.writable(); err != nil {
		return err
	}
	if err := block.CheckRange(off, n, j.h.size); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	if !j.idx.fits(off, n) {
		return ErrIndexFull
	}
	if err := j.appendRec(&record{typ: recZero, a: j.h.seg, b: uint64(off), c: uint64(n)}, nil); err != nil {
		return err
	}
	return j.idx.insert(off, n, -1)
}

// Discard records the range as zeroes (the contract allows either old
// data or zeroes; zeroes keep every point exact).
func (j *Journal) Discard(off, n int64) error { return j.zero(off, n) }

// WriteZeroes records the range as zeroes; unmap changes nothing.
func (j *Journal) WriteZeroes(off, n int64, _ bool) error { return j.zero(off, n) }

// Resize is not supported: every point of the history has the base's size.
func (j *Journal) Resize(int64) error { return errors.ErrUnsupported }

// ReadvAt reads into bufs one after another.
func (j *Journal) ReadvAt(bufs [][]byte, off int64) (int, error) {
	total := 0
	for _, p := range bufs {
		if len(p) == 0 {
			continue
		}
		n, err := j.ReadAt(p, off)
		total += n
		off += int64(n)
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// WritevAt writes the buffers as one write (one record while it fits).
func (j *Journal) WritevAt(bufs [][]byte, off int64) (int, error) {
	var p []byte
	for _, b := range bufs {
		p = append(p, b...)
	}
	return j.WriteAt(p, off)
}

// Size is the base's size.
func (j *Journal) Size() int64 {
	j.mu.RLock()
	defer j.mu.RUnlock()
	if j.h == nil {
		return 0
	}
	return j.h.size
}

// ReadOnly reports whether the journal refuses writes.
func (j *Journal) ReadOnly() bool { return j.opts.ReadOnly }

// Drain forwards to the base: the journal itself never holds a request.
func (j *Journal) Drain(on bool) {
	if d, ok := j.base.(block.Drainer); ok {
		d.Drain(on)
	}
}

// Flush makes the writes so far a point: the data is synced, then the
// point record is written and synced. A flush with no writes since the
// last point adds nothing. Retention runs after a new point.
func (j *Journal) Flush() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.check(); err != nil {
		return err
	}
	if !j.h.dirty {
		return nil
	}
	if err := j.closePoint(""); err != nil {
		return err
	}
	return j.retain()
}

// closePoint turns the open segment into a point named name ("" for a
// flush point).
func (j *Journal) closePoint(name string) error {
	if err := j.sync(); err != nil {
		return err
	}
	r := &record{typ: recPoint, a: j.h.seg, b: uint64(j.opts.Now().UnixNano()), c: j.h.maxID + 1}
	if err := j.appendRec(r, []byte(name)); err != nil {
		return err
	}
	return j.sync()
}

// Close flushes (or, for an undo disk, throws the log away) and closes
// the log and the base.
func (j *Journal) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return block.ErrClosed
	}
	var first error
	if !j.opts.ReadOnly && !j.opts.Undo && j.h.dirty {
		first = j.closePoint("")
	}
	if j.opts.Undo {
		if j.path != "" {
			if err := os.Remove(j.path); err != nil && first == nil {
				first = fmt.Errorf("journal: removing the undo log: %w", err)
			}
		}
		j.f.Truncate(0)
	}
	if err := j.f.Close(); err != nil && first == nil {
		first = fmt.Errorf("journal: %w", err)
	}
	if err := j.base.Close(); err != nil && first == nil {
		first = err
	}
	j.closed = true
	return first
}
