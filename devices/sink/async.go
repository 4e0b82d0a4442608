// Package sink keeps a device's host-side output from stalling the guest:
// the serial port and the virtio console write their output through an
// AsyncWriter, so a terminal paused with ^S or a socket client that stops
// reading costs console bytes, never a vCPU.
package sink

import (
	"errors"
	"io"
	"sync"
)

// ErrClosed reports a Write to a closed AsyncWriter.
var ErrClosed = errors.New("sink: output closed")

// AsyncWriter keeps a slow output from stalling the guest: Write copies
// into a bounded buffer and returns at once, and a goroutine of its own
// writes the buffer to the underlying writer. When the buffer is full the
// excess is dropped and counted, so a terminal paused with ^S or a pipe
// nobody reads costs console output, never guest progress. Wrap a device's
// output in one when it may block.
type AsyncWriter struct {
	w    io.Writer
	max  int
	wake chan struct{} // capacity 1: "there is data or we are closing"
	done chan struct{} // closed when the goroutine has finished

	mu      sync.Mutex
	buf     []byte
	dropped uint64
	closed  bool
	err     error // first error from w; later output is discarded
}

// NewAsyncWriter starts a writer with room for size bytes in flight.
func NewAsyncWriter(w io.Writer, size int) *AsyncWriter {
	a := &AsyncWriter{w: w, max: max(size, 1), wake: make(chan struct{}, 1), done: make(chan struct{})}
	go a.run()
	return a
}

// Write buffers what fits and drops the rest; it reports len(p) so the
// caller never retries, and fails only after Close.
func (a *AsyncWriter) Write(p []byte) (int, error) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return 0, ErrClosed
	}
	n := min(len(p), a.max-len(a.buf))
	a.buf = append(a.buf, p[:n]...)
	a.dropped += uint64(len(p) - n)
	a.mu.Unlock()
	if n > 0 {
		select {
		case a.wake <- struct{}{}:
		default:
		}
	}
	return len(p), nil
}

func (a *AsyncWriter) run() {
	defer close(a.done)
	var out []byte
	for range a.wake {
		for {
			a.mu.Lock()
			out, a.buf = a.buf, out[:0] // swap: Write fills the other buffer meanwhile
			closed := a.closed
			failed := a.err != nil
			a.mu.Unlock()
			if len(out) == 0 {
				if closed {
					return
				}
				break
			}
			if failed {
				continue
			}
			if _, err := a.w.Write(out); err != nil {
				a.mu.Lock()
				a.err = err
				a.mu.Unlock()
			}
		}
	}
}

// Dropped returns how many bytes were discarded because the buffer was full.
func (a *AsyncWriter) Dropped() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.dropped
}

// Close writes out what is buffered, stops the goroutine, and returns the
// first error the underlying writer reported, if any. It blocks as long
// as the underlying writer does.
func (a *AsyncWriter) Close() error {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	// A pending token does as well: run drains, sees closed and ends.
	select {
	case a.wake <- struct{}{}:
	default:
	}
	<-a.done
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err
}
