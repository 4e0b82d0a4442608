package filter_test

import (
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
