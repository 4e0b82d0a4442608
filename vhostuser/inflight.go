package vhostuser

import (
	"cmp"
	"errors"
	"fmt"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/virtio"
)

// Inflight I/O tracking (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD): the
// back-end records in a shared region which chains it took and has not
// completed. The front-end keeps the region (GET_INFLIGHT_FD hands it
// over) and gives it to the back-end that follows a crash or restart
// (SET_INFLIGHT_FD), which completes those chains before it goes on.
//
// The region holds, per queue, a 16-byte header and a 16-byte entry per
// descriptor of a split ring (the vhost-user specification's layout):
//
//	header: features u64 (0) | version u16 (1; 0: never used) |
//	        desc_num u16 | last_batch_head u16 | used_idx u16
//	entry:  inflight u8 | padding [5]u8 | next u16 | counter u64
//
// and each queue's part is rounded up to 64 bytes, as other back-ends
// lay it out, so that a region outlives a change of back-end program.
const (
	inflightHeaderSize = 16
	inflightEntrySize  = 16
	inflightAlign      = 64
	inflightVersion    = 1

	ihVersion       = 8
	ihDescNum       = 10
	ihLastBatchHead = 12
	ihUsedIdx       = 14

	ieInflight = 0
	ieNext     = 6
	ieCounter  = 8
)

// ErrBadInflight reports an inflight region, or a description of one,
// the back-end cannot use: the region is refused, and no ring is served
// from it.
var ErrBadInflight = errors.New("vhostuser: bad inflight region")

// inflightQueueSize is the bytes one queue of queueSize descriptors takes.
func inflightQueueSize(queueSize uint16) uint64 {
	n := inflightHeaderSize + inflightEntrySize*uint64(queueSize)
	return (n + inflightAlign - 1) &^ (inflightAlign - 1)
}

func pageRound(n uint64) uint64 {
	page := uint64(unix.Getpagesize())
	return (n + page - 1) &^ (page - 1)
}

// inflightRegion is a mapped inflight region.
type inflightRegion struct {
	mem       *memory.Memory // the region at "address" 0
	numQueues uint16
	queueSize uint16
}

// checkInflightShape checks the queue count and size a front-end gives.
func checkInflightShape(numQueues, queueSize uint16, maxQueues int) error {
	switch {
	case numQueues == 0 || int(numQueues) > maxQueues:
		return fmt.Errorf("%w: %d queues (the device has %d)", ErrBadInflight, numQueues, maxQueues)
	case queueSize == 0 || queueSize&(queueSize-1) != 0 || queueSize > virtio.MaxQueueSize:
		return fmt.Errorf("%w: queue size %d (a power of two up to %d)", ErrBadInflight, queueSize, virtio.MaxQueueSize)
	}
	return nil
}

// newInflightRegion makes a zeroed region for numQueues queues of
// queueSize descriptors (GET_INFLIGHT_FD). It returns the region and a
// descriptor of it for the front-end, which the caller closes once sent.
func newInflightRegion(numQueues, queueSize uint16, maxQueues int) (*inflightRegion, Inflight, int, error) {
	if err := checkInflightShape(numQueues, queueSize, maxQueues); err != nil {
		return nil, Inflight{}, -1, err
	}
	size := pageRound(uint64(numQueues) * inflightQueueSize(queueSize))
	fd, err := unix.MemfdCreate("vio-vhost-inflight", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, Inflight{}, -1, fmt.Errorf("vhostuser: inflight region: %w", err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		unix.Close(fd)
		return nil, Inflight{}, -1, fmt.Errorf("vhostuser: inflight region: %w", err)
	}
	mem, err := memory.NewFromFile(fd, []memory.FileRegion{{Size: size}}, memory.Shared)
	if err != nil {
		unix.Close(fd)
		return nil, Inflight{}, -1, fmt.Errorf("vhostuser: inflight region: %w", err)
	}
	desc := Inflight{MmapSize: size, NumQueues: numQueues, QueueSize: queueSize}
	return &inflightRegion{mem: mem, numQueues: numQueues, queueSize: queueSize}, desc, fd, nil
}

// mapInflightRegion maps the region a front-end hands back
// (SET_INFLIGHT_FD). fd stays the caller's. The description is checked
// here; the contents when a ring starts on them (inflightQueue.recover).
func mapInflightRegion(d Inflight, fd int, maxQueues int) (*inflightRegion, error) {
	if err := checkInflightShape(d.NumQueues, d.QueueSize, maxQueues); err != nil {
		return nil, err
	}
	need := uint64(d.NumQueues) * inflightQueueSize(d.QueueSize)
	if d.MmapSize < need {
		return nil, fmt.Errorf("%w: %d bytes for %d queues of %d descriptors, which need %d",
			ErrBadInflight, d.MmapSize, d.NumQueues, d.QueueSize, need)
	}
	// Only what the queues need is mapped; memory.NewFromFile checks that
	// the file holds it (a shorter one would be SIGBUS) and seals a memfd
	// against shrinking.
	mem, err := memory.NewFromFile(fd, []memory.FileRegion{{Size: pageRound(need), Offset: d.MmapOffset}}, memory.Shared)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadInflight, err)
	}
	return &inflightRegion{mem: mem, numQueues: d.NumQueues, queueSize: d.QueueSize}, nil
}

func (r *inflightRegion) close() { r.mem.Close() }

// queue returns ring i's part of the region for a ring of ringSize
// descriptors, or nil when the region has no part for it.
func (r *inflightRegion) queue(i int, ringSize uint16) (*inflightQueue, error) {
	if i >= int(r.numQueues) {
		return nil, nil
	}
	if ringSize > r.queueSize {
		return nil, fmt.Errorf("%w: vring %d has %d descriptors, the region tracks %d", ErrBadInflight, i, ringSize, r.queueSize)
	}
	return &inflightQueue{mem: r.mem, base: uint64(i) * inflightQueueSize(r.queueSize), descNum: r.queueSize}, nil
}

// inflightQueue is one queue's part of a region, and the log a queue
// writes into it (virtio.InflightLog). Offsets are checked when it is
// made, so its accesses cannot fail.
type inflightQueue struct {
	mem     *memory.Memory
	base    uint64
	descNum uint16
	counter uint64 // the next chain's counter
}

var _ virtio.InflightLog = (*inflightQueue)(nil)

func (q *inflightQueue) entry(head uint16) uint64 {
	return q.base + inflightHeaderSize + inflightEntrySize*uint64(head)
}

// The region's fields are accessed with atomics: a store must reach the
// region in program order (a crash may come between any two), and the
// compiler may not reorder plain stores around them. The accesses are
// within the mapping (checked when q was made), so they do not fail.
func (q *inflightQueue) load16(off uint64) uint16 {
	v, _ := q.mem.LoadUint16(off)
	return v
}

func (q *inflightQueue) store16(off uint64, v uint16) { _ = q.mem.StoreUint16(off, v) }

func (q *inflightQueue) load32(off uint64) uint32 {
	v, _ := q.mem.LoadUint32(off)
	return v
}

func (q *inflightQueue) store32(off uint64, v uint32) { _ = q.mem.StoreUint32(off, v) }

func (q *inflightQueue) load64(off uint64) uint64 {
	return uint64(q.load32(off)) | uint64(q.load32(off+4))<<32
}

func (q *inflightQueue) store64(off uint64, v uint64) {
	q.store32(off, uint32(v))
	q.store32(off+4, uint32(v>>32))
}

// Taken implements virtio.InflightLog: the counter first, then the flag
// that makes the entry count (its padding bytes are written as zero).
func (q *inflightQueue) Taken(head uint16) {
	e := q.entry(head)
	q.store64(e+ieCounter, q.counter)
	q.counter++
	q.store32(e+ieInflight, 1)
}

// Completing implements virtio.InflightLog: the head becomes the last
// batch (of one), which a successor checks against used.idx.
func (q *inflightQueue) Completing(head uint16) {
	q.store16(q.entry(head)+ieNext, q.load16(q.base+ihLastBatchHead))
	q.store16(q.base+ihLastBatchHead, head)
}

// Completed implements virtio.InflightLog.
func (q *inflightQueue) Completed(head uint16, usedIdx uint16) {
	q.store32(q.entry(head)+ieInflight, 0)
	q.store16(q.base+ihUsedIdx, usedIdx)
}

// recover reads the queue's part before its ring starts, for a ring of
// ringSize descriptors whose used.idx in guest memory is usedIdx. A part
// never used (version 0) is initialized and reports fresh: the ring
// starts from the front-end's base. Otherwise it completes the record of
// a push the previous back-end was in (used.idx moved past the region's
// used_idx), and returns the heads taken and not completed, oldest
// first; the ring then resumes with used.idx at usedIdx and the avail
// ring at usedIdx plus their count. A region that contradicts itself or
// the ring is refused.
func (q *inflightQueue) recover(ringSize, usedIdx uint16) (resubmit []uint16, fresh bool, err error) {
	version := q.load16(q.base + ihVersion)
	if version == 0 {
		for off := uint64(0); off < inflightQueueSize(q.descNum); off += 4 {
			q.store32(q.base+off, 0)
		}
		q.store16(q.base+ihDescNum, q.descNum)
		q.store16(q.base+ihUsedIdx, usedIdx)
		q.store16(q.base+ihVersion, inflightVersion)
		return nil, true, nil
	}
	features := q.load64(q.base)
	descNum := q.load16(q.base + ihDescNum)
	switch {
	case version != inflightVersion:
		return nil, false, fmt.Errorf("%w: version %d (this back-end knows %d)", ErrBadInflight, version, inflightVersion)
	case features != 0:
		return nil, false, fmt.Errorf("%w: unknown features %#x", ErrBadInflight, features)
	case descNum != q.descNum:
		return nil, false, fmt.Errorf("%w: %d descriptors recorded, the front-end says %d", ErrBadInflight, descNum, q.descNum)
	}
	// A push in progress: used.idx in guest memory is ahead of the
	// record, by the size of the batch being pushed; those heads, linked
	// from last_batch_head, completed.
	if batch := usedIdx - q.load16(q.base+ihUsedIdx); batch != 0 {
		if batch > ringSize {
			return nil, false, fmt.Errorf("%w: used.idx %d is %d ahead of the recorded %d, ring size %d",
				ErrBadInflight, usedIdx, batch, usedIdx-batch, ringSize)
		}
		h := q.load16(q.base + ihLastBatchHead)
		for range batch {
			if h >= descNum {
				return nil, false, fmt.Errorf("%w: last batch lists head %d of %d", ErrBadInflight, h, descNum)
			}
			e := q.entry(h)
			q.store32(e+ieInflight, 0)
			h = q.load16(e + ieNext)
		}
		q.store16(q.base+ihUsedIdx, usedIdx)
	}
	type taken struct {
		head    uint16
		counter uint64
	}
	var list []taken
	for h := range descNum {
		e := q.entry(h)
		switch f := q.load32(e+ieInflight) & 0xff; f {
		case 0:
			continue
		case 1:
		default:
			return nil, false, fmt.Errorf("%w: head %d has inflight flag %d", ErrBadInflight, h, f)
		}
		if h >= ringSize {
			return nil, false, fmt.Errorf("%w: head %d in flight on a ring of %d", ErrBadInflight, h, ringSize)
		}
		list = append(list, taken{h, q.load64(e + ieCounter)})
	}
	slices.SortFunc(list, func(a, b taken) int {
		return cmp.Or(cmp.Compare(a.counter, b.counter), cmp.Compare(a.head, b.head))
	})
	q.counter = 0
	for _, t := range list {
		resubmit = append(resubmit, t.head)
		q.counter = max(q.counter, t.counter+1)
	}
	return resubmit, false, nil
}
