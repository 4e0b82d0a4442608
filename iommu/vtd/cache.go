package vtd

// The unit's two translation caches. Like the hardware's, they hold what
// the guest's tables said when they were read, and keep saying it until
// the guest invalidates them: a guest that changes a table without
// invalidating gets the old translation (the tests check this both ways).
// Both are bounded; when full, an arbitrary entry is evicted, which the
// specification allows at any time. Callers hold Unit.mu.

// contextEntry is a decoded, valid context entry.
type contextEntry struct {
	did         uint16
	passthrough bool
	fpd         bool   // fault processing disabled
	root        uint64 // second-level page table (not pass-through)
	levels      int    // 3 or 4 (not pass-through)
}

type contextCache struct {
	max int
	m   map[uint16]contextEntry // by source id
}

func newContextCache(max int) *contextCache {
	return &contextCache{max: max, m: make(map[uint16]contextEntry)}
}

func (c *contextCache) get(sid uint16) (contextEntry, bool) {
	e, ok := c.m[sid]
	return e, ok
}

func (c *contextCache) put(sid uint16, e contextEntry) {
	if _, ok := c.m[sid]; !ok && len(c.m) >= c.max {
		for k := range c.m {
			delete(c.m, k)
			break
		}
	}
	c.m[sid] = e
}

func (c *contextCache) clear() { clear(c.m) }

func (c *contextCache) dropDomain(did uint16) {
	for k, e := range c.m {
		if e.did == did {
			delete(c.m, k)
		}
	}
}

// dropDevice drops the entries of the source ids that match sid, ignoring
// the low function bits that fm (the function mask, 0-3) masks.
func (c *contextCache) dropDevice(sid uint16, fm uint8) {
	mask := functionMask(fm)
	for k := range c.m {
		if k&mask == sid&mask {
			delete(c.m, k)
		}
	}
}

// functionMask is the mask of the source id bits a function mask fm
// (0-3) keeps: 1 ignores function bit 2, 2 bits 2:1, 3 all three.
func functionMask(fm uint8) uint16 {
	switch fm {
	case 1:
		return ^uint16(4)
	case 2:
		return ^uint16(6)
	case 3:
		return ^uint16(7)
	}
	return ^uint16(0)
}

// rootOf returns the page table of a domain, from any cached context of
// it, for the Notifier's lookups.
func (c *contextCache) rootOf(did uint16) (contextEntry, bool) {
	for _, e := range c.m {
		if e.did == did && !e.passthrough {
			return e, true
		}
	}
	return contextEntry{}, false
}

// iotlbKey names one cached translation: a page of size pageSize(level)
// at the aligned device address page, in domain did.
type iotlbKey struct {
	did   uint16
	level uint8 // 1: 4 KiB, 2: 2 MiB, 3: 1 GiB
	page  uint64
}

type iotlbEntry struct {
	gpa         uint64 // of the page's first byte
	read, write bool
}

type iotlb struct {
	max int
	m   map[iotlbKey]iotlbEntry
	// levels counts the entries per level, so that a lookup only probes
	// the superpage sizes that are cached.
	levels [4]int
}

func newIOTLB(max int) *iotlb { return &iotlb{max: max, m: make(map[iotlbKey]iotlbEntry)} }

func pageShift(level int) uint { return 12 + 9*uint(level-1) }

func (t *iotlb) get(did uint16, iova uint64) (iotlbKey, iotlbEntry, bool) {
	for level := 1; level <= 3; level++ {
		if t.levels[level] == 0 {
			continue
		}
		k := iotlbKey{did, uint8(level), iova >> pageShift(level) << pageShift(level)}
		if e, ok := t.m[k]; ok {
			return k, e, true
		}
	}
	return iotlbKey{}, iotlbEntry{}, false
}

func (t *iotlb) put(k iotlbKey, e iotlbEntry) {
	if _, ok := t.m[k]; !ok {
		if len(t.m) >= t.max {
			for old := range t.m {
				t.del(old)
				break
			}
		}
		t.levels[k.level]++
	}
	t.m[k] = e
}

func (t *iotlb) del(k iotlbKey) {
	if _, ok := t.m[k]; ok {
		delete(t.m, k)
		t.levels[k.level]--
	}
}

func (t *iotlb) clear() {
	clear(t.m)
	t.levels = [4]int{}
}

func (t *iotlb) dropDomain(did uint16) {
	for k := range t.m {
		if k.did == did {
			t.del(k)
		}
	}
}

// probePages bounds the page-selective invalidations that dropRange does
// by looking up the range's own keys rather than visiting the whole cache.
const probePages = 64

// dropRange drops the domain's translations that overlap [start, last].
// A guest driver in strict mode invalidates a page or a few for every
// unmap, with a vCPU waiting on it: such a range is looked up key by key
// at each cached page size, not found by visiting every cached entry
// (thousands, under the unit's lock, per I/O).
func (t *iotlb) dropRange(did uint16, start, last uint64) {
	if last-start < probePages<<12 {
		for level := 1; level <= 3; level++ {
			if t.levels[level] == 0 {
				continue
			}
			step := uint64(1) << pageShift(level)
			// p stays at most last, so adding step cannot wrap.
			for p := start &^ (step - 1); ; p += step {
				t.del(iotlbKey{did, uint8(level), p})
				if last-p < step {
					break
				}
			}
		}
		return
	}
	for k := range t.m {
		if k.did == did && k.page <= last && start <= k.page+(1<<pageShift(int(k.level))-1) {
			t.del(k)
		}
	}
}

func (t *iotlb) len() int { return len(t.m) }
