// Package queuetest plays the guest driver of a split virtqueue in tests
// (and in vhostuser/vudriver, a front-end without a VM for benchmarks):
// it lays out the rings in a memory.Memory, adds descriptor chains (direct
// or indirect), publishes them, decides whether to kick and reads used
// entries the way Linux's virtio_ring does, honouring VIRTIO_F_EVENT_IDX.
// It also writes raw descriptors and ring entries so tests can present a
// device with malformed chains.
//
// A Driver is not safe for concurrent use; a test drives it from one
// goroutine while the device runs in its own.
package queuetest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/virtio"
)

// Descriptor flags, for raw descriptors.
const (
	FlagNext     = 1
	FlagWrite    = 2
	FlagIndirect = 4
)

// Desc is a raw descriptor.
type Desc struct {
	Addr  uint64
	Len   uint32
	Flags uint16
	Next  uint16
}

// Used is one used element read back, with the writable buffers' bytes up
// to the length the device reported.
type Used struct {
	ID   uint16
	Len  uint32
	Data []byte // concatenated writable buffers, truncated to Len
}

// Errors.
var (
	ErrNoDescriptors = errors.New("queuetest: no free descriptors")
	ErrNoBufferSpace = errors.New("queuetest: data area full")
)

type inflight struct {
	descs []uint16 // ring descriptors the chain holds
	in    []Desc   // writable buffers, to read back
}

// Driver is the driver side of one queue.
type Driver struct {
	mem      *memory.Memory
	cfg      virtio.QueueConfig
	eventIdx bool

	free      []uint16
	inflight  map[uint16]*inflight
	availIdx  uint16 // next free avail slot (shadow of avail.idx)
	kickedIdx uint16 // avail.idx at the last NeedsKick
	lastUsed  uint16

	dataBase, dataEnd, dataNext uint64
}

// New lays out a queue of size entries at base (16-byte aligned) and a data
// area of dataSize bytes after it, all of which must be guest RAM. eventIdx
// says whether the driver negotiated VIRTIO_F_EVENT_IDX.
func New(mem *memory.Memory, base uint64, size uint16, dataSize uint64, eventIdx bool) (*Driver, error) {
	if size == 0 || size&(size-1) != 0 || size > virtio.MaxQueueSize {
		return nil, fmt.Errorf("queuetest: bad size %d", size)
	}
	if base%16 != 0 {
		return nil, fmt.Errorf("queuetest: base %#x not 16-byte aligned", base)
	}
	desc := base
	avail := desc + virtio.DescTableSize(size)
	used := (avail + virtio.AvailRingSize(size) + 3) &^ 3
	data := (used + virtio.UsedRingSize(size) + 4095) &^ 4095
	d := &Driver{
		mem:      mem,
		cfg:      virtio.QueueConfig{Size: size, DescTable: desc, AvailRing: avail, UsedRing: used},
		eventIdx: eventIdx,
		inflight: make(map[uint16]*inflight),
		dataBase: data, dataNext: data, dataEnd: data + dataSize,
	}
	area, err := mem.Slice(base, d.dataEnd-base)
	if err != nil {
		return nil, fmt.Errorf("queuetest: queue area: %w", err)
	}
	clear(area)
	for i := int(size) - 1; i >= 0; i-- {
		d.free = append(d.free, uint16(i))
	}
	return d, nil
}

// Config returns the addresses to program into the transport.
func (d *Driver) Config() virtio.QueueConfig { return d.cfg }

// Memory returns the guest memory the driver uses.
func (d *Driver) Memory() *memory.Memory { return d.mem }

// MoveRings copies the descriptor table, driver area and device area to
// the same layout at base (16-byte aligned, guest RAM, clear of the data
// area), fills the old copies with 0xff, and carries on there: Config then
// returns the new addresses. Tests use it to move a live queue's rings, as
// a remap behind an IOMMU would.
func (d *Driver) MoveRings(base uint64) error {
	old := d.cfg.DescTable
	n := d.cfg.UsedRing + virtio.UsedRingSize(d.cfg.Size) - old
	if base%16 != 0 {
		return fmt.Errorf("queuetest: base %#x not 16-byte aligned", base)
	}
	if base < d.dataEnd && d.dataBase < base+n {
		return fmt.Errorf("queuetest: rings at %#x would overlap the data area", base)
	}
	buf := make([]byte, n)
	if _, err := d.mem.ReadAt(buf, int64(old)); err != nil {
		return err
	}
	if _, err := d.mem.WriteAt(buf, int64(base)); err != nil {
		return err
	}
	for i := range buf {
		buf[i] = 0xff
	}
	if _, err := d.mem.WriteAt(buf, int64(old)); err != nil {
		return err
	}
	d.cfg.DescTable = base
	d.cfg.AvailRing = base + (d.cfg.AvailRing - old)
	d.cfg.UsedRing = base + (d.cfg.UsedRing - old)
	return nil
}

func (d *Driver) allocData(n uint64, align uint64) (uint64, error) {
	a := (d.dataNext + align - 1) &^ (align - 1)
	if a+n > d.dataEnd || a+n < a {
		return 0, ErrNoBufferSpace
	}
	d.dataNext = a + n
	return a, nil
}

// Alloc reserves n bytes of the data area (for hand-made descriptors).
func (d *Driver) Alloc(n uint64) (uint64, error) { return d.allocData(n, 8) }

func (d *Driver) buffers(out [][]byte, in []uint32) ([]Desc, []Desc, error) {
	var ds, ins []Desc
	for _, b := range out {
		a, err := d.allocData(uint64(len(b)), 8)
		if err != nil {
			return nil, nil, err
		}
		if _, err := d.mem.WriteAt(b, int64(a)); err != nil {
			return nil, nil, err
		}
		ds = append(ds, Desc{Addr: a, Len: uint32(len(b))})
	}
	for _, n := range in {
		a, err := d.allocData(uint64(n), 8)
		if err != nil {
			return nil, nil, err
		}
		// Through SliceForWrite and MarkDirty, so that tests tracking dirty
		// pages see the driver's writes as KVM's log would see a vCPU's.
		s, _ := d.mem.SliceForWrite(a, uint64(n))
		clear(s)
		d.mem.MarkDirty(a, uint64(n))
		ds = append(ds, Desc{Addr: a, Len: n, Flags: FlagWrite})
		ins = append(ins, ds[len(ds)-1])
	}
	return ds, ins, nil
}

// Add makes a chain available: readable buffers holding out, then writable
// buffers of the sizes in in. It returns the chain's head.
func (d *Driver) Add(out [][]byte, in []uint32) (uint16, error) {
	ds, _, err := d.buffers(out, in)
	if err != nil {
		return 0, err
	}
	return d.AddChain(ds)
}

// AddChain makes a chain of buffers the caller placed in guest RAM
// available: each descriptor's Addr, Len and FlagWrite (the chaining is
// done here, on a copy). It returns the chain's head; GetUsed reads its
// writable buffers back. A driver that keeps requests in flight without
// a pause uses it with buffers of its own, which it reuses as requests
// complete, where Add's data area is only reclaimed once nothing is in
// flight.
func (d *Driver) AddChain(chain []Desc) (uint16, error) {
	if len(chain) == 0 || len(chain) > len(d.free) {
		return 0, ErrNoDescriptors
	}
	ds := slices.Clone(chain)
	var ins []Desc
	for k := range ds {
		ds[k].Flags &= FlagWrite
		if ds[k].Flags&FlagWrite != 0 {
			ins = append(ins, ds[k])
		}
	}
	idx := d.free[len(d.free)-len(ds):]
	d.free = d.free[:len(d.free)-len(ds)]
	fl := &inflight{descs: append([]uint16(nil), idx...), in: ins}
	for k := range ds {
		if k+1 < len(ds) {
			ds[k].Flags |= FlagNext
			ds[k].Next = idx[k+1]
		}
		d.WriteDesc(idx[k], ds[k])
	}
	d.inflight[idx[0]] = fl
	d.Publish(idx[0])
	return idx[0], nil
}

// AddIndirect is Add with the buffers in an indirect table, which takes a
// single ring descriptor.
func (d *Driver) AddIndirect(out [][]byte, in []uint32) (uint16, error) {
	ds, ins, err := d.buffers(out, in)
	if err != nil {
		return 0, err
	}
	if len(ds) == 0 || len(d.free) == 0 {
		return 0, ErrNoDescriptors
	}
	tbl, err := d.allocData(uint64(16*len(ds)), 16)
	if err != nil {
		return 0, err
	}
	for k := range ds {
		if k+1 < len(ds) {
			ds[k].Flags |= FlagNext
			ds[k].Next = uint16(k + 1)
		}
		d.writeDescAt(tbl+16*uint64(k), ds[k])
	}
	head := d.free[len(d.free)-1]
	d.free = d.free[:len(d.free)-1]
	d.WriteDesc(head, Desc{Addr: tbl, Len: uint32(16 * len(ds)), Flags: FlagIndirect})
	d.inflight[head] = &inflight{descs: []uint16{head}, in: ins}
	d.Publish(head)
	return head, nil
}

func (d *Driver) writeDescAt(gpa uint64, x Desc) {
	var b [16]byte
	le := binary.LittleEndian
	le.PutUint64(b[0:], x.Addr)
	le.PutUint32(b[8:], x.Len)
	le.PutUint16(b[12:], x.Flags)
	le.PutUint16(b[14:], x.Next)
	if _, err := d.mem.WriteAt(b[:], int64(gpa)); err != nil {
		panic(err) // inside the queue area New validated
	}
}

// Reserve takes descriptor slot i off the free list so that raw
// descriptors written there are not overwritten by Add. It reports whether
// i was free.
func (d *Driver) Reserve(i uint16) bool {
	for k, f := range d.free {
		if f == i {
			d.free = append(d.free[:k], d.free[k+1:]...)
			return true
		}
	}
	return false
}

// WriteDesc writes a raw descriptor into ring slot i (i < Size).
func (d *Driver) WriteDesc(i uint16, x Desc) {
	d.writeDescAt(d.cfg.DescTable+16*uint64(i%d.cfg.Size), x)
}

// WriteIndirectTable writes raw descriptors at gpa (from Alloc).
func (d *Driver) WriteIndirectTable(gpa uint64, xs []Desc) {
	for k, x := range xs {
		d.writeDescAt(gpa+16*uint64(k), x)
	}
}

// Publish puts head in the next avail slot and bumps avail.idx (with a
// store that orders the slot before the index, as virtio_wmb does).
func (d *Driver) Publish(head uint16) {
	slot := d.cfg.AvailRing + 4 + 2*uint64(d.availIdx%d.cfg.Size)
	if err := d.mem.StoreUint16(slot, head); err != nil {
		panic(err)
	}
	d.availIdx++
	if err := d.mem.StoreUint16(d.cfg.AvailRing+2, d.availIdx); err != nil {
		panic(err)
	}
}

// SetAvailIdx stores a raw avail.idx (for hostile-driver tests).
func (d *Driver) SetAvailIdx(idx uint16) {
	d.availIdx = idx
	if err := d.mem.StoreUint16(d.cfg.AvailRing+2, idx); err != nil {
		panic(err)
	}
}

// NeedsKick reports whether the driver must notify the device for the
// chains published since the last call, as virtqueue_kick_prepare decides:
// with EVENT_IDX by vring_need_event(avail_event, new, old), otherwise by
// the device's VIRTQ_USED_F_NO_NOTIFY flag.
func (d *Driver) NeedsKick() bool {
	old, nw := d.kickedIdx, d.availIdx
	d.kickedIdx = nw
	if d.eventIdx {
		ev, err := d.mem.LoadUint16(d.cfg.UsedRing + 4 + 8*uint64(d.cfg.Size))
		if err != nil {
			panic(err)
		}
		return nw-ev-1 < nw-old
	}
	fl, err := d.mem.LoadUint16(d.cfg.UsedRing)
	if err != nil {
		panic(err)
	}
	return fl&1 == 0
}

// UsedIdx returns the device's used.idx.
func (d *Driver) UsedIdx() uint16 {
	v, err := d.mem.LoadUint16(d.cfg.UsedRing + 2)
	if err != nil {
		panic(err)
	}
	return v
}

// GetUsed returns the next used element, if the device published one, and
// frees its descriptors. With EVENT_IDX it then asks for an interrupt on
// the next used entry (used_event = last seen), like virtqueue_enable_cb.
func (d *Driver) GetUsed() (Used, bool, error) {
	if d.UsedIdx() == d.lastUsed {
		return Used{}, false, nil
	}
	slot := d.cfg.UsedRing + 4 + 8*uint64(d.lastUsed%d.cfg.Size)
	var b [8]byte
	if _, err := d.mem.ReadAt(b[:], int64(slot)); err != nil {
		return Used{}, false, err
	}
	d.lastUsed++
	if d.eventIdx {
		// Re-armed whatever the entry holds: the driver consumed it (a
		// test that reads an entry queuetest did not make still wants
		// the next interrupt).
		defer d.SetUsedEvent(d.lastUsed)
	}
	u := Used{ID: uint16(binary.LittleEndian.Uint32(b[:])), Len: binary.LittleEndian.Uint32(b[4:])}
	if binary.LittleEndian.Uint32(b[:]) >= uint32(d.cfg.Size) {
		return u, true, fmt.Errorf("queuetest: used id %d out of range", u.ID)
	}
	fl, ok := d.inflight[u.ID]
	if !ok {
		return u, true, fmt.Errorf("queuetest: used id %d was not in flight", u.ID)
	}
	delete(d.inflight, u.ID)
	if len(d.inflight) == 0 {
		// Everything returned (u.Data is copied below before any reuse).
		defer func() { d.dataNext = d.dataBase }()
	}
	d.free = append(d.free, fl.descs...)
	left := uint64(u.Len)
	var total uint64
	for _, x := range fl.in {
		total += uint64(x.Len)
		n := min(left, uint64(x.Len))
		s, err := d.mem.Slice(x.Addr, n)
		if err != nil {
			return u, true, err
		}
		u.Data = append(u.Data, s...)
		left -= n
	}
	if uint64(u.Len) > total {
		return u, true, fmt.Errorf("queuetest: used len %d exceeds writable %d", u.Len, total)
	}
	return u, true, nil
}

// InFlight returns the number of chains the device has not returned.
func (d *Driver) InFlight() int { return len(d.inflight) }

// SetUsedEvent writes used_event: with EVENT_IDX the device interrupts
// once used.idx passes it.
func (d *Driver) SetUsedEvent(v uint16) {
	if err := d.mem.StoreUint16(d.cfg.AvailRing+4+2*uint64(d.cfg.Size), v); err != nil {
		panic(err)
	}
}

// SetNoInterrupt sets or clears VIRTQ_AVAIL_F_NO_INTERRUPT.
func (d *Driver) SetNoInterrupt(on bool) {
	var v uint16
	if on {
		v = 1
	}
	if err := d.mem.StoreUint16(d.cfg.AvailRing, v); err != nil {
		panic(err)
	}
}
