package vtd

import (
	"encoding/binary"
	"errors"
	"sync/atomic"
)

// This file is what a Notifier needs to mirror one device's view of the
// unit somewhere else (a host VFIO container that follows the guest):
// which context the device has now (Tables.Context) and which mappings
// that context's domain has (Tables.Walk). The IOTLB events alone do not
// say when a device changes domain, or when translation goes on or off;
// the context and translation events (InvalidateContext*,
// TranslationChanged) do, and the follower then asks.

// ContextMode says how the unit treats a device's DMA right now.
type ContextMode int

const (
	// ContextBlocked: the device has no usable context (root or context
	// entry not present, malformed, or not in guest RAM): every access
	// it makes faults.
	ContextBlocked ContextMode = iota
	// ContextIdentity: the device's addresses are guest physical
	// addresses, because translation is off (GSTS.TES clear) or its
	// context is pass-through.
	ContextIdentity
	// ContextTranslated: the device's addresses go through its domain's
	// second-level tables.
	ContextTranslated
)

func (m ContextMode) String() string {
	switch m {
	case ContextBlocked:
		return "blocked"
	case ContextIdentity:
		return "identity"
	case ContextTranslated:
		return "translated"
	}
	return "unknown"
}

// DeviceContext is a device's context as the unit uses it. Two values are
// equal (==) exactly when they translate the same way through the same
// tables: same mode, domain, table root and depth.
type DeviceContext struct {
	Mode ContextMode
	// Domain is the context entry's domain id (translated and
	// pass-through contexts; 0 with translation off or blocked).
	Domain uint16
	// Reason says why a blocked context is blocked.
	Reason FaultReason
	root   uint64 // second-level table (translated)
	levels int    // 3 or 4 (translated)
}

// AddressLimit is the largest device address the context translates
// (0 unless translated).
func (c DeviceContext) AddressLimit() uint64 {
	if c.Mode != ContextTranslated {
		return 0
	}
	return 1<<pageShift(c.levels+1) - 1
}

// ErrStale reports a Tables used after the Invalidated call that handed
// it out returned.
var ErrStale = errors.New("vtd: Tables used outside its Invalidated call")

// ErrWalkBudget reports a Walk that stopped after reading its budget of
// table entries.
var ErrWalkBudget = errors.New("vtd: table walk budget exhausted")

// Tables reads the unit's translation state for a Notifier. It is valid
// only during the Invalidated call that handed it out (the unit's lock is
// held then); afterwards its methods report blocked contexts and ErrStale.
// It neither fills the IOTLB nor records faults; Context may fill the
// context cache, as a device's access would.
type Tables struct {
	u atomic.Pointer[Unit]
}

// Context returns the context the unit uses for source id sid now: the
// cached one if there is one, else what the tables say.
func (t *Tables) Context(sid uint16) DeviceContext {
	u := t.u.Load()
	if u == nil {
		return DeviceContext{Mode: ContextBlocked}
	}
	if u.r.gsts&gstsTES == 0 {
		return DeviceContext{Mode: ContextIdentity}
	}
	e, reason := u.context(sid)
	switch {
	case reason != 0:
		return DeviceContext{Mode: ContextBlocked, Reason: reason}
	case e.passthrough:
		return DeviceContext{Mode: ContextIdentity, Domain: e.did}
	}
	return DeviceContext{Mode: ContextTranslated, Domain: e.did, root: e.root, levels: e.levels}
}

// Walk calls fn, in ascending address order, for every present leaf of
// c's tables (a 4 KiB page or a 2 MiB or 1 GiB superpage, with the
// permissions accumulated down the walk) that overlaps [first, last].
// Entries a translation would fault on (reserved bits set, a misaligned
// superpage, a table outside guest RAM, neither R nor W) are skipped:
// a device access there faults, so there is nothing to mirror.
//
// The walk reads at most budget table entries: a guest's tables may
// alias (every entry of a table pointing at one next-level table), so the
// mappings of a 48-bit space are not bounded by guest RAM. If the budget
// runs out it returns ErrWalkBudget and next, the first address it did
// not look at; the leaves it reported below next are complete. On
// success next is 0 and err nil. A context that is not translated has
// nothing to walk.
func (t *Tables) Walk(c DeviceContext, first, last uint64, budget int, fn func(Mapping)) (next uint64, err error) {
	u := t.u.Load()
	if u == nil {
		return first, ErrStale
	}
	if c.Mode != ContextTranslated || first > last || first > c.AddressLimit() {
		return 0, nil
	}
	last = min(last, c.AddressLimit())
	w := walker{u: u, budget: budget, fn: fn}
	if !w.table(c.root, c.levels, 0, first, last, true, true) {
		return w.next, ErrWalkBudget
	}
	return 0, nil
}

type walker struct {
	u      *Unit
	budget int
	fn     func(Mapping)
	next   uint64 // where the budget ran out
}

// table visits the entries of the table at addr, a level-level table
// whose first entry maps device address base, that overlap [first,
// last]. r and w are the permissions granted above it. It reports false
// when the budget ran out (w.next says where).
func (w *walker) table(addr uint64, level int, base, first, last uint64, r, wr bool) bool {
	shift := pageShift(level)
	lo := uint64(0)
	if first > base {
		lo = (first - base) >> shift
	}
	hi := uint64(entriesPerLvl - 1)
	if span := last - base; span>>shift < hi {
		hi = span >> shift
	}
	// One read for the entries in range rather than one per entry (each
	// level has its own copy, so the recursion below cannot clobber it).
	var b [entriesPerLvl * 8]byte
	if _, err := w.u.mem.ReadAt(b[:(hi-lo+1)*8], int64(addr+lo*8)); err != nil {
		return true // the table is not in RAM: nothing under it translates
	}
	for i := lo; i <= hi; i++ {
		iova := base + i<<shift
		if w.budget <= 0 {
			w.next = max(iova, first)
			return false
		}
		w.budget--
		pte := binary.LittleEndian.Uint64(b[(i-lo)*8:])
		if pte&(pteR|pteW) == 0 || pte&pteReserved != 0 || level == 4 && pte&ptePS != 0 {
			continue
		}
		pr, pw := r && pte&pteR != 0, wr && pte&pteW != 0
		if level == 1 || pte&ptePS != 0 {
			size := uint64(1) << shift
			if pte&addrMask&(size-1) != 0 {
				continue // a misaligned superpage faults
			}
			w.fn(Mapping{IOVA: iova, GPA: pte & addrMask, Size: size, Read: pr, Write: pw})
			continue
		}
		if !w.table(pte&addrMask, level-1, iova, max(first, iova), min(last, iova+(1<<shift)-1), pr, pw) {
			return false
		}
	}
	return true
}

// notify tells the Notifier of ev, with a Tables and a Lookup valid for
// the call only. Caller holds mu.
func (u *Unit) notify(ev Invalidation) {
	if u.notifier == nil {
		return
	}
	t := &Tables{}
	t.u.Store(u)
	defer t.u.Store(nil)
	ev.Tables = t
	did := ev.Domain
	ev.Lookup = func(iova uint64) (Mapping, error) {
		if t.u.Load() == nil {
			return Mapping{}, ErrStale
		}
		return u.lookup(did, iova)
	}
	u.notifier.Invalidated(ev)
}

// Resync tells the Notifier that everything may have changed (a
// TranslationChanged event), so that a consumer set up after the unit
// was built, or one that lost track, catches up with the guest's state.
func (u *Unit) Resync() {
	u.mu.Lock()
	u.notify(Invalidation{Kind: TranslationChanged})
	u.unlock()
}
