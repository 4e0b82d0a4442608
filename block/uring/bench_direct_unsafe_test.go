package uring

import (
	"errors"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// BenchmarkRandRead4kDirect is BenchmarkRandRead4k with O_DIRECT, so every
// read reaches the disk under the temp directory: the case io_uring is for.
func BenchmarkRandRead4kDirect(b *testing.B) {
	open := func(b *testing.B) int {
		f := tempFile(b, 0)
		benchFileAt(b, f.Name())
		fd, err := unix.Open(f.Name(), unix.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
		if errors.Is(err, syscall.EINVAL) {
			b.Skipf("the temp filesystem refuses O_DIRECT: %v", err)
		}
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { unix.Close(fd) })
		return fd
	}
	b.Run("pread", func(b *testing.B) {
		fd := open(b)
		runParallelBuf(b, func() []byte { return alignedBuf(benchBlock, 4096) }, func(p []byte, off int64) error {
			_, err := unix.Pread(fd, p, off)
			return err
		})
	})
	b.Run("uring", func(b *testing.B) {
		q := newQueue(b, benchDepth)
		fd := open(b)
		runParallelBuf(b, func() []byte { return alignedBuf(benchBlock, 4096) }, func(p []byte, off int64) error {
			_, err := q.ReadAt(fd, p, off)
			return err
		})
	})
}
