package qcow2

import (
	"bytes"
	"compress/gzip"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/viovmm/vio/block/blocktest"
)

// TestGoldenQemuImages reads images made by qemu-img 7.2 (committed in
// testdata, with their contents as qemu-img convert produced them), so
// this interop check runs even where QEMU is not installed.
func TestGoldenQemuImages(t *testing.T) {
	for _, c := range []struct{ image, want, snapshot string }{
		{"qemu-compressed.qcow2", "qemu-compressed.want.gz", ""},
		{"qemu-overlay.qcow2", "qemu-overlay.want.gz", ""},
		{"qemu-overlay.qcow2", "qemu-overlay-first.want.gz", "first"},
		{"qemu-v2.qcow2", "qemu-v2.want.gz", ""},
	} {
		t.Run(c.want, func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range []string{c.image, "base.raw"} {
				b, err := os.ReadFile(filepath.Join("testdata", f))
				if err != nil {
					t.Fatal(err)
				}
				os.WriteFile(filepath.Join(dir, f), b, 0o644)
			}
			img := openImg(t, filepath.Join(dir, c.image), c.snapshot == "")
			defer img.Close()
			if c.snapshot != "" {
				if err := img.ApplySnapshot(c.snapshot); err != nil {
					t.Fatal(err)
				}
			}
			sameBytes(t, c.image, readAll(t, img), gunzip(t, filepath.Join("testdata", c.want)))
		})
	}
}

func gunzip(t testing.TB, path string) []byte {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(z)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func seedImages(f *testing.F) [][]byte {
	var out [][]byte
	for _, name := range []string{"qemu-compressed.qcow2", "qemu-overlay.qcow2", "qemu-v2.qcow2"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		out = append(out, b)
	}
	m := blocktest.NewMem(0)
	img, err := Create(keepOpen{m}, 1<<20, CreateOptions{ClusterSize: 512, RefcountBits: 4}, Options{})
	if err != nil {
		f.Fatal(err)
	}
	img.WriteAt(bytes.Repeat([]byte{9}, 5000), 700)
	img.CreateSnapshot("s")
	img.WriteZeroes(0, 4096, false)
	img.Close()
	return append(out, m.Bytes())
}

func FuzzParseHeader(f *testing.F) {
	for _, b := range seedImages(f) {
		f.Add(b[:min(len(b), 512)], int64(len(b)))
	}
	f.Fuzz(func(t *testing.T, buf []byte, fileSize int64) {
		if fileSize < 0 {
			fileSize = -fileSize
		}
		h, err := parseHeader(buf, fileSize)
		if err != nil {
			return
		}
		// What parses must encode and parse back the same.
		cs := 1 << h.clusterBits
		enc, err := h.encode(cs)
		if err != nil {
			return
		}
		enc = append(enc, make([]byte, cs-len(enc))...)
		h2, err := parseHeader(enc, max(fileSize, int64(cs)))
		if err != nil {
			t.Fatalf("re-parsing an encoded header: %v", err)
		}
		if h2.size != h.size || h2.l1Offset != h.l1Offset || h2.backingFile != h.backingFile ||
			h2.backingFormat != h.backingFormat || h2.refTableOffset != h.refTableOffset {
			t.Fatalf("header changed in a round trip: %+v vs %+v", h, h2)
		}
	})
}

func FuzzParseSnapshots(f *testing.F) {
	f.Add(encodeSnapshots([]snapshot{{l1Offset: 512, l1Size: 3, id: "1", name: "a", diskSize: 1 << 20}}), 2)
	f.Add([]byte{}, 0)
	f.Fuzz(func(t *testing.T, buf []byte, n int) {
		if n < 0 || n > 100 {
			return
		}
		snaps, _, err := parseSnapshots(buf, n, 9, 1<<20, 3)
		if err != nil {
			return
		}
		again, _, err := parseSnapshots(encodeSnapshots(snaps), n, 9, 1<<20, 3)
		if err != nil || len(again) != len(snaps) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

// FuzzOpen feeds arbitrary files to Open and, if they open, reads,
// writes, snapshots and flushes them: nothing may panic, hang or allocate
// without bound, whatever the metadata says.
//
// Run it with a short minimisation time: the seeds are whole images, and
// minimising one takes the default minute:
//
//	go test -run XXX -fuzz FuzzOpen -fuzztime 30s -fuzzminimizetime 1s ./block/qcow2
func FuzzOpen(f *testing.F) {
	for _, b := range seedImages(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1<<20 {
			return
		}
		exercise(data)
	})
}

// exercise opens data as an image, read-only and then writable, and runs
// every kind of operation on it, ignoring errors: only panics, hangs and
// runaway allocation are failures.
func exercise(data []byte) {
	img, err := Open(keepOpen{memOf(data)}, Options{ReadOnly: true, CacheBytes: 8 << 10})
	if err == nil {
		p := make([]byte, 4096)
		size := img.Size()
		for _, off := range []int64{0, size / 3, size - 4096, size - 1} {
			img.ReadAt(p, max(off, 0))
		}
		img.Info()
		img.Close()
	}
	img, err = Open(keepOpen{memOf(data)}, Options{CacheBytes: 8 << 10})
	if err != nil {
		return
	}
	size := img.Size()
	p := bytes.Repeat([]byte{0x5a}, 3000)
	for _, off := range []int64{0, size / 2, size - 3000} {
		if off >= 0 {
			img.WriteAt(p, off)
		}
	}
	img.WriteZeroes(0, min(size, 1<<16), false)
	img.Discard(0, min(size, 1<<16))
	img.CreateSnapshot("fuzz")
	img.WriteAt(p, 0)
	for _, s := range img.Snapshots() {
		// A snapshot may legitimately claim a huge disk, whose L1
		// table (up to 32 MiB) takes long to build: bounded, but it
		// would starve the fuzzer.
		if s.DiskSize < 64<<20 {
			img.ApplySnapshot(s.ID)
		}
		break
	}
	img.Flush()
	img.Close()
}

// TestOpenMutatedImages runs exercise on thousands of randomly damaged
// copies of real images (bytes overwritten in the header and tables), a
// cheap complement to coverage-guided fuzzing that runs in every go test.
func TestOpenMutatedImages(t *testing.T) {
	seeds := seedImages(&testing.F{})
	rng := rand.New(rand.NewPCG(8, 8))
	n := 2000
	if testing.Short() {
		n = 200
	}
	for i := 0; i < n; i++ {
		d := append([]byte(nil), seeds[rng.IntN(len(seeds))]...)
		for k := 0; k < 1+rng.IntN(6); k++ {
			pos := rng.IntN(min(len(d), []int{128, 2048, len(d)}[rng.IntN(3)]))
			switch rng.IntN(3) {
			case 0:
				d[pos] = byte(rng.Uint32())
			case 1:
				d[pos] ^= 1 << rng.IntN(8)
			default:
				for j := pos; j < min(pos+8, len(d)); j++ {
					d[j] = 0xff
				}
			}
		}
		if rng.IntN(10) == 0 {
			d = d[:rng.IntN(len(d))]
		}
		exercise(d)
	}
}
