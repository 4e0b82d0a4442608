package virtio

import (
	"encoding/binary"
	"fmt"
	"math"
	"sync"

	"github.com/viovmm/vio/irq"
	"github.com/viovmm/vio/memory"
)

// Split virtqueue layout (spec 2.7).
const (
	descSize = 16

	descFNext     = 1
	descFWrite    = 2
	descFIndirect = 4

	availFNoInterrupt = 1
	usedFNoNotify     = 1

	// Ring alignment the spec requires of the driver.
	descAlign  = 16
	availAlign = 2
	usedAlign  = 4
)

// QueueConfig is a split queue as the driver programmed it.
type QueueConfig struct {
	Size      uint16 // number of entries, a power of two
	DescTable uint64 // GPA of the descriptor table ("queue_desc")
	AvailRing uint64 // GPA of the driver area ("queue_driver")
	UsedRing  uint64 // GPA of the device area ("queue_device")
}

// DescTableSize, AvailRingSize and UsedRingSize give the bytes each area
// of a split queue of size n occupies, event fields included.
func DescTableSize(n uint16) uint64 { return descSize * uint64(n) }

// AvailRingSize is the driver area size: flags, idx, ring[n], used_event.
func AvailRingSize(n uint16) uint64 { return 6 + 2*uint64(n) }

// UsedRingSize is the device area size: flags, idx, ring[n], avail_event.
func UsedRingSize(n uint16) uint64 { return 6 + 8*uint64(n) }

// QueueStats counts what a queue has seen.
type QueueStats struct {
	Chains     uint64 // chains handed to the device
	BadChains  uint64 // chains failed by validation (returned with length 0)
	Interrupts uint64 // interrupts requested through the trigger
	Suppressed uint64 // Signal calls that the driver's flags or used_event suppressed
	LastError  error  // why the last bad chain or the queue failed
}

// Queue is the device side of one split virtqueue.
//
// Its methods are safe for concurrent use: a device may complete requests
// from several goroutines. Kick may be called from any goroutine and never
// blocks.
//
// Memory ordering. Guest RAM is shared with vCPUs that run concurrently.
// Next loads avail.idx with an atomic (acquire) load before reading ring
// entries and descriptors; Push writes the used element before storing
// used.idx atomically, and that store is a locked instruction on x86, so
// it also orders the following loads of used_event / avail.flags in Signal
// (the full barrier virtio requires between publishing used entries and
// checking whether to interrupt). EnableNotifications likewise stores
// avail_event (or clears NO_NOTIFY) with a locked instruction before
// re-reading avail.idx.
//
// Dirty tracking. Every byte the queue or a device writes into guest
// memory is reported to mem (memory.DMA's SliceForWrite and MarkDirty), so
// that a migration copies it: the used element and index by Push, and the
// bytes a device wrote into a chain's writable buffers, as bounded by the
// length it pushes, also by Push, after the device's writes and before the
// used index that makes them visible to the driver.
type Queue struct {
	mem      memory.DMA
	cfg      QueueConfig
	eventIdx bool
	indirect bool

	kick chan struct{}

	mu sync.Mutex
	// The rings resolved to host slices at generation gen of mem; Next and
	// Push resolve them again when mem's generation moves (a remap).
	gen   uint64
	desc  []byte // descriptor table, aliases guest RAM
	avail []byte // driver area
	used  []byte // device area, from SliceForWrite
	// taken[h] holds the chains taken under head h and not yet pushed,
	// for marking their writable buffers dirty at Push.
	taken         []takenHead
	nextAvail     uint16
	nextUsed      uint16
	signalledUsed uint16
	signalValid   bool // signalledUsed is meaningful
	trigger       irq.Trigger
	onBroken      func(error)
	broken        error
	stats         QueueStats
	// inflight, if set, records what is taken and completed
	// (ResumeInflight); resubmit holds heads a previous device took and
	// never completed, which Next hands out first.
	inflight InflightLog
	resubmit []uint16
	// maxChain is the most buffer descriptors walk accepts in a chain
	// when it is above the queue's size (AllowChains); 0 otherwise.
	maxChain uint32
}

// NewQueue validates the driver's configuration against guest RAM and the
// device's maximum size and returns the queue, ready to serve. features is
// the negotiated feature set: FeatureEventIdx and FeatureIndirectDesc
// change the queue's behaviour.
//
// The rings are validated and resolved to host slices here, and again only
// when mem's Generation changes.
func NewQueue(mem memory.DMA, cfg QueueConfig, maxSize uint16, features uint64) (*Queue, error) {
	n := cfg.Size
	switch {
	case n == 0 || n&(n-1) != 0:
		return nil, fmt.Errorf("%w: size %d is not a power of two", ErrQueueConfig, n)
	case n > maxSize || n > MaxQueueSize:
		return nil, fmt.Errorf("%w: size %d above maximum %d", ErrQueueConfig, n, maxSize)
	case cfg.DescTable%descAlign != 0 || cfg.AvailRing%availAlign != 0 || cfg.UsedRing%usedAlign != 0:
		return nil, fmt.Errorf("%w: misaligned rings %#x/%#x/%#x", ErrQueueConfig, cfg.DescTable, cfg.AvailRing, cfg.UsedRing)
	}
	q := &Queue{
		mem:      mem,
		cfg:      cfg,
		eventIdx: features&FeatureEventIdx != 0,
		indirect: features&FeatureIndirectDesc != 0,
		kick:     make(chan struct{}, 1),
		taken:    make([]takenHead, n),
	}
	if err := q.resolve(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrQueueConfig, err)
	}
	return q, nil
}

// resolve maps the rings to host slices and records the generation they
// belong to. The generation is read first: a remap that lands while the
// slices are resolved then shows as a generation change at the next check
// and the rings are resolved again, never kept stale.
func (q *Queue) resolve() error {
	gen := q.mem.Generation()
	n := q.cfg.Size
	desc, err := q.mem.Slice(q.cfg.DescTable, DescTableSize(n))
	if err != nil {
		return fmt.Errorf("descriptor table: %w", err)
	}
	avail, err := q.mem.Slice(q.cfg.AvailRing, AvailRingSize(n))
	if err != nil {
		return fmt.Errorf("driver area: %w", err)
	}
	used, err := q.mem.SliceForWrite(q.cfg.UsedRing, UsedRingSize(n))
	if err != nil {
		return fmt.Errorf("device area: %w", err)
	}
	q.desc, q.avail, q.used, q.gen = desc, avail, used, gen
	return nil
}

// checkGenLocked resolves the rings again if mem was remapped since they
// were resolved. Rings that no longer resolve break the queue: the driver
// (or its IOMMU driver) unmapped memory the device owns.
func (q *Queue) checkGenLocked() error {
	if q.mem.Generation() == q.gen {
		return nil
	}
	if err := q.resolve(); err != nil {
		return q.failLocked(fmt.Errorf("rings after a remap: %w", err))
	}
	return nil
}

// Config returns the queue's configuration.
func (q *Queue) Config() QueueConfig { return q.cfg }

// SetInterrupt sets the trigger Signal fires; the transport calls it before
// handing the queue to the device.
func (q *Queue) SetInterrupt(t irq.Trigger) {
	q.mu.Lock()
	q.trigger = t
	q.mu.Unlock()
}

// OnBroken sets a function called once, with the reason, when the queue
// breaks; the transport uses it to set DEVICE_NEEDS_RESET. It is called
// with the queue's lock held and must not call back into the queue.
func (q *Queue) OnBroken(f func(error)) {
	q.mu.Lock()
	q.onBroken = f
	q.mu.Unlock()
}

// Kick records a driver notification and wakes the device's goroutine.
// Kicks coalesce: a device that is busy sees at most one pending kick.
func (q *Queue) Kick() {
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

// Kicks returns the channel a device goroutine waits on for notifications.
func (q *Queue) Kicks() <-chan struct{} { return q.kick }

// Stats returns the queue's counters.
func (q *Queue) Stats() QueueStats {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.stats
}

// failLocked breaks the queue.
func (q *Queue) failLocked(err error) error {
	if q.broken == nil {
		q.broken = fmt.Errorf("%w: %w", ErrQueueBroken, err)
		q.stats.LastError = q.broken
		if q.onBroken != nil {
			q.onBroken(q.broken)
		}
	}
	return q.broken
}

// Next returns the next available chain, or nil when the driver has made
// none available. Malformed chains are returned to the driver with length 0
// and skipped (see the package documentation). An error means the queue
// is broken; it stays broken until the device is reset.
//
// The chain's buffers alias guest memory, which the driver can change at
// any moment: copy what you validate before acting on it.
//
// Next interrupts the driver itself (as Signal would) when it returned
// bad chains and finds the ring empty: the device never saw them, so its
// own Signal, which devices skip when they pushed nothing, may not come,
// and a driver waiting for those chains would wait for ever.
func (q *Queue) Next() (*Chain, error) {
	q.mu.Lock()
	c, returnedBad, err := q.nextLocked()
	var t irq.Trigger
	if returnedBad && c == nil && err == nil {
		t = q.signalLocked()
	}
	q.mu.Unlock()
	if t != nil {
		// As for Signal, a failing trigger is the interrupt path's to
		// report; the chain (none) and the queue are unaffected.
		_ = t.Trigger()
	}
	return c, err
}

// nextLocked is Next under q.mu; returnedBad reports that it returned bad
// chains to the used ring.
func (q *Queue) nextLocked() (c *Chain, returnedBad bool, err error) {
	if q.broken != nil {
		return nil, false, q.broken
	}
	if err := q.checkGenLocked(); err != nil {
		return nil, false, err
	}
	if len(q.resubmit) > 0 {
		c, bad, err := q.nextResubmitLocked()
		if c != nil || err != nil {
			return c, bad, err
		}
		returnedBad = bad
	}
	// Bounded: each iteration consumes one of at most Size entries.
	for {
		idx, err := q.mem.LoadUint16(q.cfg.AvailRing + 2)
		if err != nil {
			return nil, returnedBad, q.failLocked(err)
		}
		pending := idx - q.nextAvail
		if pending == 0 {
			return nil, returnedBad, nil
		}
		if pending > q.cfg.Size {
			return nil, returnedBad, q.failLocked(fmt.Errorf("avail idx %d is %d entries ahead of %d, queue size %d", idx, pending, q.nextAvail, q.cfg.Size))
		}
		slot := 4 + 2*uint64(q.nextAvail%q.cfg.Size)
		head := binary.LittleEndian.Uint16(q.avail[slot:])
		if head >= q.cfg.Size {
			return nil, returnedBad, q.failLocked(fmt.Errorf("avail ring head %d ≥ queue size %d", head, q.cfg.Size))
		}
		q.nextAvail++
		if q.inflight != nil {
			q.inflight.Taken(head)
		}
		c, err := q.takeLocked(head, q.nextAvail-1)
		if err != nil {
			return nil, returnedBad, err
		}
		if c == nil {
			returnedBad = true
			continue
		}
		return c, returnedBad, nil
	}
}

// HasAvailable reports whether Next has something to return: a chain the
// driver made available (or one to resubmit), or an error. It takes
// nothing and writes nothing, so a device polling the ring with
// notifications disabled calls it as often as it likes and calls Next
// only when it says so.
func (q *Queue) HasAvailable() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.broken != nil || len(q.resubmit) > 0 {
		return true
	}
	idx, err := q.mem.LoadUint16(q.cfg.AvailRing + 2)
	return err != nil || idx != q.nextAvail
}

// AllowChains lets walk accept chains of up to n buffer descriptors
// (through an indirect table: the ring itself holds only the queue's
// size), when n is above the queue's size. A device whose configuration
// tells the driver how long a request may be (virtio-blk's seg_max) calls
// it with that bound before serving the queue: Linux sizes its requests
// by seg_max alone when it has indirect descriptors, so a queue smaller
// than the device's maximum (a driver's choice, or a vhost-user
// front-end's, such as QEMU's vhost-user-blk-pci at 128 under a back-end
// that advertised 256) would otherwise refuse requests the device
// allowed. The bound still ends any loop.
func (q *Queue) AllowChains(n int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.maxChain = uint32(min(max(n, 0), MaxQueueSize))
}

// desc is one descriptor, copied out of guest memory before it is checked.
type desc struct {
	addr  uint64
	len   uint32
	flags uint16
	next  uint16
}

func readDesc(table []byte, i uint32) desc {
	b := table[descSize*uint64(i):]
	le := binary.LittleEndian
	return desc{addr: le.Uint64(b), len: le.Uint32(b[8:]), flags: le.Uint16(b[12:]), next: le.Uint16(b[14:])}
}

func chainError(head uint16, format string, args ...any) error {
	return fmt.Errorf("%w: head %d: %s", ErrBadChain, head, fmt.Sprintf(format, args...))
}

// walk follows the chain at head. It accepts at most Size buffer
// descriptors in all, direct and indirect together (spec 2.7.5.3.1 bounds a
// chain by the queue size; a device that lets the driver size requests,
// like virtio-blk's seg_max, must advertise limits within it). The bound
// also ends any loop, so no visited set is needed.
func (q *Queue) walk(head uint16) (*Chain, error) {
	limit := max(uint32(q.cfg.Size), q.maxChain)
	c := &Chain{Head: head}
	c.Readable, c.Writable = c.inline[:0:2], c.inline[2:2:4]
	c.writes = c.inlineW[:0]
	table, tableLen := q.desc, uint32(q.cfg.Size)
	i := uint32(head)
	inIndirect, sawWritable := false, false
	var readable, writable uint64
	for count := 0; ; count++ {
		if count >= int(limit) {
			return nil, chainError(head, "longer than %d descriptors, the queue size or the device's limit (loop?)", limit)
		}
		if i >= tableLen {
			return nil, chainError(head, "next index %d out of table of %d", i, tableLen)
		}
		d := readDesc(table, i)
		if d.flags&descFIndirect != 0 {
			switch {
			case !q.indirect:
				return nil, chainError(head, "indirect descriptor without VIRTIO_F_INDIRECT_DESC")
			case inIndirect:
				return nil, chainError(head, "nested indirect descriptor")
			case d.flags&descFNext != 0:
				return nil, chainError(head, "indirect descriptor with NEXT")
			case d.len == 0 || d.len%descSize != 0:
				return nil, chainError(head, "indirect table length %d", d.len)
			case d.len/descSize > limit:
				return nil, chainError(head, "indirect table of %d entries exceeds %d, the queue size or the device's limit", d.len/descSize, limit)
			}
			t, err := q.mem.Slice(d.addr, uint64(d.len))
			if err != nil {
				return nil, chainError(head, "indirect table: %v", err)
			}
			table, tableLen, i, inIndirect = t, d.len/descSize, 0, true
			count-- // the table's entries count, not the pointer to it
			continue
		}
		write := d.flags&descFWrite != 0
		if !write && sawWritable {
			return nil, chainError(head, "readable descriptor after a writable one")
		}
		sawWritable = sawWritable || write
		if d.len > 0 { // an empty buffer may carry any address
			var b []byte
			var err error
			if write {
				b, err = q.mem.SliceForWrite(d.addr, uint64(d.len))
			} else {
				b, err = q.mem.Slice(d.addr, uint64(d.len))
			}
			if err != nil {
				return nil, chainError(head, "buffer: %v", err)
			}
			if write {
				writable += uint64(d.len)
				c.Writable = append(c.Writable, b)
				c.writes = append(c.writes, span{d.addr, d.len})
			} else {
				readable += uint64(d.len)
				c.Readable = append(c.Readable, b)
			}
			if readable > math.MaxUint32 || writable > math.MaxUint32 {
				return nil, chainError(head, "total length above 4 GiB")
			}
		}
		if d.flags&descFNext == 0 {
			return c, nil
		}
		i = uint32(d.next)
	}
}

// Push returns chain head to the driver with written bytes of its writable
// buffers filled. It does not interrupt; call Signal once a batch is done.
//
// written must cover every byte the device wrote into the chain (spec
// 2.7.8.2: the used length is the bytes written into the buffers, from the
// first writable buffer on): Push marks exactly those bytes dirty for a
// migration, and the device must not write the chain's buffers after
// Push.
func (q *Queue) Push(head uint16, written uint32) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.broken != nil {
		return q.broken
	}
	if head >= q.cfg.Size {
		return fmt.Errorf("virtio: push of head %d on a queue of %d", head, q.cfg.Size)
	}
	if err := q.checkGenLocked(); err != nil {
		return err
	}
	q.taken[head].complete(q.mem, written)
	return q.pushLocked(head, written)
}

// takeLocked walks the chain at head, taken from avail position availPos,
// and records it as taken. A malformed chain is counted and completed at
// once with length 0: it returns nil and no error then.
func (q *Queue) takeLocked(head, availPos uint16) (*Chain, error) {
	c, err := q.walk(head)
	if err != nil {
		q.stats.BadChains++
		q.stats.LastError = err
		return nil, q.pushLocked(head, 0)
	}
	q.stats.Chains++
	c.from, c.availPos, c.usedAtTaken = q, availPos, q.nextUsed
	q.taken[head].add(c)
	return c, nil
}

func (q *Queue) pushLocked(head uint16, written uint32) error {
	if q.inflight != nil {
		q.inflight.Completing(head)
	}
	slot := 4 + 8*uint64(q.nextUsed%q.cfg.Size)
	binary.LittleEndian.PutUint32(q.used[slot:], uint32(head))
	binary.LittleEndian.PutUint32(q.used[slot+4:], written)
	// The element was written through a slice: mark it after the write
	// and before the index store publishes it. The ring was resolved at
	// this generation, so the range resolves.
	if err := q.mem.MarkDirty(q.cfg.UsedRing+slot, 8); err != nil {
		return q.failLocked(err)
	}
	q.nextUsed++
	// The atomic store publishes the element written above (release).
	if err := q.mem.StoreUint16(q.cfg.UsedRing+2, q.nextUsed); err != nil {
		return q.failLocked(err)
	}
	if q.inflight != nil {
		q.inflight.Completed(head, q.nextUsed)
	}
	return nil
}

// NeedsInterrupt reports whether the driver wants an interrupt for the
// used entries pushed since the last time it returned true, and records
// that it will get one. With VIRTIO_F_EVENT_IDX that is Linux's
// vring_need_event(used_event, new, old) test; without it, the driver's
// VIRTQ_AVAIL_F_NO_INTERRUPT flag decides.
func (q *Queue) NeedsInterrupt() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.needsInterruptLocked()
}

func (q *Queue) needsInterruptLocked() bool {
	newIdx := q.nextUsed
	if q.signalValid && newIdx == q.signalledUsed {
		return false // nothing new since the last interrupt
	}
	old, valid := q.signalledUsed, q.signalValid
	q.signalledUsed, q.signalValid = newIdx, true
	if q.eventIdx {
		usedEvent, err := q.mem.LoadUint16(q.cfg.AvailRing + 4 + 2*uint64(q.cfg.Size))
		if err != nil {
			return true
		}
		if !valid {
			return true
		}
		return newIdx-usedEvent-1 < newIdx-old
	}
	flags, err := q.mem.LoadUint16(q.cfg.AvailRing)
	if err != nil {
		return true
	}
	return flags&availFNoInterrupt == 0
}

// Signal interrupts the driver if NeedsInterrupt says so.
func (q *Queue) Signal() error {
	q.mu.Lock()
	t := q.signalLocked()
	q.mu.Unlock()
	if t == nil {
		return nil
	}
	return t.Trigger()
}

// signalLocked decides on an interrupt and counts it: it returns the
// trigger to fire (after unlocking), or nil.
func (q *Queue) signalLocked() irq.Trigger {
	need := q.broken == nil && q.needsInterruptLocked()
	t := q.trigger
	if need && t != nil {
		q.stats.Interrupts++
		return t
	}
	q.stats.Suppressed++
	return nil
}

// DisableNotifications tells the driver the device is busy polling the
// queue, so kicks are unnecessary. With EVENT_IDX nothing needs writing:
// avail_event stays where it was and the driver stops kicking once it
// passes it.
func (q *Queue) DisableNotifications() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.eventIdx || q.broken != nil {
		return
	}
	q.setUsedFlagsLocked(usedFNoNotify)
}

func (q *Queue) setUsedFlagsLocked(f uint16) {
	if err := q.mem.StoreUint16(q.cfg.UsedRing, f); err != nil {
		q.failLocked(err)
	}
}

// EnableNotifications asks the driver to kick for the next buffer it makes
// available, and reports whether buffers arrived in the meantime: then the
// driver may not kick for them, and the caller must go on processing
// before it waits for a kick.
func (q *Queue) EnableNotifications() (more bool, err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.broken != nil {
		return false, q.broken
	}
	if q.eventIdx {
		// avail_event sits after the used ring.
		if err := q.mem.StoreUint16(q.cfg.UsedRing+4+8*uint64(q.cfg.Size), q.nextAvail); err != nil {
			return false, q.failLocked(err)
		}
	} else {
		q.setUsedFlagsLocked(0)
	}
	// The store above is a locked instruction: this load cannot pass it.
	idx, err := q.mem.LoadUint16(q.cfg.AvailRing + 2)
	if err != nil {
		return false, q.failLocked(err)
	}
	return idx != q.nextAvail, nil
}
