// Package stripe spreads a disk over several back-ends chunk by chunk (as
// RAID 0 does): chunk k of the disk is chunk k/N of child k%N. A request
// spanning chunks on different children runs on them concurrently, so N
// slow back-ends give up to N times the throughput of one.
//
// The disk's size is N times the smallest child's size rounded down to a
// whole chunk; bytes of larger children beyond that are unused.
package stripe

import (
	"fmt"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/filter"
	"github.com/viovmm/vio/block/internal/split"
)

// Chunk size bounds. A chunk is a multiple of 512 bytes so that a
// sector-aligned request never splits inside a sector.
const (
	MinChunk     = 512
	MaxChunk     = 1 << 30
	DefaultChunk = 64 << 10
	MaxChildren  = 64
)

type layout struct {
	n     int64
	chunk int64
	size  int64
}

func (l *layout) Size() int64 { return l.size }

func (l *layout) Map(off int64) (int, int64, int64) {
	k := off / l.chunk
	in := off % l.chunk
	return int(k % l.n), (k/l.n)*l.chunk + in, l.chunk - in
}

// CheckChunk says what is wrong with a chunk size, or nil.
func CheckChunk(chunk int64) error {
	if chunk < MinChunk || chunk > MaxChunk || chunk%512 != 0 {
		return fmt.Errorf("chunk size %d: want a multiple of 512 from %d to %d bytes", chunk, MinChunk, MaxChunk)
	}
	return nil
}

// New returns the children striped with chunk bytes per chunk. It owns
// them on success; on error the caller still does.
func New(children []block.Backend, chunk int64) (block.Backend, error) {
	if len(children) == 0 || len(children) > MaxChildren {
		return nil, fmt.Errorf("stripe: %d children: give 1 to %d", len(children), MaxChildren)
	}
	if err := CheckChunk(chunk); err != nil {
		return nil, fmt.Errorf("stripe: %w", err)
	}
	small := children[0].Size()
	for _, c := range children[1:] {
		small = min(small, c.Size())
	}
	per := small / chunk * chunk
	if per == 0 {
		return nil, fmt.Errorf("stripe: the smallest child (%d bytes) holds no whole chunk of %d bytes", small, chunk)
	}
	n := int64(len(children))
	if per > (1<<62)/n {
		return nil, fmt.Errorf("stripe: %d children of %d bytes make the disk too large", n, per)
	}
	l := &layout{n: n, chunk: chunk, size: per * n}
	return filter.View(split.New(children, l), split.Caps(children)), nil
}
