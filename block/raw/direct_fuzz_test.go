package raw

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/viovmm/vio/block"
)

// fuzzDir is where FuzzDirectIO keeps its images: tmpfs when there is one
// (the tail of an image is written with O_DSYNC, which costs milliseconds
// on a disk), else the test's temporary directory.
func fuzzDir(t *testing.T) string {
	if d, err := os.MkdirTemp("/dev/shm", "vio-raw-fuzz-"); err == nil {
		t.Cleanup(func() { os.RemoveAll(d) })
		return d
	}
	return t.TempDir()
}

// FuzzDirectIO drives the O_DIRECT paths of a raw image (bounce buffers for
// unaligned reads, read-modify-write of partial blocks, the buffered tail
// of a file whose size is not a multiple of the block size) with random
// sequences of reads, writes, vectored reads and writes, zeroing and
// flushes at any offset, length and buffer address, against an in-memory
// model of the image.
//
// It runs on a page-cache file with the alignment forced to 512 to 4096
// bytes and the direct system calls replaced by checked ones, so it is
// fast and does not depend on the file system supporting O_DIRECT: every
// direct read and write must be aligned in offset, length and buffer
// address (what O_DIRECT would otherwise refuse with EINVAL) and a direct
// write must never extend the file. After every operation the image must
// equal the model, byte for byte and in size, and each operation must
// return what the io.ReaderAt / io.WriterAt contracts and block.CheckRange
// say.
func FuzzDirectIO(f *testing.F) {
	for _, d := range directSeeds() {
		f.Add(d.alignSel, d.sizeSel, d.ops)
	}
	f.Fuzz(func(t *testing.T, alignSel uint8, sizeSel uint16, ops []byte) {
		directOps(t, fuzzDir(t), int64(512)<<(alignSel%4), sizeSel, ops)
	})
}

// directSeed is one input of FuzzDirectIO: an alignment choice, an image
// size choice and the operations (see directOps).
type directSeed struct {
	alignSel uint8
	sizeSel  uint16
	ops      []byte
}

// directSeeds are FuzzDirectIO's seeds, which TestDirectIOReal replays on
// real O_DIRECT.
func directSeeds() []directSeed {
	op := func(kind byte, off, n uint16, extra byte) []byte {
		b := []byte{kind}
		b = binary.LittleEndian.AppendUint16(b, off)
		b = binary.LittleEndian.AppendUint16(b, n)
		return append(b, extra)
	}
	cat := func(ops ...[]byte) []byte { return bytes.Join(ops, nil) }
	return []directSeed{
		// 512-byte blocks, a 1901-byte image: unaligned write across a block
		// boundary, read of the tail, aligned write, write past the end.
		{0, 1900, cat(op(1, 500, 30, 3), op(0, 2900, 200, 0), op(1, 512, 1024, 0x80), op(1, 2990, 20, 0), op(2, 0, 0, 0))},
		// 4096-byte blocks, an image of two blocks and a bit: writev split at
		// odd addresses over the partial last block, zeroing, readv.
		{3, 8200, cat(op(3, 4000, 4200, 0x17), op(4, 100, 5000, 0), op(5, 4095, 4105, 0x21))},
		// Aligned everything, then a zero-length write at the end.
		{1, 4096, cat(op(1, 1024, 2048, 0x80), op(0, 0, 4096, 0x80), op(1, 4096, 0, 0))},
	}
}

// TestDirectIOReal replays FuzzDirectIO's seeds against a file really
// opened with O_DIRECT in the test's temporary directory, where the kernel
// enforces the alignment (and the file system's own alignment is used), so
// that the emulation the fuzzer runs on stays true to it.
func TestDirectIOReal(t *testing.T) {
	for _, s := range directSeeds() {
		directOps(t, t.TempDir(), 0, s.sizeSel, s.ops)
	}
}

// directOps runs the operations ops encodes on an image in dir, checking
// them against a model. align > 0 forces that alignment on a page-cache
// file; align 0 opens the image with real O_DIRECT (skipping the test
// where the file system has none).
func directOps(t *testing.T, dir string, align int64, sizeSel uint16, ops []byte) {
	{
		path := filepath.Join(dir, "disk.raw")
		mode := Writeback
		if align == 0 {
			mode = None
		}
		probe := align
		if probe == 0 {
			probe = 4096
		}
		size := int64(sizeSel)%(4*probe) + 1
		r, err := Create(path, size, Options{Cache: mode})
		if err != nil {
			if align == 0 {
				t.Skipf("O_DIRECT unavailable here: %v", err)
			}
			t.Fatal(err)
		}
		defer r.Close()
		if align > 0 {
			// The alignment O_DIRECT would impose; direct calls are
			// checked.
			r.align = align
		} else {
			align = r.Alignment()
		}
		check := func(what string, bufs [][]byte, off int64, write bool) {
			var n int64
			for _, b := range bufs {
				n += int64(len(b))
				if !addrAligned(b, align) || int64(len(b))%align != 0 {
					t.Fatalf("direct %s at %d: a %d-byte buffer at %p, not aligned to %d", what, off, len(b), unsafe.SliceData(b), align)
				}
			}
			if off%align != 0 {
				t.Fatalf("direct %s of %d bytes at unaligned offset %d (alignment %d)", what, n, off, align)
			}
			if write && off+n > r.Size() {
				t.Fatalf("direct write of %d bytes at %d extends the %d-byte file", n, off, r.Size())
			}
		}
		defer func(rd, wr func(int, [][]byte, int64) (int, error)) { directPreadv, directPwritev = rd, wr }(directPreadv, directPwritev)
		directPreadv = func(fd int, bufs [][]byte, off int64) (int, error) {
			check("read", bufs, off, false)
			return preadvFull(fd, bufs, off)
		}
		directPwritev = func(fd int, bufs [][]byte, off int64) (int, error) {
			check("write", bufs, off, true)
			return pwritevFull(fd, bufs, off)
		}
		// A second descriptor, through the page cache, to see the image.
		view, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer view.Close()
		model := make([]byte, size)
		img := make([]byte, size+1)

		for i := 0; len(ops) >= 6 && i < 40; i++ {
			kind := ops[0] % 7
			off := int64(binary.LittleEndian.Uint16(ops[1:])) % (size + align)
			n := int64(binary.LittleEndian.Uint16(ops[3:])) % (size + align + 1)
			extra := ops[5]
			ops = ops[6:]
			if extra&0x80 != 0 { // the aligned path
				off &^= align - 1
				n &^= align - 1
			}
			// The request's buffer, at an address misaligned by extra's
			// low bits (unless aligned above); vectored requests split it
			// in two at a point extra also chooses.
			mis := int(extra & 0x7)
			if extra&0x80 != 0 {
				mis = 0
			}
			buf := alignedBuf(int(n)+mis, align)[mis:]
			bufs := func() [][]byte {
				if kind == 0 || kind == 1 {
					return [][]byte{buf}
				}
				cut := int64(extra>>3&0xf) * align / 16
				if cut == 0 || cut >= n || extra&0x80 != 0 {
					return [][]byte{buf}
				}
				return [][]byte{buf[:cut], buf[cut:]}
			}
			switch kind {
			case 0, 5: // read, readv
				for k := range buf {
					buf[k] = 0xee
				}
				if got, err := r.ReadAt(buf[:0], off); got != 0 || err != nil {
					t.Fatalf("empty read at %d: %d, %v", off, got, err)
				}
				got, err := r.ReadvAt(bufs(), off)
				want, from := int64(0), min(off, size)
				if off < size {
					want = min(n, size-off)
				}
				if int64(got) != want || (want < n) != errors.Is(err, io.EOF) || (err != nil && !errors.Is(err, io.EOF)) {
					t.Fatalf("read of %d at %d in %d bytes: %d, %v", n, off, size, got, err)
				}
				if !bytes.Equal(buf[:got], model[from:from+want]) {
					t.Fatalf("read of %d at %d: data differs from what was written", n, off)
				}
			case 1, 3: // write, writev
				for k := range buf {
					buf[k] = byte(i*31 + k)
				}
				got, err := r.WritevAt(bufs(), off)
				if off+n > size {
					if !errors.Is(err, block.ErrOutOfRange) || got != 0 {
						t.Fatalf("write of %d at %d past the %d-byte end: %d, %v", n, off, size, got, err)
					}
					break
				}
				if err != nil || int64(got) != n {
					t.Fatalf("write of %d at %d: %d, %v", n, off, got, err)
				}
				copy(model[off:], buf)
			case 4: // write zeroes
				err := r.WriteZeroes(off, n, extra&1 != 0)
				if off+n > size {
					if !errors.Is(err, block.ErrOutOfRange) {
						t.Fatalf("zeroing %d at %d past the %d-byte end: %v", n, off, size, err)
					}
					break
				}
				if err != nil {
					t.Fatalf("zeroing %d at %d: %v", n, off, err)
				}
				clear(model[off : off+n])
			case 2, 6:
				if err := r.Flush(); err != nil {
					t.Fatal(err)
				}
			}
			k, err := view.ReadAt(img, 0)
			if int64(k) != size || !errors.Is(err, io.EOF) {
				t.Fatalf("after op %d the image holds %d bytes (%v), want %d", i, k, err, size)
			}
			if !bytes.Equal(img[:size], model) {
				t.Fatalf("after op %d (kind %d, %d bytes at %d) the image differs from the model at byte %d", i, kind, n, off, firstDifference(img[:size], model))
			}
			if r.Size() != size {
				t.Fatalf("size %d, want %d", r.Size(), size)
			}
		}
	}
}

func firstDifference(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
