package virtio

import (
	"errors"
	"io"
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

	// Inline backing for short chains (most requests: a header, a data
	// buffer or two, a status byte), saving two allocations per request.
	inline [4][]byte
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
