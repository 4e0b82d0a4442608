package mclock

// entry is one queued request.
type entry[T any] struct {
	payload T
	size    int64
	cost    float64
	dist    Distributed
	at      float64 // enqueue time, ns since the scheduler's epoch
}

// ring is a FIFO of entries that grows by doubling up to the client's
// bound and gives its memory back when it empties, so an idle client
// costs nothing however deep its last burst was.
type ring[T any] struct {
	buf        []entry[T]
	head, size int
}

func (r *ring[T]) len() int { return r.size }

func (r *ring[T]) push(e entry[T]) {
	if r.size == len(r.buf) {
		n := max(2*len(r.buf), 4)
		buf := make([]entry[T], n)
		for i := range r.size {
			buf[i] = r.buf[(r.head+i)%len(r.buf)]
		}
		r.buf, r.head = buf, 0
	}
	r.buf[(r.head+r.size)%len(r.buf)] = e
	r.size++
}

func (r *ring[T]) front() *entry[T] { return &r.buf[r.head] }

func (r *ring[T]) pop() entry[T] {
	e := r.buf[r.head]
	r.buf[r.head] = entry[T]{} // drop the payload reference
	r.head = (r.head + 1) % len(r.buf)
	r.size--
	if r.size == 0 {
		r.head = 0
		if len(r.buf) > 64 {
			r.buf = nil
		}
	}
	return e
}
