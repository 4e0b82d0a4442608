// Package filter is the base of block interposers: back-ends that wrap
// other back-ends (throttle, faults, and later crypt, mirror, journal).
//
// The problem it solves: optional capabilities (block.Discarder,
// block.ZeroWriter, block.Resizer) are discovered by type assertion, so a
// wrapper type either has a method or does not, whatever it wraps. A
// wrapper that always has Discard would make a front-end offer discard over
// a child that cannot do it; one that never has it would hide the child's.
// So an interposer implements every method (Interposer), each free to
// assume the child has the capability, and View hands out a value whose
// method set has exactly the capabilities the interposer can honour.
//
// Base forwards everything to one child, so an interposer embeds it and
// overrides only what it changes.
package filter

import (
	"errors"
	"fmt"

	"github.com/viovmm/vio/block"
)

// Interposer is the full method set an interposer implements. Discard,
// WriteZeroes and Resize are called through a View only when the Caps
// given to View say so. ReadOnly, the vectored calls and Drain are always
// exposed: each has a meaning for any child (false, a loop of single
// calls, nothing to drain). So is block.TryReader, which a View answers
// with ErrUnsupported unless the interposer implements it too.
type Interposer interface {
	block.Backend
	block.VectorReaderAt
	block.VectorWriterAt
	block.ReadOnlyReporter
	block.Discarder
	block.ZeroWriter
	block.Resizer
	block.Drainer
}

// Caps says which optional capabilities a View exposes.
type Caps struct {
	Discard, WriteZeroes, Resize bool
}

// CapsOf returns the optional capabilities b has.
func CapsOf(b block.Backend) Caps {
	_, d := b.(block.Discarder)
	_, z := b.(block.ZeroWriter)
	_, r := b.(block.Resizer)
	return Caps{Discard: d, WriteZeroes: z, Resize: r}
}

// And returns the capabilities both c and o have (for an interposer over
// several children).
func (c Caps) And(o Caps) Caps {
	return Caps{Discard: c.Discard && o.Discard, WriteZeroes: c.WriteZeroes && o.WriteZeroes, Resize: c.Resize && o.Resize}
}

// View returns a block.Backend whose methods are i's, with Discard,
// WriteZeroes and Resize present exactly as caps says.
func View(i Interposer, caps Caps) block.Backend {
	b := base{i}
	d, z, r := discarder{i}, zeroer{i}, resizer{i}
	switch caps {
	case Caps{}:
		return &v0{b}
	case Caps{Discard: true}:
		return &vD{b, d}
	case Caps{WriteZeroes: true}:
		return &vZ{b, z}
	case Caps{Resize: true}:
		return &vR{b, r}
	case Caps{Discard: true, WriteZeroes: true}:
		return &vDZ{b, d, z}
	case Caps{Discard: true, Resize: true}:
		return &vDR{b, d, r}
	case Caps{WriteZeroes: true, Resize: true}:
		return &vZR{b, z, r}
	default:
		return &vDZR{b, d, z, r}
	}
}

// Unwrap returns the Interposer behind a View, or nil when b is not a View.
// The graph uses it to reach a node's run-time controls.
func Unwrap(b block.Backend) Interposer {
	if u, ok := b.(interface{ interposer() Interposer }); ok {
		return u.interposer()
	}
	return nil
}

// base exposes the methods every View has.
type base struct{ i Interposer }

func (b base) interposer() Interposer                      { return b.i }
func (b base) ReadAt(p []byte, off int64) (int, error)     { return b.i.ReadAt(p, off) }
func (b base) WriteAt(p []byte, off int64) (int, error)    { return b.i.WriteAt(p, off) }
func (b base) ReadvAt(p [][]byte, off int64) (int, error)  { return b.i.ReadvAt(p, off) }
func (b base) WritevAt(p [][]byte, off int64) (int, error) { return b.i.WritevAt(p, off) }
func (b base) Flush() error                                { return b.i.Flush() }
func (b base) Size() int64                                 { return b.i.Size() }
func (b base) Close() error                                { return b.i.Close() }
func (b base) ReadOnly() bool                              { return b.i.ReadOnly() }
func (b base) Drain(on bool)                               { b.i.Drain(on) }

// errNoTry answers a try through an interposer that cannot pass it on.
var errNoTry = fmt.Errorf("block: the interposer cannot serve reads without waiting: %w", errors.ErrUnsupported)

// TryReadvAt passes a non-blocking read on only to an interposer that
// implements block.TryReader itself. Base does not, on purpose: an
// interposer that embeds it and changes ReadvAt (a throttle, a cipher)
// would otherwise have its tries go straight to the child, around it.
func (b base) TryReadvAt(p [][]byte, off int64) (int, error) {
	if t, ok := b.i.(block.TryReader); ok {
		return t.TryReadvAt(p, off)
	}
	return 0, errNoTry
}

type discarder struct{ i Interposer }

func (d discarder) Discard(off, n int64) error { return d.i.Discard(off, n) }

type zeroer struct{ i Interposer }

func (z zeroer) WriteZeroes(off, n int64, unmap bool) error { return z.i.WriteZeroes(off, n, unmap) }

type resizer struct{ i Interposer }

func (r resizer) Resize(size int64) error { return r.i.Resize(size) }

// The eight views: every combination of the three capabilities.
type (
	v0 struct{ base }
	vD struct {
		base
		discarder
	}
	vZ struct {
		base
		zeroer
	}
	vR struct {
		base
		resizer
	}
	vDZ struct {
		base
		discarder
		zeroer
	}
	vDR struct {
		base
		discarder
		resizer
	}
	vZR struct {
		base
		zeroer
		resizer
	}
	vDZR struct {
		base
		discarder
		zeroer
		resizer
	}
)

var (
	_ block.Backend    = (*v0)(nil)
	_ block.Drainer    = (*v0)(nil)
	_ block.TryReader  = (*v0)(nil)
	_ block.Discarder  = (*vDZR)(nil)
	_ block.ZeroWriter = (*vDZR)(nil)
	_ block.Resizer    = (*vDZR)(nil)
)

// Base forwards every call to Child. An interposer embeds it and overrides
// what it changes; the capability methods assume Child has the capability
// (View guarantees they are only called then) and report
// errors.ErrUnsupported otherwise.
type Base struct {
	Child block.Backend
}

func (b *Base) ReadAt(p []byte, off int64) (int, error)  { return b.Child.ReadAt(p, off) }
func (b *Base) WriteAt(p []byte, off int64) (int, error) { return b.Child.WriteAt(p, off) }
func (b *Base) ReadvAt(bufs [][]byte, off int64) (int, error) {
	return block.ReadvAt(b.Child, bufs, off)
}
func (b *Base) WritevAt(bufs [][]byte, off int64) (int, error) {
	return block.WritevAt(b.Child, bufs, off)
}
func (b *Base) Flush() error { return b.Child.Flush() }
func (b *Base) Size() int64  { return b.Child.Size() }
func (b *Base) Close() error { return b.Child.Close() }

// ReadOnly reports the child's read-only state (false when it cannot say).
func (b *Base) ReadOnly() bool {
	r, ok := b.Child.(block.ReadOnlyReporter)
	return ok && r.ReadOnly()
}

// Drain forwards to the child when it can hold requests back.
func (b *Base) Drain(on bool) {
	if d, ok := b.Child.(block.Drainer); ok {
		d.Drain(on)
	}
}

func (b *Base) Discard(off, n int64) error {
	if d, ok := b.Child.(block.Discarder); ok {
		return d.Discard(off, n)
	}
	return errors.ErrUnsupported
}

func (b *Base) WriteZeroes(off, n int64, unmap bool) error {
	if z, ok := b.Child.(block.ZeroWriter); ok {
		return z.WriteZeroes(off, n, unmap)
	}
	return errors.ErrUnsupported
}

func (b *Base) Resize(size int64) error {
	if r, ok := b.Child.(block.Resizer); ok {
		return r.Resize(size)
	}
	return errors.ErrUnsupported
}

var _ Interposer = (*Base)(nil)
