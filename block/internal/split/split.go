// Package split is the engine behind interposers that lay one disk out
// over several children, each byte of the disk living on exactly one child
// (concat, stripe): a Layout says where a byte lives, and Node cuts every
// request into pieces, one per contiguous run on one child, issuing the
// pieces of different children concurrently.
package split

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/filter"
)

// Layout maps the disk's bytes onto children. Map is called only with
// 0 <= off < Size(); it returns the child holding byte off, the byte's
// offset in that child and how many bytes from off on stay contiguous in
// that child (at least 1, at most Size()-off).
type Layout interface {
	Size() int64
	Map(off int64) (child int, childOff, run int64)
}

// Node is a disk laid out over children.
type Node struct {
	children []block.Backend
	layout   Layout
	closed   atomic.Bool
}

var _ filter.Interposer = (*Node)(nil)

// New returns the node; it owns the children.
func New(children []block.Backend, l Layout) *Node {
	return &Node{children: children, layout: l}
}

// Caps returns the capabilities every child has, without Resize: a layout
// over several children cannot grow one of them meaningfully.
func Caps(children []block.Backend) filter.Caps {
	c := filter.CapsOf(children[0])
	for _, ch := range children[1:] {
		c = c.And(filter.CapsOf(ch))
	}
	c.Resize = false
	return c
}

// piece is one contiguous run of a request on one child.
type piece struct {
	child    int
	childOff int64
	skip, n  int64 // bytes of the request
}

func (s *Node) pieces(off, n int64) []piece {
	var ps []piece
	for done := int64(0); done < n; {
		c, co, run := s.layout.Map(off + done)
		run = min(run, n-done)
		ps = append(ps, piece{child: c, childOff: co, skip: done, n: run})
		done += run
	}
	return ps
}

// run calls f for every piece, the pieces of one child in order in one
// goroutine, different children concurrently, and returns the first error
// (in request order).
func (s *Node) run(ps []piece, f func(p piece) error) error {
	one := true
	for _, p := range ps[1:] {
		if p.child != ps[0].child {
			one = false
			break
		}
	}
	if one {
		for _, p := range ps {
			if err := f(p); err != nil {
				return err
			}
		}
		return nil
	}
	errs := make([]error, len(ps))
	byChild := map[int][]int{}
	var order []int
	for i, p := range ps {
		if _, ok := byChild[p.child]; !ok {
			order = append(order, p.child)
		}
		byChild[p.child] = append(byChild[p.child], i)
	}
	var wg sync.WaitGroup
	for _, c := range order {
		wg.Add(1)
		go func(idx []int) {
			defer wg.Done()
			for _, i := range idx {
				if errs[i] = f(ps[i]); errs[i] != nil {
					return
				}
			}
		}(byChild[c])
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func (s *Node) ReadAt(p []byte, off int64) (int, error) {
	return s.ReadvAt([][]byte{p}, off)
}

func (s *Node) ReadvAt(bufs [][]byte, off int64) (int, error) {
	if s.closed.Load() {
		return 0, block.ErrClosed
	}
	if off < 0 {
		return 0, fmt.Errorf("split: negative offset %d", off)
	}
	size := s.layout.Size()
	want := filter.Len(bufs)
	if off >= size {
		if want == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	n := min(want, size-off)
	if n > 0 {
		err := s.run(s.pieces(off, n), func(p piece) error {
			_, err := block.ReadvAt(s.children[p.child], filter.Sub(bufs, p.skip, p.n), p.childOff)
			if errors.Is(err, io.EOF) {
				// A child shorter than the layout thinks: a bug or a
				// file truncated under us; never return stale bytes.
				return fmt.Errorf("split: child %d ended early at %d: %w", p.child, p.childOff, io.ErrUnexpectedEOF)
			}
			return err
		})
		if err != nil {
			return 0, err
		}
	}
	if n < want {
		return int(n), io.EOF
	}
	return int(n), nil
}

func (s *Node) WriteAt(p []byte, off int64) (int, error) {
	return s.WritevAt([][]byte{p}, off)
}

func (s *Node) WritevAt(bufs [][]byte, off int64) (int, error) {
	if s.closed.Load() {
		return 0, block.ErrClosed
	}
	n := filter.Len(bufs)
	if err := block.CheckRange(off, n, s.layout.Size()); err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, nil
	}
	err := s.run(s.pieces(off, n), func(p piece) error {
		_, err := block.WritevAt(s.children[p.child], filter.Sub(bufs, p.skip, p.n), p.childOff)
		return err
	})
	if err != nil {
		return 0, err
	}
	return int(n), nil
}

// all runs f on every child concurrently and joins the errors.
func (s *Node) all(f func(i int, c block.Backend) error) error {
	errs := make([]error, len(s.children))
	var wg sync.WaitGroup
	for i, c := range s.children {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(i, c); err != nil {
				errs[i] = fmt.Errorf("child %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Flush flushes every child; it fails if any child's flush failed.
func (s *Node) Flush() error {
	if s.closed.Load() {
		return block.ErrClosed
	}
	return s.all(func(_ int, c block.Backend) error { return c.Flush() })
}

func (s *Node) Size() int64 { return s.layout.Size() }

// Close closes every child and returns their errors joined.
func (s *Node) Close() error {
	if s.closed.Swap(true) {
		return block.ErrClosed
	}
	var errs []error
	for i, c := range s.children {
		if err := c.Close(); err != nil {
			errs = append(errs, fmt.Errorf("child %d: %w", i, err))
		}
	}
	return errors.Join(errs...)
}

// ReadOnly reports whether any child is read-only (a write could reach it).
func (s *Node) ReadOnly() bool {
	for _, c := range s.children {
		if r, ok := c.(block.ReadOnlyReporter); ok && r.ReadOnly() {
			return true
		}
	}
	return false
}

func (s *Node) Drain(on bool) {
	for _, c := range s.children {
		if d, ok := c.(block.Drainer); ok {
			d.Drain(on)
		}
	}
}

func (s *Node) ranged(off, n int64, f func(c block.Backend, off, n int64) error) error {
	if s.closed.Load() {
		return block.ErrClosed
	}
	if err := block.CheckRange(off, n, s.layout.Size()); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	return s.run(s.pieces(off, n), func(p piece) error { return f(s.children[p.child], p.childOff, p.n) })
}

func (s *Node) Discard(off, n int64) error {
	return s.ranged(off, n, func(c block.Backend, off, n int64) error {
		d, ok := c.(block.Discarder)
		if !ok {
			return errors.ErrUnsupported
		}
		return d.Discard(off, n)
	})
}

func (s *Node) WriteZeroes(off, n int64, unmap bool) error {
	return s.ranged(off, n, func(c block.Backend, off, n int64) error {
		z, ok := c.(block.ZeroWriter)
		if !ok {
			return errors.ErrUnsupported
		}
		return z.WriteZeroes(off, n, unmap)
	})
}

// Resize is not supported: which child would grow?
func (s *Node) Resize(int64) error {
	if s.closed.Load() {
		return block.ErrClosed
	}
	return errors.ErrUnsupported
}
