package mclock

// tagHeap is a binary min-heap of clients on one of their tags, with each
// client's position kept in the client (so a client can be removed or
// re-keyed in O(log n)). The scheduler keeps three: clients owed their
// reservation (by reservation tag), clients under their limit (by
// proportional tag) and clients held back by their limit (by the time
// their limit lets them go).
type tagHeap[C comparable, T any] struct {
	items []*client[C, T]
	key   func(*client[C, T]) float64
	pos   func(*client[C, T]) *int // -1 when not in the heap
}

func (h *tagHeap[C, T]) less(i, j int) bool {
	a, b := h.items[i], h.items[j]
	ka, kb := h.key(a), h.key(b)
	if ka != kb {
		return ka < kb
	}
	// Equal tags go in the order the clients were added, so a run is
	// deterministic (map order never decides).
	return a.seq < b.seq
}

func (h *tagHeap[C, T]) swap(i, j int) {
	h.items[i], h.items[j] = h.items[j], h.items[i]
	*h.pos(h.items[i]) = i
	*h.pos(h.items[j]) = j
}

func (h *tagHeap[C, T]) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !h.less(i, p) {
			return
		}
		h.swap(i, p)
		i = p
	}
}

func (h *tagHeap[C, T]) down(i int) {
	n := len(h.items)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		m := l
		if r := l + 1; r < n && h.less(r, l) {
			m = r
		}
		if !h.less(m, i) {
			return
		}
		h.swap(i, m)
		i = m
	}
}

func (h *tagHeap[C, T]) push(c *client[C, T]) {
	h.items = append(h.items, c)
	i := len(h.items) - 1
	*h.pos(c) = i
	h.up(i)
}

func (h *tagHeap[C, T]) min() *client[C, T] {
	if len(h.items) == 0 {
		return nil
	}
	return h.items[0]
}

// remove takes c out of the heap if it is in it.
func (h *tagHeap[C, T]) remove(c *client[C, T]) {
	i := *h.pos(c)
	if i < 0 {
		return
	}
	last := len(h.items) - 1
	if i != last {
		h.swap(i, last)
	}
	h.items[last] = nil
	h.items = h.items[:last]
	*h.pos(c) = -1
	if i != last {
		h.down(i)
		h.up(i)
	}
}

func (h *tagHeap[C, T]) len() int { return len(h.items) }
