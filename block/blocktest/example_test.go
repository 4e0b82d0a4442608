package blocktest_test

import (
	"testing"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
)

// A back-end's own test runs the suite with a factory that makes a fresh,
// zero-filled instance of the requested size. Here the in-memory model is
// the back-end under test; an interposer would wrap one (a Mem, say).
func Example() {
	var t *testing.T // the test's *testing.T
	if t == nil {
		return
	}
	blocktest.Run(t, func(t *testing.T, size int64) block.Backend {
		return blocktest.NewMem(size)
	})
}
