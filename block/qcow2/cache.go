package qcow2

// tableCache keeps L2 tables or refcount blocks, keyed by their host
// offset, so that random I/O does not re-read metadata. Entries are
// written back by the Image (which knows the order writes must take), so
// the cache only evicts clean entries; when everything is dirty the Image
// writes back first. Guarded by Image.mu.
type tableCache struct {
	m     map[uint64]*cached
	limit int
	clock uint64
}

type cached struct {
	off   uint64
	data  []byte
	dirty bool
	used  uint64
}

func newTableCache(limit int) *tableCache {
	return &tableCache{m: make(map[uint64]*cached), limit: max(limit, 4)}
}

func (c *tableCache) get(off uint64) *cached {
	t := c.m[off]
	if t != nil {
		c.clock++
		t.used = c.clock
	}
	return t
}

func (c *tableCache) put(t *cached) {
	c.clock++
	t.used = c.clock
	c.m[t.off] = t
}

// full reports whether adding an entry needs an eviction first.
func (c *tableCache) full() bool { return len(c.m) >= c.limit }

// evictClean drops the least recently used clean entry; false if none.
func (c *tableCache) evictClean() bool {
	var victim *cached
	for _, t := range c.m {
		if !t.dirty && (victim == nil || t.used < victim.used) {
			victim = t
		}
	}
	if victim == nil {
		return false
	}
	delete(c.m, victim.off)
	return true
}

func (c *tableCache) dirty() []*cached {
	var out []*cached
	for _, t := range c.m {
		if t.dirty {
			out = append(out, t)
		}
	}
	return out
}

func (c *tableCache) drop(off uint64) { delete(c.m, off) }
