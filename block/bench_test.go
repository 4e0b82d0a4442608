package block_test

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/viovmm/vio/block/qcow2"
	"github.com/viovmm/vio/block/raw"
)

// Benchmarks of the back-ends against the host file used directly, through
// the page cache (cache=writeback): they measure the software overhead of
// each layer, not the disk. Run with
//
//	go test -run XXX -bench . -benchtime 2s ./block
//
// Each reports MB/s and IOPS.

const benchSize = 128 << 20

type rw interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
}

// fill writes the whole device once so that reads hit data and writes
// overwrite allocated clusters (the steady state of a used disk).
func fill(b *testing.B, d rw) {
	p := make([]byte, 1<<20)
	for i := range p {
		p[i] = byte(i*7 + 1)
	}
	for off := int64(0); off < benchSize; off += int64(len(p)) {
		if _, err := d.WriteAt(p, off); err != nil {
			b.Fatal(err)
		}
	}
}

func run(b *testing.B, d rw, write bool, bs int64, random bool) {
	p := make([]byte, bs)
	for i := range p {
		p[i] = byte(i)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	b.SetBytes(bs)
	b.ResetTimer()
	off := int64(0)
	for i := 0; i < b.N; i++ {
		if random {
			off = rng.Int64N(benchSize/bs) * bs
		} else {
			off = (off + bs) % benchSize
		}
		var err error
		if write {
			_, err = d.WriteAt(p, off)
		} else {
			_, err = d.ReadAt(p, off)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "IOPS")
}

var workloads = []struct {
	name   string
	write  bool
	bs     int64
	random bool
}{
	{"rand4k-read", false, 4 << 10, true},
	{"rand4k-write", true, 4 << 10, true},
	{"seq1M-read", false, 1 << 20, false},
	{"seq1M-write", true, 1 << 20, false},
}

func BenchmarkHostFile(b *testing.B) {
	f, err := os.Create(filepath.Join(b.TempDir(), "host"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	fill(b, f)
	for _, w := range workloads {
		b.Run(w.name, func(b *testing.B) { run(b, f, w.write, w.bs, w.random) })
	}
}

func BenchmarkRaw(b *testing.B) {
	f, err := raw.Create(filepath.Join(b.TempDir(), "raw"), benchSize, raw.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	fill(b, f)
	for _, w := range workloads {
		b.Run(w.name, func(b *testing.B) { run(b, f, w.write, w.bs, w.random) })
	}
}

func BenchmarkQcow2(b *testing.B) {
	f, err := raw.Create(filepath.Join(b.TempDir(), "q"), 0, raw.Options{})
	if err != nil {
		b.Fatal(err)
	}
	img, err := qcow2.Create(f, benchSize, qcow2.CreateOptions{}, qcow2.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer img.Close()
	fill(b, img)
	for _, w := range workloads {
		b.Run(w.name, func(b *testing.B) { run(b, img, w.write, w.bs, w.random) })
	}
}

// BenchmarkQcow2Allocating writes 4 KiB at random into a fresh image:
// every write to a new cluster allocates it and updates the tables.
func BenchmarkQcow2Allocating(b *testing.B) {
	f, err := raw.Create(filepath.Join(b.TempDir(), "q"), 0, raw.Options{})
	if err != nil {
		b.Fatal(err)
	}
	img, err := qcow2.Create(f, benchSize, qcow2.CreateOptions{}, qcow2.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer img.Close()
	run(b, img, true, 4<<10, true)
}
