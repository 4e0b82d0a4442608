// Package memory is guest physical memory as the VMM sees it: a set of
// host mappings, each backing a range of guest physical addresses (GPAs).
//
// Device code reads and writes guest memory only through this package. Every
// access is bounds-checked against the regions: a guest-supplied address that
// falls outside guest RAM, or a range that crosses a hole, is an error
// (ErrOutOfRange), never a crash. That is the whole point of the package:
// addresses come from a hostile guest.
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
}

// End returns the first GPA past the region.
func (r *Region) End() uint64 { return r.GPA + uint64(len(r.Data)) }

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
}

// New allocates anonymous, private host memory for each range of layout.
// Sizes must be page multiples and ranges must not overlap.
func New(layout []Layout) (*Memory, error) {
	ls := append([]Layout(nil), layout...)
	sort.Slice(ls, func(i, j int) bool { return ls[i].GPA < ls[j].GPA })
	m := &Memory{}
	page := uint64(unix.Getpagesize())
	for i, l := range ls {
		if l.Size == 0 || l.Size%page != 0 || l.GPA%page != 0 {
			m.Close()
			return nil, fmt.Errorf("memory: region %#x+%#x is not page aligned", l.GPA, l.Size)
		}
		if l.GPA+l.Size < l.GPA {
			m.Close()
			return nil, fmt.Errorf("memory: region %#x+%#x wraps around", l.GPA, l.Size)
		}
		if i > 0 && ls[i-1].GPA+ls[i-1].Size > l.GPA {
			m.Close()
			return nil, fmt.Errorf("memory: regions at %#x and %#x overlap", ls[i-1].GPA, l.GPA)
		}
		data, err := unix.Mmap(-1, 0, int(l.Size), unix.PROT_READ|unix.PROT_WRITE,
			unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("memory: mapping %d MiB of guest RAM: %w", l.Size>>20, err)
		}
		// Transparent huge pages cut EPT/NPT misses; failure only costs speed.
		_ = unix.Madvise(data, unix.MADV_HUGEPAGE)
		m.regions = append(m.regions, Region{GPA: l.GPA, Data: data})
		m.size += l.Size
	}
	m.mapped.Store(true)
	return m, nil
}

// Close unmaps guest RAM. No access may follow.
func (m *Memory) Close() error {
	if !m.mapped.Swap(false) && len(m.regions) == 0 {
		return nil
	}
	var first error
	for _, r := range m.regions {
		if err := unix.Munmap(r.Data); err != nil && first == nil {
			first = err
		}
	}
	m.regions = nil
	return first
}

// Regions returns the regions, sorted by GPA. The caller must not modify it.
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

// Slice returns the host bytes backing [gpa, gpa+n). The range must lie
// inside one region. The slice aliases guest memory: the guest may change it
// at any time, so callers copy out whatever they validate before using it.
func (m *Memory) Slice(gpa, n uint64) ([]byte, error) {
	r := m.find(gpa)
	if r == nil {
		return nil, fmt.Errorf("%w: %#x", ErrOutOfRange, gpa)
	}
	off := gpa - r.GPA
	if n > uint64(len(r.Data))-off {
		return nil, fmt.Errorf("%w: %#x+%#x", ErrOutOfRange, gpa, n)
	}
	return r.Data[off : off+n : off+n], nil
}

// ReadAt copies guest memory at gpa into p, with io.ReaderAt's contract except
// that a short read is always an error: either all of p is filled or none is.
func (m *Memory) ReadAt(p []byte, gpa int64) (int, error) {
	if gpa < 0 {
		return 0, ErrOutOfRange
	}
	s, err := m.Slice(uint64(gpa), uint64(len(p)))
	if err != nil {
		return 0, err
	}
	return copy(p, s), nil
}

// WriteAt copies p into guest memory at gpa, all or nothing.
func (m *Memory) WriteAt(p []byte, gpa int64) (int, error) {
	if gpa < 0 {
		return 0, ErrOutOfRange
	}
	s, err := m.Slice(uint64(gpa), uint64(len(p)))
	if err != nil {
		return 0, err
	}
	return copy(s, p), nil
}
