package migration_test

import (
	"testing"
)

// FuzzReceive feeds arbitrary streams to the receiver: it must end in a
// VM restored or an error with the VM discarded, never a panic, a hang
// or an allocation beyond the limits.
func FuzzReceive(f *testing.F) {
	f.Add(good().data(0, 2, 1, 2).data(1, 3, 9).iteration(1, 3).zero(0, 3, 5).iteration(2, 6).state().done().Bytes())
	f.Add(good().zero(0, 0, 8).zero(1, 0, 4).iteration(1, 12).state().done().Bytes())
	f.Add(good().Bytes())
	f.Add(new(stream).header().Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		rec, tgt, _, err := receive(b)
		if err == nil {
			if !tgt.Built[0].Restored || rec == nil {
				t.Fatal("accepted but not restored")
			}
			return
		}
		for _, in := range tgt.Built {
			if !in.Discarded || in.Restored {
				t.Fatal("a failed migration kept its VM")
			}
		}
	})
}
