// Package dmatest is a translating memory.DMA for tests: device addresses
// (IOVAs) map to guest physical addresses through windows that a test can
// map, unmap and move while a device runs, as a guest's IOMMU driver
// would. Each change bumps the generation, so a test can check that a
// device holding slices notices a remap and resolves them again.
package dmatest

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/viovmm/vio/memory"
)

// Window maps the device addresses [IOVA, IOVA+Size) to the guest
// physical addresses [GPA, GPA+Size).
type Window struct {
	IOVA, GPA, Size uint64
}

// DMA translates device addresses through windows onto a memory.Memory.
// It is safe for concurrent use.
type DMA struct {
	mem *memory.Memory
	gen atomic.Uint64

	mu      sync.RWMutex
	windows []Window
}

var _ memory.DMA = (*DMA)(nil)

// New returns a DMA over mem with nothing mapped.
func New(mem *memory.Memory) *DMA { return &DMA{mem: mem} }

const page = memory.DirtyPageSize

// Map adds a window. Addresses and size must be page aligned and the
// window must not overlap a mapped one in device address space; the GPAs
// are checked by each access, as an IOMMU checks nothing at map time
// either. It bumps the generation.
func (d *DMA) Map(w Window) error {
	if w.Size == 0 || w.IOVA%page != 0 || w.GPA%page != 0 || w.Size%page != 0 || w.IOVA+w.Size < w.IOVA {
		return fmt.Errorf("dmatest: window %#x->%#x+%#x is not page aligned", w.IOVA, w.GPA, w.Size)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, o := range d.windows {
		if w.IOVA < o.IOVA+o.Size && o.IOVA < w.IOVA+w.Size {
			return fmt.Errorf("dmatest: window at %#x overlaps the one at %#x", w.IOVA, o.IOVA)
		}
	}
	d.windows = append(d.windows, w)
	d.gen.Add(1)
	return nil
}

// Unmap removes the window that starts at iova and bumps the generation.
func (d *DMA) Unmap(iova uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, w := range d.windows {
		if w.IOVA == iova {
			d.windows = append(d.windows[:i], d.windows[i+1:]...)
			d.gen.Add(1)
			return nil
		}
	}
	return fmt.Errorf("dmatest: no window at %#x", iova)
}

// Move points the window at iova to newGPA in one step (one generation).
func (d *DMA) Move(iova, newGPA uint64) error {
	if newGPA%page != 0 {
		return fmt.Errorf("dmatest: %#x is not page aligned", newGPA)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range d.windows {
		if d.windows[i].IOVA == iova {
			d.windows[i].GPA = newGPA
			d.gen.Add(1)
			return nil
		}
	}
	return fmt.Errorf("dmatest: no window at %#x", iova)
}

// translate returns the GPA of [addr, addr+n), which must lie in one
// window.
func (d *DMA) translate(addr, n uint64) (uint64, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	for _, w := range d.windows {
		if addr >= w.IOVA && addr-w.IOVA < w.Size {
			off := addr - w.IOVA
			if n > w.Size-off {
				return 0, fmt.Errorf("%w: %#x+%#x leaves the window at %#x", memory.ErrNotMapped, addr, n, w.IOVA)
			}
			return w.GPA + off, nil
		}
	}
	return 0, fmt.Errorf("%w: %#x", memory.ErrNotMapped, addr)
}

// Generation counts the changes made by Map, Unmap and Move.
func (d *DMA) Generation() uint64 { return d.gen.Load() }

func (d *DMA) Slice(addr, n uint64) ([]byte, error) {
	g, err := d.translate(addr, n)
	if err != nil {
		return nil, err
	}
	return d.mem.Slice(g, n)
}

func (d *DMA) SliceForWrite(addr, n uint64) ([]byte, error) {
	g, err := d.translate(addr, n)
	if err != nil {
		return nil, err
	}
	return d.mem.SliceForWrite(g, n)
}

func (d *DMA) MarkDirty(addr, n uint64) error {
	g, err := d.translate(addr, n)
	if err != nil {
		return err
	}
	return d.mem.MarkDirty(g, n)
}

func (d *DMA) ReadAt(p []byte, addr int64) (int, error) {
	if addr < 0 {
		return 0, fmt.Errorf("%w: negative address %d", memory.ErrNotMapped, addr)
	}
	g, err := d.translate(uint64(addr), uint64(len(p)))
	if err != nil {
		return 0, err
	}
	return d.mem.ReadAt(p, int64(g))
}

func (d *DMA) WriteAt(p []byte, addr int64) (int, error) {
	if addr < 0 {
		return 0, fmt.Errorf("%w: negative address %d", memory.ErrNotMapped, addr)
	}
	g, err := d.translate(uint64(addr), uint64(len(p)))
	if err != nil {
		return 0, err
	}
	return d.mem.WriteAt(p, int64(g))
}

// Windows are page aligned, so translation keeps an address's alignment
// and the atomic accessors' alignment checks stay meaningful.

func (d *DMA) LoadUint16(addr uint64) (uint16, error) {
	g, err := d.translate(addr, 2)
	if err != nil {
		return 0, err
	}
	return d.mem.LoadUint16(g)
}

func (d *DMA) StoreUint16(addr uint64, v uint16) error {
	g, err := d.translate(addr, 2)
	if err != nil {
		return err
	}
	return d.mem.StoreUint16(g, v)
}

func (d *DMA) LoadUint32(addr uint64) (uint32, error) {
	g, err := d.translate(addr, 4)
	if err != nil {
		return 0, err
	}
	return d.mem.LoadUint32(g)
}

func (d *DMA) StoreUint32(addr uint64, v uint32) error {
	g, err := d.translate(addr, 4)
	if err != nil {
		return err
	}
	return d.mem.StoreUint32(g, v)
}
