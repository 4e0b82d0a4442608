package blk_test

import (
	"testing"
	"time"

	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/internal/latency"
)

// slowReads is a back-end whose reads take at least delay: the stimulus
// the latency histogram has to show.
type slowReads struct {
	noZero
	delay time.Duration
}

func (s slowReads) ReadAt(p []byte, off int64) (int, error) {
	time.Sleep(s.delay)
	return s.noZero.ReadAt(p, off)
}

func TestLatencyByKind(t *testing.T) {
	const delay = 3 * time.Millisecond
	m := newMachine(t, slowReads{noZero{blocktest.NewMem(1 << 20)}, delay}, blk.Config{})
	m.start(t, blk.FeatureFlush, true)
	for i := range 2 {
		if _, st := m.read(t, uint64(i), 512); st != blk.StatusOK {
			t.Fatalf("read status %d", st)
		}
	}
	if st := m.write(t, 0, make([]byte, 512)); st != blk.StatusOK {
		t.Fatalf("write status %d", st)
	}
	if st := status(t, m.do(t, [][]byte{header(blk.TypeFlush, 0)}, []uint32{1}), 1); st != blk.StatusOK {
		t.Fatalf("flush status %d", st)
	}
	m.do(t, [][]byte{header(blk.TypeGetID, 0)}, []uint32{blk.IDBytes, 1})

	lat := m.dev.Latency()
	for kind, want := range map[string]uint64{"read": 2, "write": 1, "flush": 1, "other": 1, "discard": 0, "write_zeroes": 0} {
		if n := lat[kind].Count(); n != want {
			t.Errorf("%s: %d requests timed, want %d", kind, n, want)
		}
	}
	r := lat["read"]
	if r.Sum < 2*delay {
		t.Errorf("two reads of at least %v each took %v in all", delay, r.Sum)
	}
	// Both reads lie in buckets above the delay.
	var below uint64
	for i, b := range latency.Bounds {
		if b < delay {
			below += r.Counts[i]
		}
	}
	if below != 0 {
		t.Errorf("%d reads counted faster than the back-end can serve them: %v", below, r.Counts)
	}
}
