package filter_test

import (
	"errors"
	"testing"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/block/filter"
)

// The pass-through Base, seen through a View, is a conforming back-end.
func TestBaseConformance(t *testing.T) {
	blocktest.Run(t, func(t *testing.T, size int64) block.Backend {
		m := blocktest.NewMem(size)
		return filter.View(&filter.Base{Child: m}, filter.CapsOf(m))
	})
}

// Every combination of capabilities gives a view with exactly those.
func TestViewCapabilities(t *testing.T) {
	i := &filter.Base{Child: blocktest.NewMem(512)}
	for mask := 0; mask < 8; mask++ {
		caps := filter.Caps{Discard: mask&1 != 0, WriteZeroes: mask&2 != 0, Resize: mask&4 != 0}
		v := filter.View(i, caps)
		if got := filter.CapsOf(v); got != caps {
			t.Errorf("View(%+v) has %+v", caps, got)
		}
		if _, ok := v.(block.Drainer); !ok {
			t.Errorf("View(%+v) is not a Drainer", caps)
		}
		if filter.Unwrap(v) != filter.Interposer(i) {
			t.Errorf("Unwrap(View(%+v)) is not the interposer", caps)
		}
	}
	if filter.Unwrap(blocktest.NewMem(1)) != nil {
		t.Error("Unwrap of a plain back-end is not nil")
	}
}

// tryMem serves every non-blocking read.
type tryMem struct{ *blocktest.Mem }

func (m tryMem) TryReadvAt(bufs [][]byte, off int64) (int, error) { return m.ReadvAt(bufs, off) }

// passTry is an interposer that can pass tries on.
type passTry struct{ filter.Base }

func (p *passTry) TryReadvAt(bufs [][]byte, off int64) (int, error) {
	return p.Child.(block.TryReader).TryReadvAt(bufs, off)
}

// A view never lets a try past an interposer that does not implement
// TryReader itself (Base included), and passes it to one that does.
func TestViewTryRead(t *testing.T) {
	child := tryMem{blocktest.NewMem(4096)}
	child.WriteAt([]byte{7}, 100)
	p := make([]byte, 512)
	v := filter.View(&filter.Base{Child: child}, filter.Caps{})
	if _, err := v.(block.TryReader).TryReadvAt([][]byte{p}, 0); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("try through Base: %v, want ErrUnsupported", err)
	}
	v = filter.View(&passTry{filter.Base{Child: child}}, filter.Caps{})
	if n, err := v.(block.TryReader).TryReadvAt([][]byte{p}, 0); err != nil || n != 512 || p[100] != 7 {
		t.Fatalf("try through an interposer that passes it on = %d, %v", n, err)
	}
}
