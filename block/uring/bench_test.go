package uring

import (
	"math/rand/v2"
	"os"
	"runtime"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// 4 KiB random reads from a 64 MiB file in the page cache, 32 at a time:
// pread from 32 goroutines against a depth-32 Queue fed by 32 goroutines.
const benchSize, benchBlock, benchDepth = 64 << 20, 4096, 32

func benchFile(b *testing.B) int {
	f := tempFile(b, 0)
	benchFileAt(b, f.Name())
	return int(f.Fd())
}

// benchFileAt fills path with benchSize bytes and reads them once, so they
// are in the page cache.
func benchFileAt(b *testing.B, path string) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i * 7)
	}
	for off := int64(0); off < benchSize; off += int64(len(chunk)) {
		if _, err := f.WriteAt(chunk, off); err != nil {
			b.Fatal(err)
		}
	}
	// Warm the page cache.
	p := make([]byte, 1<<20)
	for off := int64(0); off < benchSize; off += int64(len(p)) {
		if _, err := f.ReadAt(p, off); err != nil {
			b.Fatal(err)
		}
	}
}

func runParallel(b *testing.B, read func(p []byte, off int64) error) {
	runParallelBuf(b, func() []byte { return make([]byte, benchBlock) }, read)
}

func runParallelBuf(b *testing.B, buf func() []byte, read func(p []byte, off int64) error) {
	var seed atomic.Uint64
	// RunParallel starts parallelism*GOMAXPROCS goroutines.
	b.SetParallelism(max(1, benchDepth/runtimeProcs()))
	b.SetBytes(benchBlock)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		rng := rand.New(rand.NewPCG(seed.Add(1), 0))
		p := buf()
		for pb.Next() {
			off := rng.Int64N(benchSize/benchBlock) * benchBlock
			if err := read(p, off); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkRandRead4k(b *testing.B) {
	b.Run("pread", func(b *testing.B) {
		fd := benchFile(b)
		runParallel(b, func(p []byte, off int64) error {
			_, err := unix.Pread(fd, p, off)
			return err
		})
	})
	b.Run("uring", func(b *testing.B) {
		q := newQueue(b, benchDepth)
		fd := benchFile(b)
		runParallel(b, func(p []byte, off int64) error {
			_, err := q.ReadAt(fd, p, off)
			return err
		})
	})
}

func runtimeProcs() int { return runtime.GOMAXPROCS(0) }
