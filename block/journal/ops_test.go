package journal

import (
	"bytes"
	"errors"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/viovmm/vio/block/blocktest"
)

// TestForwardUntilFork: after going back, every later point can be
// reached again, until a write forks the history and they are gone.
func TestForwardUntilFork(t *testing.T) {
	j, err := OpenJournal(blocktest.NewMem(64<<10), filepath.Join(t.TempDir(), "j.log"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	var ids []string
	for v := byte(1); v <= 3; v++ {
		j.WriteAt(bytes.Repeat([]byte{v}, 512), 0)
		j.Flush()
		st, _ := j.List()
		ids = append(ids, strconv.FormatUint(st.Points[len(st.Points)-1].ID, 10))
	}
	at := func() byte {
		b := make([]byte, 1)
		j.ReadAt(b, 0)
		return b[0]
	}
	for _, step := range []struct {
		to   int
		want byte
	}{{0, 1}, {2, 3}, {1, 2}, {0, 1}} {
		if err := j.Revert(ids[step.to]); err != nil {
			t.Fatal(err)
		}
		if got := at(); got != step.want {
			t.Fatalf("at point %s the disk holds %d, want %d", ids[step.to], got, step.want)
		}
	}
	j.WriteAt([]byte{9}, 0) // forks: points 2 and 3 go
	if err := j.Revert(ids[2]); !errors.Is(err, ErrNoPoint) {
		t.Fatalf("revert to a forked-off point: %v, want ErrNoPoint", err)
	}
	if err := j.Revert(ids[0]); err != nil || at() != 1 {
		t.Fatalf("revert to the fork's parent: %v, disk holds %d", err, at())
	}
}

// TestMaxLogBounds: with max_log and no marks the log stays near its
// bound however much is written: retention commits and compacts.
func TestMaxLogBounds(t *testing.T) {
	mem := blocktest.NewMem(1 << 20)
	const limit = 512 << 10
	j, err := OpenJournal(keepOpen{mem}, filepath.Join(t.TempDir(), "j.log"), Options{MaxLog: limit})
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 64<<10)
	peak := int64(0)
	for i := 0; i < 128; i++ { // 8 MiB of writes
		for k := range p {
			p[k] = byte(i)
		}
		j.WriteAt(p, int64(i%16)*int64(len(p)))
		if err := j.Flush(); err != nil {
			t.Fatal(err)
		}
		st, _ := j.List()
		peak = max(peak, st.LogBytes)
	}
	// A flush may add one write's worth before retention acts.
	if peak > limit+int64(len(p))+4096 {
		t.Fatalf("the log reached %d bytes with max_log %d", peak, limit)
	}
	t.Logf("log peak %d bytes with max_log %d", peak, limit)
	got := make([]byte, 1<<20)
	j.ReadAt(got, 0)
	for i := 112; i < 128; i++ {
		if got[(i%16)*len(p)] != byte(i) {
			t.Fatalf("block %d holds %d, want %d", i%16, got[(i%16)*len(p)], i)
		}
	}
	j.Close()
}
