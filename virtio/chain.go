package virtio

import (
	"errors"
	"io"
	"math"

	"github.com/viovmm/vio/memory"
)

// Chain is one request: a descriptor chain the driver made available.
// Readable buffers carry data from driver to device, Writable ones from
// device to driver; within a chain every readable buffer comes first. Both
// alias guest memory (no copy was made), and the driver may change them at
// any time, so a device copies what it validates before relying on it.
//
// Complete a chain with Queue.Push(c.Head, bytesWritten).
type Chain struct {
	Head     uint16
	Readable Buffers
	Writable Buffers

	// Where the chain came from, for Queue.Unget: the queue, the avail
	// ring position it was taken from and used.idx at that moment.
	from        *Queue
	availPos    uint16
	usedAtTaken uint16

	// writes[i] is where Writable[i] lives in the device's address space,
	// for marking what the device wrote dirty at Push.
	writes []span
	// sameHead links chains taken under the same head (see takenHead).
	sameHead *Chain

	// Inline backing for short chains (most requests: a header, a data
	// buffer or two, a status byte), saving allocations per request.
	inline  [4][]byte
	inlineW [2]span
}

// WritableAddr returns the device address the driver gave for
// Writable[i] (for a device without VIRTIO_F_ACCESS_PLATFORM, its guest
// physical address), and false if there is no such buffer. Most devices
// need only the bytes; one whose buffers are themselves the message, like
// virtio-balloon's free page reporting, which hands pages over as
// buffers, needs where they are.
func (c *Chain) WritableAddr(i int) (uint64, bool) {
	if i < 0 || i >= len(c.writes) {
		return 0, false
	}
	return c.writes[i].addr, true
}

// span is one buffer in the device's address space.
type span struct {
	addr uint64
	len  uint32
}

// markWritten marks the first written bytes of the chain's writable
// buffers dirty.
func (c *Chain) markWritten(mem memory.DMA, written uint32) {
	left := written
	for _, s := range c.writes {
		if left == 0 {
			return
		}
		n := min(left, s.len)
		// The range resolved when the chain was taken. It can fail now only
		// if the device's address space was remapped since, and then the
		// device wrote to the old mapping, which the translator keeps (and
		// tracks) until devices move on: there is nothing to mark here.
		_ = mem.MarkDirty(s.addr, uint64(n))
		left -= n
	}
}

// takenHead is the chains taken under one head and not yet pushed. A
// driver may not make a head available again before the device returned
// it, so there is normally one; Push then marks what its length covers.
// A driver that breaks the rule cannot tell which of its chains a push of
// that head completes, and neither can the queue, so while a head is taken
// more than once every push marks all of its chains' writable bytes, and
// the record is dropped only at the last push: that push follows every
// write the device made into any of them, so no written byte goes
// unmarked, whatever order the device completes them in.
type takenHead struct {
	c *Chain // newest first, linked through Chain.sameHead
	n int    // pushes still expected under this head
}

func (t *takenHead) add(c *Chain) {
	c.sameHead = t.c
	t.c = c
	t.n++
}

// complete records a push of the head with written bytes and marks them.
func (t *takenHead) complete(mem memory.DMA, written uint32) {
	switch {
	case t.n == 0:
		// A push of a head the device did not take (a device bug): there
		// are no buffers to mark.
	case t.n == 1 && t.c.sameHead == nil:
		t.c.markWritten(mem, written)
		t.c, t.n = nil, 0
	default:
		for c := t.c; c != nil; c = c.sameHead {
			c.markWritten(mem, math.MaxUint32)
		}
		if t.n--; t.n == 0 {
			t.c = nil
		}
	}
}

// remove drops c, the newest chain taken under the head, for Queue.Unget.
func (t *takenHead) remove(c *Chain) {
	if t.c == c {
		t.c, c.sameHead = c.sameHead, nil
		t.n--
	}
}

// Buffers is a scatter/gather list.
type Buffers [][]byte

// Len returns the total length.
func (b Buffers) Len() int64 {
	var n int64
	for _, s := range b {
		n += int64(len(s))
	}
	return n
}

// ErrShort is returned by Buffers.ReadAt/WriteAt when the buffers end
// before p does.
var ErrShort = errors.New("virtio: buffers too short")

// ReadAt copies from the buffers, starting at byte off of their
// concatenation, into p. It follows io.ReaderAt: n < len(p) only with an
// error (io.EOF at the end of the buffers).
func (b Buffers) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("virtio: negative offset")
	}
	n := 0
	for _, s := range b {
		if len(p) == n {
			break
		}
		if off >= int64(len(s)) {
			off -= int64(len(s))
			continue
		}
		n += copy(p[n:], s[off:])
		off = 0
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt copies p into the buffers at byte off of their concatenation.
// It writes as much as fits and returns ErrShort if that is not all of p.
func (b Buffers) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("virtio: negative offset")
	}
	n := 0
	for _, s := range b {
		if len(p) == n {
			break
		}
		if off >= int64(len(s)) {
			off -= int64(len(s))
			continue
		}
		n += copy(s[off:], p[n:])
		off = 0
	}
	if n < len(p) {
		return n, ErrShort
	}
	return n, nil
}

var (
	_ io.ReaderAt = Buffers(nil)
	_ io.WriterAt = Buffers(nil)
)
