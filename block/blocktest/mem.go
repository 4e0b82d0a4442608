// Package blocktest checks block.Backend implementations against the
// contract written in package block, and provides Mem, an in-memory
// back-end that serves as reference model and as test double.
package blocktest

import (
	"io"
	"sync"

	"github.com/viovmm/vio/block"
)

// Mem is an in-memory block.Backend with every optional capability. Its zero
// value is not usable; call NewMem.
type Mem struct {
	mu     sync.RWMutex
	data   []byte
	closed bool
	// Flushes counts successful Flush calls (tests of interposers use it to
	// see that a barrier reached the bottom of the stack).
	Flushes int
}

var (
	_ block.Backend        = (*Mem)(nil)
	_ block.Discarder      = (*Mem)(nil)
	_ block.ZeroWriter     = (*Mem)(nil)
	_ block.Resizer        = (*Mem)(nil)
	_ block.VectorReaderAt = (*Mem)(nil)
	_ block.VectorWriterAt = (*Mem)(nil)
)

// NewMem returns a zero-filled in-memory back-end of size bytes.
func NewMem(size int64) *Mem { return &Mem{data: make([]byte, size)} }

// Bytes returns a copy of the contents.
func (m *Mem) Bytes() []byte {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return append([]byte(nil), m.data...)
}

func (m *Mem) ReadAt(p []byte, off int64) (int, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return 0, block.ErrClosed
	}
	return readAt(m.data, p, off)
}

func readAt(data, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, block.ErrOutOfRange
	}
	if off >= int64(len(data)) {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	n := copy(p, data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *Mem) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0, block.ErrClosed
	}
	if err := block.CheckRange(off, int64(len(p)), int64(len(m.data))); err != nil {
		return 0, err
	}
	return copy(m.data[off:], p), nil
}

func (m *Mem) ReadvAt(bufs [][]byte, off int64) (int, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return 0, block.ErrClosed
	}
	total := 0
	for _, p := range bufs {
		n, err := readAt(m.data, p, off)
		total += n
		off += int64(n)
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

func (m *Mem) WritevAt(bufs [][]byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0, block.ErrClosed
	}
	var n int64
	for _, p := range bufs {
		n += int64(len(p))
	}
	if err := block.CheckRange(off, n, int64(len(m.data))); err != nil {
		return 0, err
	}
	total := 0
	for _, p := range bufs {
		total += copy(m.data[off+int64(total):], p)
	}
	return total, nil
}

func (m *Mem) Flush() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return block.ErrClosed
	}
	m.Flushes++
	return nil
}

func (m *Mem) Size() int64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return int64(len(m.data))
}

func (m *Mem) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return block.ErrClosed
	}
	m.closed = true
	return nil
}

// Discard zeroes the range: the model is the strictest reading of the
// contract that still lets tests compare contents exactly.
func (m *Mem) Discard(off, n int64) error { return m.WriteZeroes(off, n, true) }

func (m *Mem) WriteZeroes(off, n int64, unmap bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return block.ErrClosed
	}
	if err := block.CheckRange(off, n, int64(len(m.data))); err != nil {
		return err
	}
	clear(m.data[off : off+n])
	return nil
}

func (m *Mem) Resize(size int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return block.ErrClosed
	}
	if size < 0 {
		return block.ErrOutOfRange
	}
	if size <= int64(len(m.data)) {
		m.data = m.data[:size:size]
		return nil
	}
	m.data = append(m.data, make([]byte, size-int64(len(m.data)))...)
	return nil
}
