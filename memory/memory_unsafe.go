// vio runs on x86-64 only: guest and host are both little-endian, so a
// native atomic load is a little-endian load.
package memory

import (
	"fmt"
	"sync/atomic"
	"unsafe"
)

// HostAddr returns the host virtual address of the region's first byte, as
// KVM_SET_USER_MEMORY_REGION wants it.
func (r *Region) HostAddr() uintptr { return uintptr(unsafe.Pointer(&r.Data[0])) }

// The guest updates shared structures (virtqueue indices, for example)
// concurrently with the VMM. These accessors give single-copy atomic,
// ordered loads and stores of naturally aligned values, which is what the
// virtio memory model assumes. Go has no 16-bit atomics, so a 16-bit access
// goes through the aligned 32-bit word that contains it.

func (m *Memory) aligned(gpa, size uint64) (*Region, uint64, unsafe.Pointer, error) {
	if gpa%size != 0 {
		return nil, 0, nil, fmt.Errorf("%w: %#x is not %d-byte aligned", ErrOutOfRange, gpa, size)
	}
	r, off, err := m.locate(gpa, size)
	if err != nil {
		return nil, 0, nil, err
	}
	return r, off, unsafe.Pointer(&r.Data[off]), nil
}

// LoadUint16 atomically loads the little-endian uint16 at gpa.
func (m *Memory) LoadUint16(gpa uint64) (uint16, error) {
	if gpa%2 != 0 {
		return 0, fmt.Errorf("%w: %#x is not 2-byte aligned", ErrOutOfRange, gpa)
	}
	// Regions are page aligned, so the aligned word holding an aligned
	// uint16 is always in the same region.
	_, _, p, err := m.aligned(gpa&^3, 4)
	if err != nil {
		return 0, err
	}
	v := atomic.LoadUint32((*uint32)(p))
	return uint16(v >> ((gpa & 3) * 8)), nil
}

// StoreUint16 atomically stores v, little-endian, at gpa, and marks the page
// dirty when tracking is on (after the store, as WriteAt does).
func (m *Memory) StoreUint16(gpa uint64, v uint16) error {
	if gpa%2 != 0 {
		return fmt.Errorf("%w: %#x is not 2-byte aligned", ErrOutOfRange, gpa)
	}
	r, off, p, err := m.aligned(gpa&^3, 4)
	if err != nil {
		return err
	}
	shift := (gpa & 3) * 8
	w := (*uint32)(p)
	for {
		old := atomic.LoadUint32(w)
		nw := old&^(0xffff<<shift) | uint32(v)<<shift
		if atomic.CompareAndSwapUint32(w, old, nw) {
			break
		}
	}
	if m.tracking.Load() {
		r.mark(off, 4)
	}
	return nil
}

// LoadUint32 atomically loads the little-endian uint32 at gpa.
func (m *Memory) LoadUint32(gpa uint64) (uint32, error) {
	_, _, p, err := m.aligned(gpa, 4)
	if err != nil {
		return 0, err
	}
	return atomic.LoadUint32((*uint32)(p)), nil
}

// StoreUint32 atomically stores v, little-endian, at gpa, and marks the page
// dirty when tracking is on.
func (m *Memory) StoreUint32(gpa uint64, v uint32) error {
	r, off, p, err := m.aligned(gpa, 4)
	if err != nil {
		return err
	}
	atomic.StoreUint32((*uint32)(p), v)
	if m.tracking.Load() {
		r.mark(off, 4)
	}
	return nil
}
