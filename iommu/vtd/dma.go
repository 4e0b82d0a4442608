package vtd

import (
	"fmt"
	"sync/atomic"

	"github.com/viovmm/vio/memory"
)

// SourceID returns the PCI requester id of bus:dev.fn, the source id a
// device's accesses carry and the argument of DMA.
func SourceID(bus, dev, fn uint8) uint16 {
	return uint16(bus)<<8 | uint16(dev&0x1f)<<3 | uint16(fn&7)
}

// DMA returns the view of guest memory that the device with the given PCI
// source id (bus<<8 | device<<3 | function) has through the unit. Every
// access is translated; one the guest's tables do not allow fails with an
// error matching memory.ErrNotMapped (a *Fault) and is recorded as a DMAR
// fault. All views of a unit share its caches and report its generation;
// each also keeps its own copies of recent translations, so a device
// should keep its view rather than ask for one per access.
func (u *Unit) DMA(sourceID uint16) memory.DMA { return &view{u: u, sid: sourceID} }

type view struct {
	u   *Unit
	sid uint16
	// fast holds the view's own copies of recent 4 KiB translations,
	// direct-mapped by page number, so that a device's repeated
	// accesses to its rings and buffers take neither the unit's lock
	// nor a map lookup. An entry is valid only while the unit's
	// generation is the one it was made in; every change that could
	// make it wrong (an invalidation, TE, SRTP, Reset) moves the
	// generation under the unit's lock first.
	fast [fastEntries]atomic.Pointer[fastEntry]
}

const fastEntries = 16

type fastEntry struct {
	gen         uint64
	page        uint64 // device address >> 12
	gpa         uint64 // of the page
	read, write bool
}

// lookupFast translates iova from the view's own entries, or reports
// false.
func (v *view) lookupFast(iova uint64, write bool) (uint64, bool) {
	e := v.fast[iova>>12%fastEntries].Load()
	if e == nil || e.page != iova>>12 || e.gen != v.u.gen.Load() || write && !e.write || !write && !e.read {
		return 0, false
	}
	return e.gpa + iova&0xfff, true
}

// remember keeps the translation of iova's 4 KiB page. Caller holds
// Unit.mu, so the generation read here is the one tr was made in.
func (v *view) remember(iova uint64, tr translation) {
	v.fast[iova>>12%fastEntries].Store(&fastEntry{
		gen: v.u.gen.Load(), page: iova >> 12, gpa: tr.gpa - iova&0xfff, read: tr.read, write: tr.write,
	})
}

var _ memory.DMA = (*view)(nil)

// chunk is a piece of an access that is contiguous in guest physical
// memory.
type chunk struct{ gpa, n uint64 }

// resolve translates [addr, addr+n) for a read or a write into chunks,
// merging pages that are adjacent in guest physical memory. buf is reused
// for the result. Nothing is recorded for a range that fails for a reason
// other than translation (too long, wrapping around).
func (v *view) resolve(addr, n uint64, write bool, buf []chunk) ([]chunk, error) {
	// A range longer than guest RAM cannot be backed by it; refusing it
	// here bounds the loop below by the size of RAM.
	if n > v.u.mem.Size() {
		return nil, fmt.Errorf("%w: %#x+%#x is larger than guest RAM", memory.ErrOutOfRange, addr, n)
	}
	if n > 0 && addr+n-1 < addr {
		return nil, fmt.Errorf("%w: %#x+%#x wraps around", memory.ErrNotMapped, addr, n)
	}
	out := buf[:0]
	if n <= 0x1000-addr&0xfff {
		if gpa, ok := v.lookupFast(addr, write); ok {
			return append(out, chunk{gpa, n}), nil
		}
	}
	u := v.u
	u.mu.Lock()
	defer u.unlock()
	for off := uint64(0); ; {
		tr, err := u.translate(v.sid, addr+off, write)
		if err != nil {
			return nil, err
		}
		v.remember(addr+off, tr)
		gpa := tr.gpa
		take := min(tr.span, n-off)
		if l := len(out) - 1; l >= 0 && out[l].gpa+out[l].n == gpa {
			out[l].n += take
		} else {
			out = append(out, chunk{gpa, take})
		}
		off += take
		if off >= n {
			return out, nil
		}
	}
}

// one resolves a range that must be contiguous in guest physical memory.
func (v *view) one(addr, n uint64, write bool) (uint64, error) {
	var buf [2]chunk
	c, err := v.resolve(addr, n, write, buf[:])
	if err != nil {
		return 0, err
	}
	if len(c) != 1 {
		return 0, fmt.Errorf("%w: %#x+%#x maps to %d separate guest ranges", memory.ErrNotMapped, addr, n, len(c))
	}
	return c[0].gpa, nil
}

// Slice is part of memory.DMA. It refuses (ErrNotMapped) a range whose
// pages are not contiguous in guest physical memory.
func (v *view) Slice(addr, n uint64) ([]byte, error) {
	gpa, err := v.one(addr, n, false)
	if err != nil {
		return nil, err
	}
	return v.u.mem.Slice(gpa, n)
}

// SliceForWrite is part of memory.DMA; it needs write permission.
func (v *view) SliceForWrite(addr, n uint64) ([]byte, error) {
	gpa, err := v.one(addr, n, true)
	if err != nil {
		return nil, err
	}
	return v.u.mem.SliceForWrite(gpa, n)
}

// MarkDirty is part of memory.DMA; it needs write permission, as it
// follows a write.
func (v *view) MarkDirty(addr, n uint64) error {
	var buf [4]chunk
	cs, err := v.resolve(addr, n, true, buf[:])
	if err != nil {
		return err
	}
	for _, c := range cs {
		if err := v.u.mem.MarkDirty(c.gpa, c.n); err != nil {
			return err
		}
	}
	return nil
}

// ReadAt is part of memory.DMA: all or nothing, split at page boundaries
// as the translation requires.
func (v *view) ReadAt(p []byte, addr int64) (int, error) {
	if addr < 0 {
		return 0, fmt.Errorf("%w: negative address %d", memory.ErrNotMapped, addr)
	}
	var buf [4]chunk
	cs, err := v.resolve(uint64(addr), uint64(len(p)), false, buf[:])
	if err != nil {
		return 0, err
	}
	if len(cs) == 1 {
		return v.u.mem.ReadAt(p, int64(cs[0].gpa))
	}
	srcs, err := v.slices(cs, false)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, s := range srcs {
		n += copy(p[n:], s)
	}
	return n, nil
}

// WriteAt is part of memory.DMA: all or nothing, split at page
// boundaries as the translation requires.
func (v *view) WriteAt(p []byte, addr int64) (int, error) {
	if addr < 0 {
		return 0, fmt.Errorf("%w: negative address %d", memory.ErrNotMapped, addr)
	}
	var buf [4]chunk
	cs, err := v.resolve(uint64(addr), uint64(len(p)), true, buf[:])
	if err != nil {
		return 0, err
	}
	if len(cs) == 1 {
		return v.u.mem.WriteAt(p, int64(cs[0].gpa))
	}
	dsts, err := v.slices(cs, true)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, d := range dsts {
		n += copy(d, p[n:])
	}
	// Mark after the copies, as Memory.WriteAt does, so that dirty
	// tracking cannot miss them.
	for _, c := range cs {
		if err := v.u.mem.MarkDirty(c.gpa, c.n); err != nil {
			return n, err
		}
	}
	return n, nil
}

// slices checks every chunk against guest RAM before anything is copied,
// which keeps a multi-page access all or nothing.
func (v *view) slices(cs []chunk, write bool) ([][]byte, error) {
	out := make([][]byte, 0, len(cs))
	for _, c := range cs {
		var s []byte
		var err error
		if write {
			s, err = v.u.mem.SliceForWrite(c.gpa, c.n)
		} else {
			s, err = v.u.mem.Slice(c.gpa, c.n)
		}
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// Translation keeps the offset in a 4 KiB page, so an aligned atomic
// access stays aligned and in one page; an unaligned one is refused
// before translation, as Memory refuses it.
func (v *view) atomic(addr, size uint64, write bool) (uint64, error) {
	if addr%size != 0 {
		return 0, fmt.Errorf("%w: %#x is not %d-byte aligned", memory.ErrOutOfRange, addr, size)
	}
	return v.one(addr, size, write)
}

func (v *view) LoadUint16(addr uint64) (uint16, error) {
	gpa, err := v.atomic(addr, 2, false)
	if err != nil {
		return 0, err
	}
	return v.u.mem.LoadUint16(gpa)
}

func (v *view) StoreUint16(addr uint64, val uint16) error {
	gpa, err := v.atomic(addr, 2, true)
	if err != nil {
		return err
	}
	return v.u.mem.StoreUint16(gpa, val)
}

func (v *view) LoadUint32(addr uint64) (uint32, error) {
	gpa, err := v.atomic(addr, 4, false)
	if err != nil {
		return 0, err
	}
	return v.u.mem.LoadUint32(gpa)
}

func (v *view) StoreUint32(addr uint64, val uint32) error {
	gpa, err := v.atomic(addr, 4, true)
	if err != nil {
		return err
	}
	return v.u.mem.StoreUint32(gpa, val)
}

// Generation is part of memory.DMA: it moves whenever translation may
// have changed (translation switched on or off, a new root table, any
// context or IOTLB invalidation), before the guest is told the change is
// complete.
func (v *view) Generation() uint64 { return v.u.gen.Load() }
