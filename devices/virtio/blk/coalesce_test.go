package blk_test

import (
	"testing"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/irq/coalesce"
)

// holdOne is a back-end whose read of one sector waits until release is
// closed, so that a request stays in flight while others complete.
type holdOne struct {
	block.Backend
	sector  int64
	release chan struct{}
}

func (h holdOne) ReadAt(p []byte, off int64) (int, error) {
	if off == h.sector*512 {
		select {
		case <-h.release:
		case <-time.After(wait):
		}
	}
	return h.Backend.ReadAt(p, off)
}

// TestCoalesceHoldsInterrupt: with a policy that wants more completions
// than arrive, the interrupt for two reads completed while a third is in
// flight comes when the delay bound expires (the completions waited at
// least that long, counted in Stats), never not at all; the last
// outstanding request interrupts at once. With coalescing off nothing
// waits.
func TestCoalesceHoldsInterrupt(t *testing.T) {
	const maxDelay = 5 * time.Millisecond
	for _, c := range []struct {
		name   string
		policy coalesce.Config
	}{
		{"fixed", coalesce.Config{Mode: coalesce.Fixed, Count: 64, MaxDelay: maxDelay}},
		{"off", coalesce.Config{}},
	} {
		t.Run(c.name, func(t *testing.T) {
			be := holdOne{Backend: noZero{blocktest.NewMem(1 << 20)}, sector: 100, release: make(chan struct{})}
			m := newMachine(t, be, blk.Config{Workers: 4, Coalesce: c.policy})
			m.start(t, 0, false)
			m.submit(t, 0, [][]byte{header(blk.TypeIn, 100)}, []uint32{512, 1}, false)
			m.submit(t, 0, [][]byte{header(blk.TypeIn, 0)}, []uint32{512, 1}, false)
			m.submit(t, 0, [][]byte{header(blk.TypeIn, 1)}, []uint32{512, 1}, false)
			// The first interrupt; with coalescing it comes at the bound.
			if _, err := m.router.Wait(wait); err != nil {
				t.Fatalf("no interrupt for two completed reads: %v", err)
			}
			held := m.dev.Stats()
			for _, u := range m.collect(t, 0, 2) {
				if st := status(t, u, 513); st != blk.StatusOK {
					t.Fatalf("status %d", st)
				}
			}
			close(be.release)
			m.collect(t, 0, 1)
			s := m.dev.Stats()
			t.Logf("held: %+v; after: coalesced %d, delay %v", held, s.Coalesced, s.CoalesceDelay)
			if c.policy.Mode == coalesce.Off {
				if s.CoalesceDelay != 0 || s.Coalesced != 0 {
					t.Errorf("coalescing off, yet completions waited %v (%d coalesced)", s.CoalesceDelay, s.Coalesced)
				}
				return
			}
			if held.CoalesceDelay < maxDelay {
				t.Errorf("the two completions waited %v in all before their interrupt, want at least the %v bound", held.CoalesceDelay, maxDelay)
			}
			if s.CoalesceDelay != held.CoalesceDelay {
				t.Errorf("the last outstanding request waited %v for its interrupt", s.CoalesceDelay-held.CoalesceDelay)
			}
		})
	}
}
