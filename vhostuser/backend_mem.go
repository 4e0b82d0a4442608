package vhostuser

import (
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/viovmm/vio/memory"
)

// ErrBadAddress reports a ring address (a front-end user address from
// SET_VRING_ADDR) that no region of the memory table covers.
var ErrBadAddress = errors.New("vhostuser: address outside the memory table")

// sharedRegion is one SET_MEM_TABLE region as the back-end mapped it.
type sharedRegion struct {
	MemoryRegion
	mem *memory.Memory // this region alone, at its guest addresses
}

// sharedMemory is the front-end's guest RAM as the back-end sees it: each
// region of SET_MEM_TABLE mapped from the descriptor that came with it.
// It implements memory.DMA at guest physical addresses, which is what
// descriptors hold, so the virtio queue code runs over it unchanged; ring
// addresses, which the front-end gives in its own address space, go
// through userToGPA first.
//
// Each region is its own memory.Memory (memory.NewFromFile), which checks
// what a hostile peer could get wrong: page alignment, a file too short
// for the region (an access past its end would be SIGBUS, not an error),
// and a memfd is sealed against shrinking. An access must lie wholly in
// one region, as with a Memory of several regions.
//
// The table never changes under a queue: the back-end stops every ring
// before it replaces or unmaps the table, so Generation is constant.
type sharedMemory struct {
	regions []sharedRegion
	// dirty is the session's dirty log: while LOG_ALL is on, every write
	// through this memory (buffers and used rings alike) marks its pages
	// there, after the write. Nil marks nothing.
	dirty *dirtyState
}

// dirtyState is a session's dirty log (SET_LOG_BASE) and LOG_ALL. on
// flips while the rings run (SET_FEATURES); the log changes only while
// they are stopped (setLogBase), so a ring never marks an unmapped one.
type dirtyState struct {
	on  atomic.Bool
	log atomic.Pointer[backendLog]
}

// logWrite marks [addr, addr+n) in the dirty log, if logging is on.
func (m *sharedMemory) logWrite(addr, n uint64) {
	if m.dirty == nil || !m.dirty.on.Load() {
		return
	}
	if l := m.dirty.log.Load(); l != nil {
		l.mark(addr, n)
	}
}

var _ memory.DMA = (*sharedMemory)(nil)

// MaxMemSlots is the most regions a back-end maps at once when the
// front-end adds them one by one (CONFIGURE_MEM_SLOTS: ADD_MEM_REG and
// REM_MEM_REG), which is GET_MAX_MEM_SLOTS' answer. Lookups scan the
// regions, so the bound also bounds the cost of every guest memory access.
const MaxMemSlots = 32

// mapMemoryTable maps t's regions from fds (fds[i] backs region i). The
// descriptors stay the caller's: each mapping keeps a duplicate only
// while it lives. On error nothing stays mapped.
func mapMemoryTable(t MemoryTable, fds []int) (*sharedMemory, error) {
	if len(fds) != len(t.Regions) {
		return nil, fmt.Errorf("%w: %d memory regions with %d descriptors", ErrMalformed, len(t.Regions), len(fds))
	}
	m := &sharedMemory{}
	for i, r := range t.Regions {
		if err := m.checkFree(r); err != nil {
			m.close()
			return nil, err
		}
		sr, err := mapRegion(r, fds[i])
		if err != nil {
			m.close()
			return nil, fmt.Errorf("vhostuser: memory region %d: %w", i, err)
		}
		m.regions = append(m.regions, sr)
	}
	return m, nil
}

// checkFree refuses a region that overlaps one of m's, in guest or in
// front-end addresses (either would make a translation ambiguous).
func (m *sharedMemory) checkFree(r MemoryRegion) error {
	for _, o := range m.regions {
		if r.GuestAddr < o.GuestAddr+o.Size && o.GuestAddr < r.GuestAddr+r.Size {
			return fmt.Errorf("%w: memory regions at guest addresses %#x and %#x overlap", ErrMalformed, o.GuestAddr, r.GuestAddr)
		}
		if r.UserAddr < o.UserAddr+o.Size && o.UserAddr < r.UserAddr+r.Size {
			return fmt.Errorf("%w: memory regions at user addresses %#x and %#x overlap", ErrMalformed, o.UserAddr, r.UserAddr)
		}
	}
	return nil
}

// mapRegion maps one region from fd, which stays the caller's.
func mapRegion(r MemoryRegion, fd int) (sharedRegion, error) {
	mem, err := memory.NewFromFile(fd, []memory.FileRegion{{GPA: r.GuestAddr, Size: r.Size, Offset: r.MmapOffset}}, memory.Shared)
	if err != nil {
		return sharedRegion{}, fmt.Errorf("mapping gpa %#x size %#x from offset %#x: %w", r.GuestAddr, r.Size, r.MmapOffset, err)
	}
	return sharedRegion{MemoryRegion: r, mem: mem}, nil
}

// without returns a table of m's regions but the one r names (by guest
// address, user address and size, as REM_MEM_REG identifies it), and the
// region left out.
func (m *sharedMemory) without(r MemoryRegion) (*sharedMemory, sharedRegion, bool) {
	for i, o := range m.regions {
		if o.GuestAddr == r.GuestAddr && o.UserAddr == r.UserAddr && o.Size == r.Size {
			rest := append(append([]sharedRegion(nil), m.regions[:i]...), m.regions[i+1:]...)
			return &sharedMemory{regions: rest, dirty: m.dirty}, o, true
		}
	}
	return nil, sharedRegion{}, false
}

// with returns a table of m's regions and r.
func (m *sharedMemory) with(r sharedRegion) *sharedMemory {
	return &sharedMemory{regions: append(append([]sharedRegion(nil), m.regions...), r), dirty: m.dirty}
}

// close unmaps every region.
func (m *sharedMemory) close() {
	for _, r := range m.regions {
		r.mem.Close()
	}
	m.regions = nil
}

// userToGPA translates [ua, ua+n) in the front-end's address space to a
// guest physical address; the range must lie in one region.
func (m *sharedMemory) userToGPA(ua, n uint64) (uint64, error) {
	for _, r := range m.regions {
		if ua >= r.UserAddr && ua-r.UserAddr < r.Size && n <= r.Size-(ua-r.UserAddr) {
			return r.GuestAddr + (ua - r.UserAddr), nil
		}
	}
	return 0, fmt.Errorf("%w: %#x+%#x", ErrBadAddress, ua, n)
}

// find returns the mapping holding addr (the mapping checks the length).
func (m *sharedMemory) find(addr uint64) (*memory.Memory, error) {
	for _, r := range m.regions {
		if addr >= r.GuestAddr && addr-r.GuestAddr < r.Size {
			return r.mem, nil
		}
	}
	return nil, fmt.Errorf("%w: %#x", memory.ErrOutOfRange, addr)
}

func (m *sharedMemory) Slice(addr, n uint64) ([]byte, error) {
	r, err := m.find(addr)
	if err != nil {
		return nil, err
	}
	return r.Slice(addr, n)
}

// SliceForWrite marks the range now, and the caller's MarkDirty after
// its writes marks it again (see memory.DMA): a Take in between then
// misses nothing.
func (m *sharedMemory) SliceForWrite(addr, n uint64) ([]byte, error) {
	r, err := m.find(addr)
	if err != nil {
		return nil, err
	}
	b, err := r.SliceForWrite(addr, n)
	if err == nil {
		m.logWrite(addr, n)
	}
	return b, err
}

func (m *sharedMemory) MarkDirty(addr, n uint64) error {
	r, err := m.find(addr)
	if err != nil {
		return err
	}
	if err := r.MarkDirty(addr, n); err != nil {
		return err
	}
	m.logWrite(addr, n)
	return nil
}

func (m *sharedMemory) ReadAt(p []byte, addr int64) (int, error) {
	if addr < 0 {
		return 0, fmt.Errorf("%w: negative address %d", memory.ErrOutOfRange, addr)
	}
	r, err := m.find(uint64(addr))
	if err != nil {
		return 0, err
	}
	return r.ReadAt(p, addr)
}

func (m *sharedMemory) WriteAt(p []byte, addr int64) (int, error) {
	if addr < 0 {
		return 0, fmt.Errorf("%w: negative address %d", memory.ErrOutOfRange, addr)
	}
	r, err := m.find(uint64(addr))
	if err != nil {
		return 0, err
	}
	n, err := r.WriteAt(p, addr)
	if err == nil {
		m.logWrite(uint64(addr), uint64(n))
	}
	return n, err
}

func (m *sharedMemory) LoadUint16(addr uint64) (uint16, error) {
	r, err := m.find(addr)
	if err != nil {
		return 0, err
	}
	return r.LoadUint16(addr)
}

func (m *sharedMemory) StoreUint16(addr uint64, v uint16) error {
	r, err := m.find(addr)
	if err != nil {
		return err
	}
	if err := r.StoreUint16(addr, v); err != nil {
		return err
	}
	m.logWrite(addr, 2)
	return nil
}

func (m *sharedMemory) LoadUint32(addr uint64) (uint32, error) {
	r, err := m.find(addr)
	if err != nil {
		return 0, err
	}
	return r.LoadUint32(addr)
}

func (m *sharedMemory) StoreUint32(addr uint64, v uint32) error {
	r, err := m.find(addr)
	if err != nil {
		return err
	}
	if err := r.StoreUint32(addr, v); err != nil {
		return err
	}
	m.logWrite(addr, 4)
	return nil
}

// Generation implements memory.DMA: constant (see sharedMemory).
func (m *sharedMemory) Generation() uint64 { return 0 }
