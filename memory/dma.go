package memory

import "errors"

// DMA is memory as a device sees it. Devices (virtio queues, device models)
// should reach guest memory only through it, so that an IOMMU can stand
// between device and RAM without the device knowing; *Memory is the
// identity implementation, used when there is no IOMMU.
//
// Contract, for every implementation:
//
//   - Addresses are device addresses (IOVAs): what the driver programmed
//     into the device. Only the identity implementation equates them with
//     guest physical addresses.
//   - Every access is checked. A failed access changes nothing and returns
//     an error matching ErrOutOfRange (the address is not guest RAM) or
//     ErrNotMapped (a translation has no mapping for the range, or not one
//     with the permission the access needs). Both mean "the driver gave a
//     bad address": the device fails the request or the queue, it does not
//     panic, and it must not retry in a loop.
//   - Slice and SliceForWrite return one contiguous host slice covering the
//     whole range, or an error. A translation may refuse a range whose pages
//     map to separate host ranges (ErrNotMapped); a device that can work
//     with a scatter list should then split the request at translation
//     granule boundaries.
//   - Bytes from Slice are read only for the device: writing through them is
//     allowed by Go but bypasses dirty tracking and write permission. A
//     device that writes uses SliceForWrite, and calls MarkDirty for the
//     range after its last write through the slice (see
//     Memory.SliceForWrite for why both are needed).
//   - ReadAt and WriteAt are all or nothing; the atomic accessors need
//     natural alignment and have the memory-ordering guarantees documented
//     on Memory.LoadUint16.
//   - Mappings can change (a guest IOMMU driver unmaps an IOVA, guest RAM
//     is hot-plugged). Generation returns a counter that grows by at least
//     one each time a change takes effect that may invalidate earlier
//     results. A holder of slices (a queue's rings, a request's buffers)
//     records the generation when it resolves them and, at the start of each
//     unit of work (popping or pushing a chain), re-resolves if the
//     generation moved. An implementation that unmaps must bump the
//     generation before it reports the unmap as complete to the guest (an
//     IOTLB invalidation), and must keep the old host memory mapped until
//     devices have moved on, because Go cannot revoke a slice.
type DMA interface {
	Slice(addr, n uint64) ([]byte, error)
	SliceForWrite(addr, n uint64) ([]byte, error)
	MarkDirty(addr, n uint64) error
	ReadAt(p []byte, addr int64) (int, error)
	WriteAt(p []byte, addr int64) (int, error)
	LoadUint16(addr uint64) (uint16, error)
	StoreUint16(addr uint64, v uint16) error
	LoadUint32(addr uint64) (uint32, error)
	StoreUint32(addr uint64, v uint32) error
	Generation() uint64
}

// ErrNotMapped reports a device address that a DMA translation does not
// map, or maps without the permission the access needs.
var ErrNotMapped = errors.New("memory: device address not mapped")

var _ DMA = (*Memory)(nil)

// Generation is part of DMA. A Memory's regions are fixed for its lifetime,
// so the identity mapping never changes and the generation is always 0.
func (m *Memory) Generation() uint64 { return 0 }
