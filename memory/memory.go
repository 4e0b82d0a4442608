// Package memory is guest physical memory as the VMM sees it: a set of
// host mappings, each backing a range of guest physical addresses (GPAs).
//
// Device code reads and writes guest memory only through this package. Every
// access is bounds-checked against the regions: a guest-supplied address that
// falls outside guest RAM, or a range that crosses a hole, is an error
// (ErrOutOfRange), never a crash. That is the whole point of the package:
// addresses come from a hostile guest.
//
// Three further jobs live here because they all hinge on "every access goes
// through this package":
//   - sharing: RAM can be backed by a memfd (Options.Backing), so another
//     process (a vhost-user back-end, a migration peer on the same host) can
//     map the very same pages from a file descriptor (Region.File,
//     NewFromFile);
//   - dirty tracking: with EnableDirtyTracking every write the VMM makes
//     (WriteAt, the atomic stores, SliceForWrite, MarkDirty) sets a bit per
//     4 KiB page, which live migration merges with KVM's log of vCPU writes
//     (CollectDirty);
//   - DMA: devices should reach memory through the DMA interface, which
//     *Memory implements as the identity so that a vIOMMU can later stand
//     between devices and RAM.
package memory

import (
	"errors"
	"fmt"
	"sort"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// ErrOutOfRange reports an access that is not wholly inside one region of
// guest RAM.
var ErrOutOfRange = errors.New("memory: guest address out of range")

// Region is one contiguous range of guest RAM backed by one host mapping.
type Region struct {
	GPA  uint64 // first guest physical address
	Data []byte // host view; len(Data) is the region's size

	// Backing file, when the region can be shared: fd >= 0 and shared.
	fd     int
	fdOff  uint64
	shared bool

	// dirty has one bit per DirtyPageSize page of the region (bit i%64 of
	// word i/64 for page i), set by VMM writes while tracking is on.
	dirty []uint64
}

// End returns the first GPA past the region.
func (r *Region) End() uint64 { return r.GPA + uint64(len(r.Data)) }

// Size returns the region's length in bytes.
func (r *Region) Size() uint64 { return uint64(len(r.Data)) }

// File returns the file descriptor and offset at which the region's bytes
// live, for handing guest RAM to another process (vhost-user's
// SET_MEM_TABLE sends exactly fd, offset, size and GPA). ok is false when
// the region has no shareable backing: anonymous memory, or a MAP_PRIVATE
// mapping, whose file no longer shows what the guest sees.
//
// The fd belongs to the Memory and is closed by Close; a receiver gets its
// own copy through SCM_RIGHTS. Several regions may share one fd at
// different offsets.
func (r *Region) File() (fd int, offset uint64, ok bool) {
	if !r.shared || r.fd < 0 {
		return -1, 0, false
	}
	return r.fd, r.fdOff, true
}

// Layout names one range of guest RAM to allocate.
type Layout struct {
	GPA  uint64
	Size uint64
}

// Memory is guest RAM. Its region list is fixed at creation, so lookups need
// no lock; the bytes themselves are shared with the guest and with KVM.
type Memory struct {
	regions []Region // sorted by GPA, non-overlapping
	size    uint64
	mapped  atomic.Bool
	fd      int  // backing file, closed by Close when ownsFD
	ownsFD  bool // so that a zero Memory never closes fd 0

	// tracking gates dirty marking. When off, a write costs one load of
	// this flag and a branch that always goes the same way.
	tracking atomic.Bool
}

// New allocates guest RAM for each range of layout with DefaultBacking.
// Sizes must be page multiples and ranges must not overlap.
func New(layout []Layout) (*Memory, error) {
	return NewWithOptions(layout, Options{})
}

// checkLayout sorts ls by GPA and checks it: page-aligned, non-empty, no
// wrap-around past 2^64, no overlaps.
func checkLayout(ls []Layout) error {
	sort.Slice(ls, func(i, j int) bool { return ls[i].GPA < ls[j].GPA })
	page := uint64(unix.Getpagesize())
	for i, l := range ls {
		if l.Size == 0 || l.Size%page != 0 || l.GPA%page != 0 {
			return fmt.Errorf("memory: region %#x+%#x is not page aligned", l.GPA, l.Size)
		}
		// End() must be representable: a region may not reach 2^64.
		if l.GPA+l.Size <= l.GPA {
			return fmt.Errorf("memory: region %#x+%#x wraps around", l.GPA, l.Size)
		}
		if l.Size > uint64(maxInt) {
			return fmt.Errorf("memory: region %#x+%#x is too large to map", l.GPA, l.Size)
		}
		if i > 0 && ls[i-1].GPA+ls[i-1].Size > l.GPA {
			return fmt.Errorf("memory: regions at %#x and %#x overlap", ls[i-1].GPA, l.GPA)
		}
	}
	return nil
}

const maxInt = int(^uint(0) >> 1)

// addRegion records a mapped region and its (empty) dirty bitmap.
func (m *Memory) addRegion(r Region) {
	r.dirty = make([]uint64, bitmapWords(r.Size()))
	m.regions = append(m.regions, r)
	m.size += r.Size()
}

// Close unmaps guest RAM and closes its backing file. No access may follow.
func (m *Memory) Close() error {
	if !m.mapped.Swap(false) && len(m.regions) == 0 && !m.ownsFD {
		return nil
	}
	var first error
	for _, r := range m.regions {
		if err := unix.Munmap(r.Data); err != nil && first == nil {
			first = err
		}
	}
	m.regions = nil
	if m.ownsFD {
		if err := unix.Close(m.fd); err != nil && first == nil {
			first = err
		}
		m.fd, m.ownsFD = -1, false
	}
	return first
}

// Regions returns the regions, sorted by GPA. The caller must not modify it.
// Region i is the i-th KVM memory slot in vmm, and the index TakeDirty and
// CollectDirty take.
func (m *Memory) Regions() []Region { return m.regions }

// Size returns the total bytes of guest RAM.
func (m *Memory) Size() uint64 { return m.size }

// find returns the region holding gpa, or nil.
func (m *Memory) find(gpa uint64) *Region {
	// Few regions (usually one or two): a linear scan beats a binary search.
	for i := range m.regions {
		r := &m.regions[i]
		if gpa >= r.GPA && gpa-r.GPA < uint64(len(r.Data)) {
			return r
		}
	}
	return nil
}

// locate returns the region holding all of [gpa, gpa+n) and gpa's offset in
// it. The comparison is written so that gpa+n never has to be computed:
// a length that would wrap past 2^64 fails like any other overrun.
func (m *Memory) locate(gpa, n uint64) (*Region, uint64, error) {
	r := m.find(gpa)
	if r == nil {
		return nil, 0, fmt.Errorf("%w: %#x", ErrOutOfRange, gpa)
	}
	off := gpa - r.GPA
	if n > uint64(len(r.Data))-off {
		return nil, 0, fmt.Errorf("%w: %#x+%#x", ErrOutOfRange, gpa, n)
	}
	return r, off, nil
}

// Slice returns the host bytes backing [gpa, gpa+n) for reading. The range
// must lie inside one region. The slice aliases guest memory: the guest may
// change it at any time, so callers copy out whatever they validate before
// using it.
//
// Writes through this slice are invisible to dirty tracking; a caller that
// writes must use SliceForWrite instead.
func (m *Memory) Slice(gpa, n uint64) ([]byte, error) {
	r, off, err := m.locate(gpa, n)
	if err != nil {
		return nil, err
	}
	return r.Data[off : off+n : off+n], nil
}

// SliceForWrite is Slice for a caller that will write into the bytes (a
// device filling a driver's buffer). It marks the range dirty now; because
// the caller's writes come later, a TakeDirty between this call and the last
// write would miss them, so the caller must also call MarkDirty(gpa, n) once
// it has finished writing (the virtio layer: when it pushes the chain to the
// used ring, which is where QEMU marks DMA buffers dirty too).
func (m *Memory) SliceForWrite(gpa, n uint64) ([]byte, error) {
	r, off, err := m.locate(gpa, n)
	if err != nil {
		return nil, err
	}
	if m.tracking.Load() {
		r.mark(off, n)
	}
	return r.Data[off : off+n : off+n], nil
}

// MarkDirty records that the VMM wrote [gpa, gpa+n) by some path this
// package did not see (a slice from SliceForWrite, a read(2) into guest
// memory). It checks the range like Slice does.
func (m *Memory) MarkDirty(gpa, n uint64) error {
	r, off, err := m.locate(gpa, n)
	if err != nil {
		return err
	}
	if m.tracking.Load() {
		r.mark(off, n)
	}
	return nil
}

// ReadAt copies guest memory at gpa into p, with io.ReaderAt's contract except
// that a short read is always an error: either all of p is filled or none is.
func (m *Memory) ReadAt(p []byte, gpa int64) (int, error) {
	if gpa < 0 {
		return 0, fmt.Errorf("%w: negative address %d", ErrOutOfRange, gpa)
	}
	s, err := m.Slice(uint64(gpa), uint64(len(p)))
	if err != nil {
		return 0, err
	}
	return copy(p, s), nil
}

// WriteAt copies p into guest memory at gpa, all or nothing, and marks the
// pages dirty when tracking is on.
func (m *Memory) WriteAt(p []byte, gpa int64) (int, error) {
	if gpa < 0 {
		return 0, fmt.Errorf("%w: negative address %d", ErrOutOfRange, gpa)
	}
	r, off, err := m.locate(uint64(gpa), uint64(len(p)))
	if err != nil {
		return 0, err
	}
	n := copy(r.Data[off:], p)
	// Mark after the copy: a concurrent TakeDirty then either sees the bit
	// (and its caller reads the new bytes) or clears it after the copy, in
	// which case the bit is set again for the next round. Marking first
	// could let a TakeDirty in between send the old bytes and lose the
	// write.
	if m.tracking.Load() {
		r.mark(off, uint64(n))
	}
	return n, nil
}
