package mirror_test

import (
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/block/mirror"
	"github.com/viovmm/vio/block/raw"
)

// BenchmarkRead compares reads through a mirror of two raw files with reads
// of one raw file (both through the page cache, after a warm-up pass):
//
//	go test -run X -bench Read -count 5 ./block/mirror
//
// The target: mirror(2) within 10% of the bare child.
func BenchmarkRead(b *testing.B) {
	const size = 64 << 20
	dir := b.TempDir()
	for _, n := range []string{"a", "b"} {
		f, err := raw.Create(filepath.Join(dir, n), size, raw.Options{})
		if err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, 1<<20)
		for i := range buf {
			buf[i] = byte(i * 7)
		}
		for off := int64(0); off < size; off += int64(len(buf)) {
			f.WriteAt(buf, off)
		}
		f.Close()
	}
	open := func(b *testing.B, n string) block.Backend {
		f, err := raw.Open(filepath.Join(dir, n), raw.Options{})
		if err != nil {
			b.Fatal(err)
		}
		return f
	}
	workloads := []struct {
		name string
		bs   int64
		seq  bool
	}{{"4k-random", 4 << 10, false}, {"1M-sequential", 1 << 20, true}}
	setups := []struct {
		name string
		make func(b *testing.B) block.Backend
	}{
		{"raw", func(b *testing.B) block.Backend { return open(b, "a") }},
		{"mirror2", func(b *testing.B) block.Backend {
			m, err := mirror.NewBackend([]block.Backend{open(b, "a"), open(b, "b")}, mirror.Options{AssumeClean: true})
			if err != nil {
				b.Fatal(err)
			}
			return m
		}},
	}
	// Paired: the machine this runs on is shared and its speed drifts by
	// tens of percent between runs, so the two set-ups also run in
	// alternating batches of 64 reads within one benchmark, which reports
	// each one's time per read and the mirror's overhead.
	for _, w := range workloads {
		b.Run(w.name+"/paired", func(b *testing.B) {
			r, m := setups[0].make(b), setups[1].make(b)
			defer r.Close()
			defer m.Close()
			buf := make([]byte, w.bs)
			for off := int64(0); off < size; off += w.bs {
				r.ReadAt(buf, off)
				m.ReadAt(buf, off)
			}
			rng := rand.New(rand.NewPCG(1, 1))
			var off int64
			next := func() int64 {
				if w.seq {
					off = (off + w.bs) % size
				} else {
					off = rng.Int64N(size/w.bs) * w.bs
				}
				return off
			}
			var tr, tm time.Duration
			b.SetBytes(2 * 64 * w.bs)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				for j, d := range []block.Backend{r, m} {
					if i%2 == 1 {
						d = []block.Backend{m, r}[j]
					}
					start := time.Now()
					for range 64 {
						if _, err := d.ReadAt(buf, next()); err != nil {
							b.Fatal(err)
						}
					}
					if d == r {
						tr += time.Since(start)
					} else {
						tm += time.Since(start)
					}
				}
			}
			nr := float64(b.N * 64)
			b.ReportMetric(float64(tr.Nanoseconds())/nr, "raw-ns/read")
			b.ReportMetric(float64(tm.Nanoseconds())/nr, "mirror-ns/read")
			b.ReportMetric(100*(float64(tm)/float64(tr)-1), "overhead-%")
		})
	}
	for _, w := range workloads {
		for _, s := range setups {
			b.Run(w.name+"/"+s.name, func(b *testing.B) {
				d := s.make(b)
				defer d.Close()
				buf := make([]byte, w.bs)
				for off := int64(0); off < size; off += w.bs { // warm the cache
					d.ReadAt(buf, off)
				}
				rng := rand.New(rand.NewPCG(1, 1))
				b.SetBytes(w.bs)
				b.ResetTimer()
				var off int64
				for i := 0; i < b.N; i++ {
					if w.seq {
						off = (off + w.bs) % size
					} else {
						off = rng.Int64N(size/w.bs) * w.bs
					}
					if _, err := d.ReadAt(buf, off); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkReadPath measures what the mirror itself adds to a 4 KiB read,
// over in-memory children (no I/O to hide behind): a child read directly
// against the same read through mirror(2).
func BenchmarkReadPath(b *testing.B) {
	const size = 16 << 20
	for _, name := range []string{"bare", "mirror2"} {
		b.Run(name, func(b *testing.B) {
			var d block.Backend = blocktest.NewMem(size)
			if name == "mirror2" {
				m, err := mirror.NewBackend([]block.Backend{d, blocktest.NewMem(size)}, mirror.Options{AssumeClean: true})
				if err != nil {
					b.Fatal(err)
				}
				d = m
			}
			defer d.Close()
			buf := make([]byte, 4096)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := d.ReadAt(buf, int64(i%4096)*4096); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
