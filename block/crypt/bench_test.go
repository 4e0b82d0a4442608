package crypt

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/raw"
)

// Benchmarks of crypt over a raw file against the raw file alone, through
// the page cache (cache=writeback), as block's own benchmarks measure the
// other layers: they show what encryption costs, not the disk. Run with
//
//	go test -run XXX -bench . -benchtime 2s ./block/crypt
//
// Each reports MB/s and IOPS. BenchmarkCrypt's sub-benchmarks are the
// sector sizes 512 and 4096.

const benchSize = 128 << 20

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

func fill(b *testing.B, d block.Backend) {
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

func runWorkload(b *testing.B, d block.Backend, write bool, bs int64, random bool) {
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

func BenchmarkRaw(b *testing.B) {
	f, err := raw.Create(filepath.Join(b.TempDir(), "raw"), benchSize, raw.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	fill(b, f)
	for _, w := range workloads {
		b.Run(w.name, func(b *testing.B) { runWorkload(b, f, w.write, w.bs, w.random) })
	}
}

func BenchmarkCrypt(b *testing.B) {
	for _, ss := range []int{512, 4096} {
		b.Run(fmt.Sprintf("sector%d", ss), func(b *testing.B) {
			f, err := raw.Create(filepath.Join(b.TempDir(), "raw"), FormatDataOffset+benchSize, raw.Options{})
			if err != nil {
				b.Fatal(err)
			}
			if err := Format(f, testPass, FormatOptions{SectorSize: ss, KDF: fastPBKDF2}); err != nil {
				b.Fatal(err)
			}
			d, err := Open(f, testPass, Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer d.Close()
			fill(b, d)
			for _, w := range workloads {
				b.Run(w.name, func(b *testing.B) { runWorkload(b, d, w.write, w.bs, w.random) })
			}
		})
	}
}

// BenchmarkXTS is the cipher alone, one goroutine, on a 1 MiB buffer: the
// portable loop, the AES-NI path and the VAES path, for both sector sizes.
//
//	go test -run XXX -bench XTS ./block/crypt
func BenchmarkXTS(b *testing.B) {
	key := make([]byte, 64)
	for i := range key {
		key[i] = byte(i)
	}
	buf := make([]byte, 1<<20)
	for _, p := range []struct {
		name        string
		aesni, vaes bool
	}{{"portable", false, false}, {"aesni", haveAESNI, false}, {"vaes", haveAESNI, haveVAES}} {
		if (p.aesni && !haveAESNI) || (p.vaes && !haveVAES) {
			continue
		}
		for _, ss := range []int{512, 4096} {
			b.Run(fmt.Sprintf("%s/sector%d", p.name, ss), func(b *testing.B) {
				useAESNI, useVAES = p.aesni, p.vaes
				defer func() { useAESNI, useVAES = haveAESNI, haveVAES }()
				c, err := newSectorCipher(supportedCipher, key, ss, 0)
				if err != nil {
					b.Fatal(err)
				}
				b.SetBytes(int64(len(buf)))
				for b.Loop() {
					c.decrypt(buf, buf, 0)
				}
			})
		}
	}
}
