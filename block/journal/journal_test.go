package journal

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
)

// keepOpen is a base the tests reuse across journal reopenings: Close
// only flushes.
type keepOpen struct{ *blocktest.Mem }

func (k keepOpen) Close() error { return k.Mem.Flush() }

func TestConformance(t *testing.T) {
	for _, undo := range []bool{false, true} {
		name := map[bool]string{false: "log", true: "undo"}[undo]
		t.Run(name, func(t *testing.T) {
			blocktest.Run(t, func(t *testing.T, size int64) block.Backend {
				path := filepath.Join(t.TempDir(), "j.log")
				if undo {
					path = ""
				}
				b, err := Open(blocktest.NewMem(size), path, Options{Undo: undo})
				if err != nil {
					t.Fatal(err)
				}
				return b
			})
		})
	}
	blocktest.RunReopen(t, func(t *testing.T, size int64) func() (block.Backend, error) {
		base := keepOpen{blocktest.NewMem(size)}
		path := filepath.Join(t.TempDir(), "j.log")
		return func() (block.Backend, error) { return Open(base, path, Options{}) }
	})
}

// TestUndoLeavesBase: an undo disk's writes are seen while it is open and
// gone, base untouched and log removed, once it closes.
func TestUndoLeavesBase(t *testing.T) {
	mem := blocktest.NewMem(1 << 20)
	orig := bytes.Repeat([]byte{0xab}, 1<<20)
	mem.WriteAt(orig, 0)
	path := filepath.Join(t.TempDir(), "undo.log")
	b, err := Open(keepOpen{mem}, path, Options{Undo: true})
	if err != nil {
		t.Fatal(err)
	}
	b.WriteAt([]byte("hello"), 4096)
	b.(block.ZeroWriter).WriteZeroes(0, 512, false)
	b.Flush()
	got := make([]byte, 5)
	b.ReadAt(got, 4096)
	if string(got) != "hello" {
		t.Fatalf("read %q, want hello", got)
	}
	if err := Of(b).Commit(""); err == nil {
		t.Error("commit of an undo disk succeeded")
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mem.Bytes(), orig) {
		t.Error("the base changed under an undo disk")
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the undo log is still there: %v", err)
	}
}

// TestLogLocked: a second opener of the same log is refused.
func TestLogLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j.log")
	a, err := Open(blocktest.NewMem(4096), path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if _, err := Open(blocktest.NewMem(4096), path, Options{}); err == nil {
		t.Fatal("a second open of a log in use succeeded")
	}
}

// TestWrongBase: a log is refused over a base of another size.
func TestWrongBase(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j.log")
	a, err := Open(blocktest.NewMem(4096), path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	a.WriteAt([]byte{1}, 0)
	a.Close()
	if _, err := Open(blocktest.NewMem(8192), path, Options{}); err == nil {
		t.Fatal("a log opened over a base of another size")
	}
}

// TestIndexBound: writes past MaxExtents fail with ErrIndexFull, and
// nothing they did is visible.
func TestIndexBound(t *testing.T) {
	b, err := Open(blocktest.NewMem(1<<20), filepath.Join(t.TempDir(), "j.log"), Options{MaxExtents: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var full error
	for i := 0; i < 32 && full == nil; i++ {
		_, full = b.WriteAt([]byte{byte(i + 1)}, int64(i)*2)
	}
	if !errors.Is(full, ErrIndexFull) {
		t.Fatalf("32 scattered writes with room for 16 extents: %v, want ErrIndexFull", full)
	}
	if x := Of(b).idx; x.count > 16 {
		t.Fatalf("index holds %d extents, bound 16", x.count)
	}
}

// TestIndexModel checks the extent index against a byte map.
func TestIndexModel(t *testing.T) {
	const size = 3<<chunkShift + 777
	rng := rand.New(rand.NewPCG(1, 2))
	x := newIndex(1 << 20)
	want := make([]int64, size) // log offset per byte, -2 unmapped, -1 zero
	for i := range want {
		want[i] = -2
	}
	for step := 0; step < 3000; step++ {
		off := rng.Int64N(size)
		n := 1 + rng.Int64N(min(size-off, 1<<(1+rng.IntN(21))))
		log := int64(-1)
		if rng.IntN(4) > 0 {
			log = rng.Int64N(1 << 40)
		}
		if err := x.insert(off, n, log); err != nil {
			t.Fatal(err)
		}
		for i := int64(0); i < n; i++ {
			if log < 0 {
				want[off+i] = -1
			} else {
				want[off+i] = log + i
			}
		}
		if step%100 == 0 {
			count := 0
			x.walk(0, size, func(o, n, lg int64, mapped bool) error {
				for i := int64(0); i < n; i++ {
					got := int64(-2)
					if mapped {
						got = lg
						if lg >= 0 {
							got = lg + i
						}
					}
					if got != want[o+i] {
						t.Fatalf("step %d byte %d: index says %d, want %d", step, o+i, got, want[o+i])
					}
				}
				if mapped {
					count++
				}
				return nil
			})
			if count > x.count {
				t.Fatalf("walk saw %d mapped pieces, index counts %d extents", count, x.count)
			}
		}
	}
}
