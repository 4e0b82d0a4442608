// Package bus dispatches guest accesses to an address space (port I/O or
// MMIO) to the device that claims the address.
package bus

import (
	"errors"
	"fmt"
	"sort"
	"sync"
)

// Device is anything the guest reaches by PIO or MMIO. offset is relative to
// the start of the range the device was registered at; len(data) is the
// access size (1, 2, 4 or 8 bytes; larger for string/REP accesses only if a
// device opts in). Read fills data; Write consumes it. A device never sees an
// access outside its range. Calls may come from several vCPU threads at once:
// a device guards its own state.
type Device interface {
	Read(offset uint64, data []byte)
	Write(offset uint64, data []byte)
}

// ErrOverlap reports a registration that overlaps an existing range.
var ErrOverlap = errors.New("bus: range overlaps an existing device")

type entry struct {
	base, size uint64
	dev        Device
}

// Bus is one address space. Registration may happen while vCPUs run
// (PCI BAR reprogramming), so lookups take a read lock.
type Bus struct {
	name string

	mu      sync.RWMutex
	entries []entry // sorted by base, non-overlapping
}

// New returns an empty bus; name appears in errors ("pio", "mmio").
func New(name string) *Bus { return &Bus{name: name} }

// Register maps [base, base+size) to dev.
func (b *Bus) Register(base, size uint64, dev Device) error {
	if size == 0 || base+size < base {
		return fmt.Errorf("bus %s: bad range %#x+%#x", b.name, base, size)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	i := sort.Search(len(b.entries), func(i int) bool { return b.entries[i].base >= base })
	if i > 0 && b.entries[i-1].base+b.entries[i-1].size > base ||
		i < len(b.entries) && base+size > b.entries[i].base {
		return fmt.Errorf("%w: %s %#x+%#x", ErrOverlap, b.name, base, size)
	}
	b.entries = append(b.entries, entry{})
	copy(b.entries[i+1:], b.entries[i:])
	b.entries[i] = entry{base, size, dev}
	return nil
}

// Unregister removes the range that starts at base. It reports whether one did.
func (b *Bus) Unregister(base uint64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, e := range b.entries {
		if e.base == base {
			b.entries = append(b.entries[:i], b.entries[i+1:]...)
			return true
		}
	}
	return false
}

func (b *Bus) lookup(addr uint64, n int) (Device, uint64, bool) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	i := sort.Search(len(b.entries), func(i int) bool { return b.entries[i].base > addr }) - 1
	if i < 0 {
		return nil, 0, false
	}
	e := b.entries[i]
	off := addr - e.base
	if off >= e.size || uint64(n) > e.size-off {
		return nil, 0, false
	}
	return e.dev, off, true
}

// Read dispatches a guest read. It reports false, leaving data untouched,
// when no device claims the whole access; the caller decides what an
// unclaimed read returns (all ones, on x86).
func (b *Bus) Read(addr uint64, data []byte) bool {
	d, off, ok := b.lookup(addr, len(data))
	if ok {
		d.Read(off, data)
	}
	return ok
}

// Write dispatches a guest write; it reports false when no device claims it.
func (b *Bus) Write(addr uint64, data []byte) bool {
	d, off, ok := b.lookup(addr, len(data))
	if ok {
		d.Write(off, data)
	}
	return ok
}
