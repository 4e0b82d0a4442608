package journal

import (
	"errors"
	"sort"
)

// ErrIndexFull is returned by a write that would take the index past its
// bound (Options.MaxExtents): commit the journal into its base, or open it
// with a larger bound.
var ErrIndexFull = errors.New("journal: index full: commit the journal into its base (vio image journal commit)")

// chunkShift splits the disk into 1 MiB chunks, each with its own sorted
// extent list, so that an insert moves at most a chunk's worth of entries.
const chunkShift = 20

// extent maps the disk range [off, off+n) to log offset log, or to zeroes
// when log is -1.
type extent struct {
	off, n, log int64
}

func (e extent) end() int64 { return e.off + e.n }

// index maps the ranges the journal has written (in the segments of the
// current state) to where their data lies in the log; ranges it does not
// hold read from the base. Its size is bounded by max extents.
type index struct {
	chunks map[int64][]extent
	count  int
	max    int
}

func newIndex(max int) *index { return &index{chunks: map[int64][]extent{}, max: max} }

// fits reports whether inserting [off, off+n) stays within the bound:
// each chunk touched can gain at most two extents (the new one and a
// split).
func (x *index) fits(off, n int64) bool {
	if n <= 0 {
		return true
	}
	chunks := (off+n-1)>>chunkShift - off>>chunkShift + 1
	return int64(x.count)+2*chunks <= int64(x.max)
}

// insert maps [off, off+n) to log (or zeroes, log -1). It fails with
// ErrIndexFull, changing nothing, when the bound could be crossed.
func (x *index) insert(off, n, log int64) error {
	if n <= 0 {
		return nil
	}
	if !x.fits(off, n) {
		return ErrIndexFull
	}
	for n > 0 {
		c := off >> chunkShift
		end := min(off+n, (c+1)<<chunkShift)
		l := end - off
		x.put(c, extent{off, l, log})
		off, n = end, n-l
		if log >= 0 {
			log += l
		}
	}
	return nil
}

func (x *index) put(c int64, e extent) {
	es := x.chunks[c]
	i := sort.Search(len(es), func(i int) bool { return es[i].end() > e.off })
	j := i
	for j < len(es) && es[j].off < e.end() {
		j++
	}
	// es[i:j] overlap e: keep what sticks out on either side.
	out := make([]extent, 0, len(es)-(j-i)+3)
	out = append(out, es[:i]...)
	if i < j && es[i].off < e.off {
		out = append(out, extent{es[i].off, e.off - es[i].off, es[i].log})
	}
	out = append(out, e)
	if i < j && es[j-1].end() > e.end() {
		l := es[j-1]
		cut := e.end() - l.off
		nl := l.log
		if nl >= 0 {
			nl += cut
		}
		out = append(out, extent{e.end(), l.end() - e.end(), nl})
	}
	out = append(out, es[j:]...)
	x.count += len(out) - len(es)
	x.chunks[c] = out
}

// walk calls fn for consecutive pieces covering [off, off+n): mapped
// pieces with their log offset (or -1 for zeroes), unmapped ones with
// mapped false.
func (x *index) walk(off, n int64, fn func(off, n, log int64, mapped bool) error) error {
	end := off + n
	for off < end {
		c := off >> chunkShift
		cend := min(end, (c+1)<<chunkShift)
		es := x.chunks[c]
		i := sort.Search(len(es), func(i int) bool { return es[i].end() > off })
		for off < cend {
			if i >= len(es) || es[i].off >= cend {
				if err := fn(off, cend-off, 0, false); err != nil {
					return err
				}
				off = cend
				break
			}
			e := es[i]
			if e.off > off {
				if err := fn(off, e.off-off, 0, false); err != nil {
					return err
				}
				off = e.off
			}
			l := min(e.end(), cend) - off
			lg := e.log
			if lg >= 0 {
				lg += off - e.off
			}
			if err := fn(off, l, lg, true); err != nil {
				return err
			}
			off += l
			i++
		}
	}
	return nil
}

// all calls fn for every extent in disk order.
func (x *index) all(fn func(e extent) error) error {
	cs := make([]int64, 0, len(x.chunks))
	for c := range x.chunks {
		cs = append(cs, c)
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i] < cs[j] })
	for _, c := range cs {
		for _, e := range x.chunks[c] {
			if err := fn(e); err != nil {
				return err
			}
		}
	}
	return nil
}
