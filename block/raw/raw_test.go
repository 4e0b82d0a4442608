package raw

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
)

func factory(mode CacheMode) blocktest.Factory {
	return func(t *testing.T, size int64) block.Backend {
		f, err := Create(filepath.Join(t.TempDir(), "disk.raw"), size, Options{Cache: mode})
		if err != nil {
			if mode.Direct() {
				t.Skipf("O_DIRECT unavailable here: %v", err)
			}
			t.Fatal(err)
		}
		return f
	}
}

func TestConformance(t *testing.T) {
	for _, m := range []CacheMode{Writeback, Writethrough, None, DirectSync, Unsafe} {
		t.Run(m.String(), func(t *testing.T) {
			if testing.Short() && (m == Writethrough || m == DirectSync) {
				t.Skip("synchronous modes are slow")
			}
			blocktest.Run(t, factory(m))
			blocktest.RunReopen(t, func(t *testing.T, size int64) func() (block.Backend, error) {
				path := filepath.Join(t.TempDir(), "disk.raw")
				f, err := Create(path, size, Options{})
				if err != nil {
					t.Fatal(err)
				}
				f.Close()
				return func() (block.Backend, error) { return Open(path, Options{Cache: m}) }
			})
		})
	}
}

func TestReadOnly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(path, bytes.Repeat([]byte{7}, 8192), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if !f.ReadOnly() {
		t.Error("ReadOnly() = false")
	}
	p := make([]byte, 100)
	if _, err := f.ReadAt(p, 50); err != nil || p[0] != 7 {
		t.Errorf("ReadAt = %v, %d", err, p[0])
	}
	if _, err := f.WriteAt(p, 0); !errors.Is(err, block.ErrReadOnly) {
		t.Errorf("WriteAt: %v, want ErrReadOnly", err)
	}
	if err := f.Discard(0, 512); !errors.Is(err, block.ErrReadOnly) {
		t.Errorf("Discard: %v, want ErrReadOnly", err)
	}
	if err := f.WriteZeroes(0, 512, false); !errors.Is(err, block.ErrReadOnly) {
		t.Errorf("WriteZeroes: %v, want ErrReadOnly", err)
	}
	if err := f.Resize(0); !errors.Is(err, block.ErrReadOnly) {
		t.Errorf("Resize: %v, want ErrReadOnly", err)
	}
}

func allocated(t *testing.T, path string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// TestSparse checks that Discard and unmapping WriteZeroes really free
// host storage, and that zeroing without unmap does not read back data.
func TestSparse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.raw")
	const size = 8 << 20
	f, err := Create(path, size, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xaa}, size), 0); err != nil {
		t.Fatal(err)
	}
	f.Flush()
	full := allocated(t, path)
	if full < size {
		t.Skipf("file system did not allocate the written data (%d bytes)", full)
	}
	if err := f.Discard(0, 4<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.WriteZeroes(4<<20, 2<<20, true); err != nil {
		t.Fatal(err)
	}
	if got := allocated(t, path); got > full-6<<20+64<<10 {
		t.Errorf("after discarding 6 MiB, %d of %d bytes still allocated", got, full)
	}
	if err := f.WriteZeroes(6<<20+5, 1000, false); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, size)
	if _, err := f.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	want := bytes.Repeat([]byte{0xaa}, size)
	clear(want[:6<<20])
	clear(want[6<<20+5 : 6<<20+1005])
	if !bytes.Equal(got, want) {
		t.Error("contents after discard/zeroing differ")
	}
	if fi, _ := os.Stat(path); fi.Size() != size {
		t.Errorf("file size changed to %d", fi.Size())
	}
}

func TestParseCacheMode(t *testing.T) {
	for m, n := range cacheNames {
		if got, err := ParseCacheMode(n); err != nil || got != m {
			t.Errorf("ParseCacheMode(%q) = %v, %v", n, got, err)
		}
	}
	if _, err := ParseCacheMode("fast"); err == nil {
		t.Error("ParseCacheMode accepted a bad name")
	}
}

func TestNotADisk(t *testing.T) {
	if _, err := Open(t.TempDir(), Options{ReadOnly: true}); err == nil {
		t.Error("Open of a directory succeeded")
	}
	if _, err := Open(filepath.Join(t.TempDir(), "missing"), Options{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open of a missing file: %v", err)
	}
}

// TestEmptyWrite: writing nothing succeeds (io.WriterAt), in every cache
// mode's path; it used to fail as a short write.
func TestEmptyWrite(t *testing.T) {
	f, err := Create(filepath.Join(t.TempDir(), "disk.raw"), 4096, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, off := range []int64{0, 100, 4096} {
		if n, err := f.WriteAt(nil, off); n != 0 || err != nil {
			t.Errorf("WriteAt(nil, %d) = %d, %v", off, n, err)
		}
		if n, err := f.WritevAt([][]byte{{}, {}}, off); n != 0 || err != nil {
			t.Errorf("WritevAt(two empty buffers, %d) = %d, %v", off, n, err)
		}
	}
	if n, err := f.WritevAt([][]byte{{}, []byte("x"), {}}, 7); n != 1 || err != nil {
		t.Errorf("WritevAt around empty buffers = %d, %v", n, err)
	}
}
