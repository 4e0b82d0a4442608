package vhostuser

import (
	"errors"
	"fmt"

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
}

var _ memory.DMA = (*sharedMemory)(nil)

// mapMemoryTable maps t's regions from fds (fds[i] backs region i). The
// descriptors stay the caller's: each mapping keeps a duplicate only
// while it lives. On error nothing stays mapped.
func mapMemoryTable(t MemoryTable, fds []int) (*sharedMemory, error) {
	if len(fds) != len(t.Regions) {
		return nil, fmt.Errorf("%w: %d memory regions with %d descriptors", ErrMalformed, len(t.Regions), len(fds))
	}
	m := &sharedMemory{}
	for i, r := range t.Regions {
		for _, o := range m.regions {
			if r.UserAddr < o.UserAddr+o.Size && o.UserAddr < r.UserAddr+r.Size {
				m.close()
				return nil, fmt.Errorf("%w: memory regions at user addresses %#x and %#x overlap", ErrMalformed, o.UserAddr, r.UserAddr)
			}
		}
		mem, err := memory.NewFromFile(fds[i], []memory.FileRegion{{GPA: r.GuestAddr, Size: r.Size, Offset: r.MmapOffset}}, memory.Shared)
		if err != nil {
			m.close()
			return nil, fmt.Errorf("vhostuser: mapping memory region %d (gpa %#x size %#x offset %#x): %w",
				i, r.GuestAddr, r.Size, r.MmapOffset, err)
		}
		m.regions = append(m.regions, sharedRegion{MemoryRegion: r, mem: mem})
	}
	return m, nil
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

func (m *sharedMemory) SliceForWrite(addr, n uint64) ([]byte, error) {
	r, err := m.find(addr)
	if err != nil {
		return nil, err
	}
	return r.SliceForWrite(addr, n)
}

func (m *sharedMemory) MarkDirty(addr, n uint64) error {
	r, err := m.find(addr)
	if err != nil {
		return err
	}
	return r.MarkDirty(addr, n)
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
	return r.WriteAt(p, addr)
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
	return r.StoreUint16(addr, v)
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
	return r.StoreUint32(addr, v)
}

// Generation implements memory.DMA: constant (see sharedMemory).
func (m *sharedMemory) Generation() uint64 { return 0 }
