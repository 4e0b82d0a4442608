package memory

import (
	"fmt"
	"iter"
	"math/bits"
	"sync/atomic"
)

// DirtyPageSize is the granule of dirty tracking: one bit per 4 KiB page,
// the same as KVM's dirty log on x86, so the two bitmaps line up bit for
// bit and can be merged with an OR.
const DirtyPageSize = 4096

const dirtyShift = 12 // log2(DirtyPageSize)

// bitmapWords returns the uint64 words a bitmap of a size-byte region needs.
func bitmapWords(size uint64) int {
	pages := (size + DirtyPageSize - 1) / DirtyPageSize
	return int((pages + 63) / 64)
}

// BitmapWords returns the length of region i's dirty bitmap in words (what
// TakeDirty returns and what CollectDirty hands its getLog), or 0 if there
// is no region i.
func (m *Memory) BitmapWords(i int) int {
	if i < 0 || i >= len(m.regions) {
		return 0
	}
	return len(m.regions[i].dirty)
}

// mark sets the dirty bits of the pages holding [off, off+n) of the region.
// The range was checked by the caller; n == 0 marks nothing.
func (r *Region) mark(off, n uint64) {
	if n == 0 {
		return
	}
	first, last := off>>dirtyShift, (off+n-1)>>dirtyShift
	for w := first / 64; w <= last/64; w++ {
		mask := ^uint64(0)
		if w == first/64 {
			mask &= ^uint64(0) << (first % 64)
		}
		if w == last/64 {
			mask &= ^uint64(0) >> (63 - last%64)
		}
		// Always the locked OR, even when the bits look set already. The
		// OR is what orders the caller's writes to guest memory before a
		// TakeDirty that clears the bit: skipping it after a plain load
		// that saw the bit set (from an earlier mark) lets a TakeDirty take
		// that bit and copy the page before the caller's stores are
		// visible, and the write is lost. TestConcurrentWritersLoseNoPage
		// caught exactly that.
		atomic.OrUint64(&r.dirty[w], mask)
	}
}

// EnableDirtyTracking starts recording the pages the VMM writes and clears
// what was recorded before. Call it before the first full copy of guest
// RAM in a migration: a write finished before the call is in that copy, a
// write after it is in the bitmap.
//
// Writes through slices from Slice, rather than SliceForWrite, are never
// recorded.
func (m *Memory) EnableDirtyTracking() {
	for i := range m.regions {
		for w := range m.regions[i].dirty {
			atomic.StoreUint64(&m.regions[i].dirty[w], 0)
		}
	}
	m.tracking.Store(true)
}

// DisableDirtyTracking stops recording; writes then cost one predictable
// branch more than without tracking. Bits already set stay for TakeDirty.
func (m *Memory) DisableDirtyTracking() { m.tracking.Store(false) }

// DirtyTracking reports whether tracking is on.
func (m *Memory) DirtyTracking() bool { return m.tracking.Load() }

// TakeDirty returns region i's dirty bitmap (bit p%64 of word p/64 is page
// p of the region, counting from Region.GPA in DirtyPageSize pages) and
// clears it. Each word is swapped with zero atomically, so a write racing
// with TakeDirty is either in the returned bitmap or in the next one, never
// lost.
func (m *Memory) TakeDirty(i int) ([]uint64, error) {
	if i < 0 || i >= len(m.regions) {
		return nil, fmt.Errorf("memory: no region %d (have %d)", i, len(m.regions))
	}
	out := make([]uint64, len(m.regions[i].dirty))
	m.regions[i].takeInto(out)
	return out, nil
}

// takeInto ORs the region's bitmap into dst, clearing it.
func (r *Region) takeInto(dst []uint64) {
	for w := range r.dirty {
		// Most words are zero in a converging migration: read before
		// swapping so they cost no locked instruction.
		if atomic.LoadUint64(&r.dirty[w]) != 0 {
			dst[w] |= atomic.SwapUint64(&r.dirty[w], 0)
		}
	}
}

// CollectDirty returns the pages of region i written since the previous
// call by anyone: vCPUs, as the hypervisor's dirty log reports them, and the
// VMM, as this package recorded them. Both logs are fetched and cleared.
//
// getLog fetches and clears the hypervisor's log for the region into a
// zeroed bitmap of BitmapWords(i) words; with KVM and region i registered
// as slot i with dirty logging on, that is
//
//	func(b []uint64) error { return vm.GetDirtyLog(uint32(i), b) }
//
// A nil getLog collects only the VMM's writes.
func (m *Memory) CollectDirty(i int, getLog func(bitmap []uint64) error) ([]uint64, error) {
	if i < 0 || i >= len(m.regions) {
		return nil, fmt.Errorf("memory: no region %d (have %d)", i, len(m.regions))
	}
	out := make([]uint64, len(m.regions[i].dirty))
	if getLog != nil {
		if err := getLog(out); err != nil {
			return nil, fmt.Errorf("memory: fetching the dirty log of region %d: %w", i, err)
		}
	}
	m.regions[i].takeInto(out)
	return out, nil
}

// MergeDirty ORs src into dst; the bitmaps must have the same length.
func MergeDirty(dst, src []uint64) error {
	if len(dst) != len(src) {
		return fmt.Errorf("memory: merging dirty bitmaps of %d and %d words", len(dst), len(src))
	}
	for i, w := range src {
		dst[i] |= w
	}
	return nil
}

// DirtyPages yields the page numbers set in bitmap, in increasing order.
func DirtyPages(bitmap []uint64) iter.Seq[uint64] {
	return func(yield func(uint64) bool) {
		for i, w := range bitmap {
			for w != 0 {
				b := uint64(bits.TrailingZeros64(w))
				if !yield(uint64(i)*64 + b) {
					return
				}
				w &= w - 1
			}
		}
	}
}
