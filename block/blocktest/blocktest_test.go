package blocktest

import (
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"

	"github.com/viovmm/vio/block"
)

func TestMem(t *testing.T) {
	Run(t, func(t *testing.T, size int64) block.Backend { return NewMem(size) })
}

func TestMemReopen(t *testing.T) {
	RunReopen(t, func(t *testing.T, size int64) func() (block.Backend, error) {
		m := NewMem(size)
		return func() (block.Backend, error) {
			// A closed Mem keeps its bytes; a new handle shares them.
			return &Mem{data: m.data}, nil
		}
	})
}

// Each broken back-end below violates one rule; the suite must notice.

type dropOddWrites struct{ *Mem }

func (d dropOddWrites) WriteAt(p []byte, off int64) (int, error) {
	if off%2 == 1 {
		return len(p), nil
	}
	return d.Mem.WriteAt(p, off)
}

type partialPastEnd struct{ *Mem }

func (d partialPastEnd) WriteAt(p []byte, off int64) (int, error) {
	if off >= 0 && off < d.Size() && off+int64(len(p)) > d.Size() {
		n, _ := d.Mem.WriteAt(p[:d.Size()-off], off)
		return n, block.ErrOutOfRange
	}
	return d.Mem.WriteAt(p, off)
}

type noEOF struct{ *Mem }

func (d noEOF) ReadAt(p []byte, off int64) (int, error) {
	n, err := d.Mem.ReadAt(p, off)
	if off < d.Size() && n < len(p) {
		return n, nil // a short read without io.EOF
	}
	return n, err
}

// staleTry claims every try succeeded without reading anything.
type staleTry struct{ *Mem }

func (d staleTry) TryReadvAt(bufs [][]byte, off int64) (int, error) {
	n := 0
	for _, b := range bufs {
		n += len(b)
	}
	return n, nil
}

type lazyZeroes struct{ *Mem }

func (d lazyZeroes) WriteZeroes(off, n int64, unmap bool) error {
	if unmap {
		return nil // "may free": but then reads must still be zero
	}
	return d.Mem.WriteZeroes(off, n, unmap)
}

type stickyResize struct{ *Mem }

func (d stickyResize) Resize(size int64) error {
	if size < d.Size() {
		d.Mem.mu.Lock()
		d.Mem.data = d.Mem.data[:size] // keeps the old bytes in capacity
		d.Mem.mu.Unlock()
		return nil
	}
	d.Mem.mu.Lock()
	defer d.Mem.mu.Unlock()
	d.Mem.data = d.Mem.data[:min(int64(cap(d.Mem.data)), size)]
	d.Mem.data = append(d.Mem.data, make([]byte, size-int64(len(d.Mem.data)))...)
	return nil
}

// racy stages every write in one shared buffer, like a back-end that
// forgot a lock: the staging is itself locked (so the race detector has
// nothing to say) but another write can slip in before the data is used.
type racy struct {
	*Mem
	mu      sync.Mutex
	scratch []byte
}

func (d *racy) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	if len(d.scratch) < len(p) {
		d.scratch = make([]byte, len(p))
	}
	copy(d.scratch, p)
	d.mu.Unlock()
	runtime.Gosched() // widen the window
	d.mu.Lock()
	s := append([]byte(nil), d.scratch[:len(p)]...)
	d.mu.Unlock()
	return d.Mem.WriteAt(s, off)
}

func TestChecksCatchBrokenBackends(t *testing.T) {
	cases := []struct {
		check string
		b     block.Backend
	}{
		{"RoundTrip", dropOddWrites{NewMem(DefaultSize)}},
		{"WritePastEnd", partialPastEnd{NewMem(DefaultSize)}},
		{"ReadPastEnd", noEOF{NewMem(DefaultSize)}},
		{"TryRead", staleTry{NewMem(DefaultSize)}},
		{"WriteZeroes", lazyZeroes{NewMem(DefaultSize)}},
		{"Resize", stickyResize{NewMem(DefaultSize)}},
		{"Concurrent", &racy{Mem: NewMem(DefaultSize)}},
		{"Size", NewMem(DefaultSize - 1)},
	}
	for _, c := range cases {
		var fn func(block.Backend, int64, *rand.Rand) error
		for _, k := range checks {
			if k.name == c.check {
				fn = k.fn
			}
		}
		failed := false
		for seed := uint64(0); seed < 5 && !failed; seed++ {
			failed = fn(c.b, DefaultSize, rand.New(rand.NewPCG(seed, 1))) != nil
		}
		if !failed {
			t.Errorf("check %s passed a back-end that breaks it (%T)", c.check, c.b)
		}
	}
}

func TestCrashDisk(t *testing.T) {
	Run(t, func(t *testing.T, size int64) block.Backend { return NewCrashDisk(size) })
	d := NewCrashDisk(4)
	d.WriteAt([]byte{1, 1, 1, 1}, 0)
	d.Flush()
	d.WriteAt([]byte{2, 2}, 0)
	d.FreezeAfter(3)
	d.WriteAt([]byte{3, 3}, 2) // op 4: lost
	d.Flush()
	seen := map[string]bool{}
	for seed := uint64(0); seed < 50; seed++ {
		seen[string(d.Crash(rand.New(rand.NewPCG(seed, 0))))] = true
	}
	if len(seen) != 2 || !seen["\x01\x01\x01\x01"] || !seen["\x02\x02\x01\x01"] {
		t.Errorf("crash states = %v", seen)
	}
}
