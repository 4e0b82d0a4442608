// Package vfiomap keeps a host DMA address space (a VFIO type1 container)
// in step with what one guest device may reach through vio's emulated
// Intel VT-d unit (iommu/vtd): a host PCI device passed through to a guest
// that uses the vIOMMU then reaches exactly the guest memory its guest
// driver mapped for it, and only that memory is pinned.
//
// A Follower is the unit's vtd.Notifier for one device (one source id).
// The unit runs in caching mode, so the guest invalidates after every map
// as well as every unmap, and every change reaches the Follower before the
// guest is told the invalidation completed. The Follower tracks the
// device's context:
//   - identity (translation off, or a pass-through context): the device
//     DMAs with guest physical addresses, so all of guest RAM is mapped at
//     its guest addresses, as without the vIOMMU;
//   - translated (a domain with second-level tables): the container maps
//     the domain's present pages, IOVA = the guest's device address, the
//     buffer = vio's host memory behind the guest physical page, the
//     rights those of the guest's entry;
//   - blocked (no valid context): nothing is mapped.
//
// When the context changes (context invalidations, TE, SRTP, reset) the
// container is emptied and rebuilt from the new context (a replay: a walk
// of the domain's tables). Domain-wide and global IOTLB invalidations
// replay without emptying; page-selective ones reconcile their range:
// the range is walked, what the host maps there and the guest no longer
// does (or maps elsewhere, or with other rights) is unmapped, what is new
// is mapped, and what is unchanged is left alone, so a device's DMA to a
// page the guest keeps mapped never sees a gap.
//
// Host mappings are contiguous runs: consecutive guest pages that are
// contiguous in guest RAM, with the same rights, found in the same walk,
// are one mapping. A run is split only when the guest changes part of it,
// and then its surviving parts are unmapped and mapped again (VFIO's
// type1v2 cannot unmap part of a mapping); Linux unmaps what it mapped
// together, so that is rare.
//
// A hostile guest cannot make the Follower exceed its limits: a walk
// reads at most Config.WalkBudget table entries per event (the guest's
// tables may alias, so a 48-bit space can hold more pages than any walk
// can visit); the container holds at most Config.MaxMappings mappings
// (VFIO's dma_entry_limit is 65535 by default) and Config.MaxBytes bytes
// (guest RAM by default). What the Follower cannot map (a page outside
// guest RAM, a run over a limit, a host error) stays unmapped: the
// device's DMA there fails on the host IOMMU, which is safe. Such events
// are counted (Stats) and logged, never a panic.
//
// Unmapping is done before Invalidated returns, as the vtd.Notifier
// contract requires: the guest never believes an unmap complete while
// the host still maps the page. An unmap the host refuses (which VFIO
// does only for a range vio got wrong) is counted and the mapping is kept
// in the Follower's books, so it is retried at the next replay.
package vfiomap

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/viovmm/vio/iommu/vtd"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/vfio"
)

// Container is the host DMA address space a Follower keeps in step: a
// VFIO type1v2 container.
//
// MapDMA makes buf reachable at device address iova with rights
// (vfio.DMARead, vfio.DMAWrite); it fails for a range overlapping an
// existing mapping. UnmapDMA removes every mapping inside [iova,
// iova+size); it fails, removing nothing, if a mapping straddles either
// end. Both are synchronous: when they return, the host IOMMU says so.
type Container interface {
	MapDMA(buf []byte, iova uint64, rights uint32) error
	UnmapDMA(iova, size uint64) error
}

var _ Container = (*vfio.Container)(nil)

// Defaults of Config's limits.
const (
	// DefaultMaxMappings is vfio_iommu_type1's default dma_entry_limit.
	DefaultMaxMappings = 65535
	// DefaultWalkBudget bounds the table entries one event reads: about
	// 2000 page tables, a few milliseconds on the vCPU.
	DefaultWalkBudget = 1 << 20
)

const pageSize = 4096

// Config describes one Follower.
type Config struct {
	// Mem is guest RAM: guest physical pages are mapped as the host
	// memory behind them, and pages outside it are refused. Required.
	Mem *memory.Memory
	// SourceID is the device's PCI requester id as the guest sees it
	// (vtd.SourceID(bus, slot, fn)).
	SourceID uint16
	// Container is where the mappings go. Required.
	Container Container
	// MaxMappings bounds the container's mappings (0: DefaultMaxMappings).
	MaxMappings int
	// MaxBytes bounds the bytes mapped, so what is pinned (0: the size of
	// guest RAM; a guest may map a page at several addresses, each of
	// which the host counts).
	MaxBytes uint64
	// WalkBudget bounds the table entries one event reads (0:
	// DefaultWalkBudget).
	WalkBudget int
	// Log, if not nil, is told of failures (rate-limited: the first, then
	// every power of two of their count). It is called with the unit's
	// lock held and must not block.
	Log func(msg string, args ...any)
}

// Stats counts what a Follower did.
type Stats struct {
	Mode      vtd.ContextMode // the device's context as last seen
	Domain    uint16          // its domain (translated or pass-through)
	Mappings  int             // host mappings now
	Bytes     uint64          // bytes mapped now: what the host pins for the device
	Maps      uint64          // MapDMA calls that succeeded
	Unmaps    uint64          // UnmapDMA calls that succeeded
	Replays   uint64          // full walks of a domain
	Remapped  uint64          // bytes unmapped and mapped again to split a run
	Refused   uint64          // guest pages left unmapped: outside RAM or over a limit
	Truncated uint64          // walks cut short by the budget (the rest stays unmapped)
	Errors    uint64          // host calls that failed
}

// extent is one host mapping: [iova, iova+size) → guest RAM at gpa.
type extent struct {
	iova, size, gpa uint64
	rights          uint32
	region          int // index of the RAM region holding it
}

func (e extent) end() uint64 { return e.iova + e.size } // exclusive; never wraps (48-bit IOVAs)

// Follower mirrors one device's view of the unit into a Container. Its
// Invalidated runs on the vCPU under the unit's lock; Stats and Err may
// be called from anywhere.
type Follower struct {
	cfg     Config
	regions []memory.Region

	mu       sync.Mutex
	ctx      vtd.DeviceContext
	known    bool     // ctx is what the container reflects
	maps     []extent // what the container maps, sorted by iova, disjoint
	stats    Stats
	err      error  // the first failure
	failures uint64 // failures so far, for rate-limited logging
}

var _ vtd.Notifier = (*Follower)(nil)

// New returns a Follower with nothing mapped; it starts following at the
// first event (vtd.Unit.Resync sends one).
func New(cfg Config) (*Follower, error) {
	if cfg.Mem == nil || cfg.Container == nil {
		return nil, errors.New("vfiomap: Config.Mem and Config.Container are required")
	}
	if cfg.MaxMappings < 0 || cfg.WalkBudget < 0 {
		return nil, errors.New("vfiomap: limits must not be negative")
	}
	if cfg.MaxMappings == 0 {
		cfg.MaxMappings = DefaultMaxMappings
	}
	if cfg.WalkBudget == 0 {
		cfg.WalkBudget = DefaultWalkBudget
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = cfg.Mem.Size()
	}
	for _, r := range cfg.Mem.Regions() {
		if r.GPA%pageSize != 0 || r.Size()%pageSize != 0 {
			return nil, fmt.Errorf("vfiomap: guest RAM at %#x+%#x is not page-aligned", r.GPA, r.Size())
		}
	}
	return &Follower{cfg: cfg, regions: cfg.Mem.Regions()}, nil
}

// Stats returns the Follower's counters.
func (f *Follower) Stats() Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.stats
	s.Mode, s.Domain = f.ctx.Mode, f.ctx.Domain
	s.Mappings = len(f.maps)
	return s
}

// Err returns the first failure the Follower met (a host call refused, a
// page refused, a walk cut short), nil if none.
func (f *Follower) Err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// Invalidated implements vtd.Notifier.
func (f *Follower) Invalidated(ev vtd.Invalidation) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := ev.Tables
	translated := f.known && f.ctx.Mode == vtd.ContextTranslated
	switch ev.Kind {
	case vtd.TranslationChanged:
		f.resync(t)
	case vtd.InvalidateContextAll, vtd.InvalidateContextDomain, vtd.InvalidateContextDevice:
		if !f.known || ev.Covers(f.cfg.SourceID, f.ctx) {
			f.resync(t)
		}
	case vtd.InvalidateAll:
		if translated {
			f.replay(t)
		}
	case vtd.InvalidateDomain:
		if translated && ev.Domain == f.ctx.Domain {
			f.replay(t)
		}
	case vtd.InvalidateMap, vtd.InvalidateUnmap:
		// Both are reconciled the same way: the range is walked, so a
		// range that mixes mapped and unmapped pages comes out right.
		if translated && ev.Domain == f.ctx.Domain && ev.Size > 0 {
			f.reconcile(t, ev.IOVA, ev.IOVA+ev.Size-1)
		}
	}
}

// resync reads the device's context: a new one empties the container and
// rebuilds it; the same one is replayed (the guest may have changed the
// domain's tables along with the context).
func (f *Follower) resync(t *vtd.Tables) {
	c := t.Context(f.cfg.SourceID)
	if f.known && c.Mode == vtd.ContextIdentity && f.ctx.Mode == vtd.ContextIdentity {
		// Translation off and a pass-through context mean the same:
		// keep RAM mapped (mapping again only what failed before).
		f.ctx = c
		f.mapRAM()
		return
	}
	if f.known && c == f.ctx {
		if c.Mode == vtd.ContextTranslated {
			f.replay(t)
		}
		return
	}
	f.unmapAll()
	f.ctx, f.known = c, true
	switch c.Mode {
	case vtd.ContextIdentity:
		f.mapRAM()
	case vtd.ContextTranslated:
		f.replay(t)
	}
}

// replay reconciles the domain's whole address space.
func (f *Follower) replay(t *vtd.Tables) {
	f.stats.Replays++
	f.reconcile(t, 0, f.ctx.AddressLimit())
}

// fail adds n to a counter, records the first failure and logs failures
// at power-of-two counts (a hostile guest can fail on every event).
func (f *Follower) fail(counter *uint64, n uint64, msg string, args ...any) {
	*counter += n
	f.failures++
	if f.err == nil {
		var b strings.Builder
		var cause error
		for i := 0; i+1 < len(args); i += 2 {
			if err, ok := args[i+1].(error); ok {
				cause = err
				continue
			}
			fmt.Fprintf(&b, " %v=%v", args[i], args[i+1])
		}
		f.err = fmt.Errorf("vfiomap: device %02x:%02x.%d: %s:%s", f.cfg.SourceID>>8, f.cfg.SourceID>>3&0x1f, f.cfg.SourceID&7, msg, b.String())
		if cause != nil {
			f.err = fmt.Errorf("%w: %w", f.err, cause)
		}
	}
	if f.failures&(f.failures-1) == 0 && f.cfg.Log != nil {
		f.cfg.Log("vIOMMU pass-through: "+msg, append(args, "source", fmt.Sprintf("%#04x", f.cfg.SourceID), "failures", f.failures)...)
	}
}

// unmapAll empties the container: one call for everything (type1 removes
// every mapping inside the range), one per mapping if that fails.
func (f *Follower) unmapAll() {
	if len(f.maps) == 0 {
		return
	}
	first, last := f.maps[0].iova, f.maps[len(f.maps)-1].end()
	if err := f.cfg.Container.UnmapDMA(first, last-first); err == nil {
		f.stats.Unmaps++
		f.maps = f.maps[:0]
		f.stats.Bytes = 0
		return
	}
	kept := f.maps[:0]
	for _, e := range f.maps {
		if f.unmap(e.iova, e.size) {
			f.stats.Bytes -= e.size
		} else {
			kept = append(kept, e)
		}
	}
	f.maps = kept
}

// unmap removes [iova, iova+size) from the container and reports whether
// it did.
func (f *Follower) unmap(iova, size uint64) bool {
	if err := f.cfg.Container.UnmapDMA(iova, size); err != nil {
		f.fail(&f.stats.Errors, 1, "unmapping", "iova", fmt.Sprintf("%#x", iova), "size", size, "err", err)
		return false
	}
	f.stats.Unmaps++
	return true
}

// mapRAM maps every RAM region at its guest address (identity), but those
// already mapped.
func (f *Follower) mapRAM() {
	var add []extent
	for i, r := range f.regions {
		if lo, hi := f.overlapping(r.GPA, r.End()-1); lo < hi {
			continue
		}
		add = append(add, extent{iova: r.GPA, size: r.Size(), gpa: r.GPA, rights: vfio.DMARead | vfio.DMAWrite, region: i})
	}
	mapped := f.mapRuns(add, len(f.maps))
	f.maps = mergeSorted(f.maps, mapped)
}

// overlapping returns the indexes [lo, hi) of the mappings that overlap
// [first, last].
func (f *Follower) overlapping(first, last uint64) (int, int) {
	lo := sort.Search(len(f.maps), func(i int) bool { return f.maps[i].end()-1 >= first })
	hi := lo + sort.Search(len(f.maps)-lo, func(i int) bool { return f.maps[lo+i].iova > last })
	return lo, hi
}

// reconcile makes the container match the guest's tables over [first,
// last]: unchanged mappings stay, stale ones go, new ones come.
func (f *Follower) reconcile(t *vtd.Tables, first, last uint64) {
	// What the guest maps there now, as runs of host-mappable memory.
	var want []extent
	next, err := t.Walk(f.ctx, first, last, f.cfg.WalkBudget, func(m vtd.Mapping) {
		lo, hi := max(m.IOVA, first), min(m.IOVA+m.Size-1, last)
		var rights uint32
		if m.Read {
			rights |= vfio.DMARead
		}
		if m.Write {
			rights |= vfio.DMAWrite
		}
		if rights == 0 {
			return // neither R nor W survived the walk: every access faults
		}
		want = f.appendRAM(want, lo, m.GPA+(lo-m.IOVA), hi-lo+1, rights)
	})
	if err != nil {
		// Fail closed: what lies beyond where the walk stopped is
		// treated as unmapped.
		f.fail(&f.stats.Truncated, 1, "table walk cut short", "at", fmt.Sprintf("%#x", next), "err", err)
	}

	// The host's mappings there: those that still match stay; the
	// others go, and their parts outside the range (still valid) are
	// mapped again.
	lo, hi := f.overlapping(first, last)
	var keep, redo []extent
	unmapped := func(e extent) {
		f.stats.Bytes -= e.size
		if e.iova < first {
			redo = append(redo, e.cut(e.iova, first-1))
		}
		if e.end()-1 > last {
			redo = append(redo, e.cut(last+1, e.end()-1))
		}
	}
	// Unmap the stale mappings, each run of them (no kept mapping in
	// between) in one call, one by one if that fails.
	old := f.maps[lo:hi]
	for i := 0; i < len(old); {
		if covers(want, old[i], first, last) {
			keep = append(keep, old[i])
			i++
			continue
		}
		j := i + 1
		for j < len(old) && !covers(want, old[j], first, last) {
			j++
		}
		if f.cfg.Container.UnmapDMA(old[i].iova, old[j-1].end()-old[i].iova) == nil {
			f.stats.Unmaps++
			for _, e := range old[i:j] {
				unmapped(e)
			}
		} else {
			for _, e := range old[i:j] {
				if f.unmap(e.iova, e.size) {
					unmapped(e)
				} else {
					keep = append(keep, e) // still mapped: keep the books right
				}
			}
		}
		i = j
	}
	for _, e := range redo {
		f.stats.Remapped += e.size
	}
	add := coalesce(mergeSorted(subtract(want, keep), redo))
	mapped := f.mapRuns(add, len(f.maps)-(hi-lo)+len(keep))
	// In place: a strict-mode guest does this twice per I/O, with all
	// its other mappings after the segment.
	f.maps = slices.Replace(f.maps, lo, hi, mergeSorted(keep, mapped)...)
}

// cut returns the part [first, last] of e.
func (e extent) cut(first, last uint64) extent {
	return extent{iova: first, size: last - first + 1, gpa: e.gpa + (first - e.iova), rights: e.rights, region: e.region}
}

// appendRAM appends [iova, iova+size) → gpa to runs, split at the edges
// of guest RAM; the pages outside RAM are refused (counted). The piece
// joins the last run when it continues it in both spaces.
func (f *Follower) appendRAM(runs []extent, iova, gpa, size uint64, rights uint32) []extent {
	for size > 0 {
		ri, n := f.ramAt(gpa, size)
		if ri < 0 {
			// n bytes outside RAM.
			f.fail(&f.stats.Refused, n/pageSize, "a guest mapping outside RAM", "iova", fmt.Sprintf("%#x", iova), "gpa", fmt.Sprintf("%#x", gpa), "pages", n/pageSize)
		} else {
			e := extent{iova: iova, size: n, gpa: gpa, rights: rights, region: ri}
			if k := len(runs) - 1; k >= 0 && runs[k].continues(e) {
				runs[k].size += n
			} else {
				runs = append(runs, e)
			}
		}
		iova, gpa, size = iova+n, gpa+n, size-n
	}
	return runs
}

// continues reports whether b starts where a ends, in both spaces, with
// a's rights and in a's region.
func (a extent) continues(b extent) bool {
	return a.end() == b.iova && a.gpa+a.size == b.gpa && a.rights == b.rights && a.region == b.region
}

// ramAt returns the region holding gpa and how many of the size bytes
// from gpa it holds, or -1 and how many bytes from gpa lie outside RAM
// (up to the next region or size).
func (f *Follower) ramAt(gpa, size uint64) (int, uint64) {
	gap := size
	for i, r := range f.regions {
		if gpa >= r.GPA && gpa-r.GPA < r.Size() {
			return i, min(size, r.End()-gpa)
		}
		if r.GPA > gpa && r.GPA-gpa < gap {
			gap = r.GPA - gpa
		}
	}
	return -1, gap
}

// covers reports whether want maps all of e's part in [first, last]
// exactly as e does (same guest page for each address, same rights).
func covers(want []extent, e extent, first, last uint64) bool {
	a, b := max(e.iova, first), min(e.end()-1, last)
	i := sort.Search(len(want), func(i int) bool { return want[i].end()-1 >= a })
	for ; i < len(want) && a <= b; i++ {
		w := want[i]
		if w.iova > a || w.rights != e.rights || w.gpa-w.iova != e.gpa-e.iova {
			return false
		}
		a = w.end()
		if a == 0 { // the end of the 64-bit space
			return true
		}
	}
	return a > b
}

// subtract returns the parts of want that no mapping of keep covers (both
// sorted and disjoint).
func subtract(want, keep []extent) []extent {
	var out []extent
	k := 0
	for _, w := range want {
		for w.size > 0 {
			for k < len(keep) && keep[k].end() <= w.iova {
				k++
			}
			if k == len(keep) || keep[k].iova >= w.end() {
				out = append(out, w)
				break
			}
			if keep[k].iova > w.iova {
				out = append(out, w.cut(w.iova, keep[k].iova-1))
			}
			if keep[k].end() >= w.end() {
				break
			}
			w = w.cut(keep[k].end(), w.end()-1)
		}
	}
	return out
}

// coalesce joins sorted runs that continue each other.
func coalesce(runs []extent) []extent {
	out := runs[:0]
	for _, e := range runs {
		if k := len(out) - 1; k >= 0 && out[k].continues(e) {
			out[k].size += e.size
			continue
		}
		out = append(out, e)
	}
	return out
}

// mergeSorted returns the union of two sorted, mutually disjoint lists,
// sorted.
func mergeSorted(a, b []extent) []extent {
	out := make([]extent, 0, len(a)+len(b))
	for len(a) > 0 && len(b) > 0 {
		if a[0].iova < b[0].iova {
			out, a = append(out, a[0]), a[1:]
		} else {
			out, b = append(out, b[0]), b[1:]
		}
	}
	return append(append(out, a...), b...)
}

// mapRuns maps each run within the limits, given that the container will
// hold others mappings besides them, and returns those it mapped.
func (f *Follower) mapRuns(runs []extent, others int) []extent {
	var done []extent
	for _, e := range runs {
		if others+len(done) >= f.cfg.MaxMappings || e.size > f.cfg.MaxBytes-min(f.cfg.MaxBytes, f.stats.Bytes) {
			f.fail(&f.stats.Refused, e.size/pageSize, "a guest mapping over the limits", "iova", fmt.Sprintf("%#x", e.iova), "pages", e.size/pageSize,
				"mappings", others+len(done), "bytes", f.stats.Bytes)
			continue
		}
		r := f.regions[e.region]
		off := e.gpa - r.GPA
		if err := f.cfg.Container.MapDMA(r.Data[off:off+e.size], e.iova, e.rights); err != nil {
			f.fail(&f.stats.Errors, 1, "mapping", "iova", fmt.Sprintf("%#x", e.iova), "gpa", fmt.Sprintf("%#x", e.gpa), "size", e.size, "err", err)
			continue
		}
		f.stats.Maps++
		f.stats.Bytes += e.size
		done = append(done, e)
	}
	return done
}
