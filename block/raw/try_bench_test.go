package raw

import (
	"path/filepath"
	"testing"
)

// BenchmarkRead4K compares a 4 KiB read of cached data through ReadvAt
// (pread) and TryReadvAt (preadv2 with RWF_NOWAIT).
func BenchmarkRead4K(b *testing.B) {
	f, err := Create(filepath.Join(b.TempDir(), "disk.raw"), 16<<20, Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(make([]byte, 16<<20), 0); err != nil {
		b.Fatal(err)
	}
	buf := [][]byte{make([]byte, 4096)}
	b.Run("ReadvAt", func(b *testing.B) {
		b.SetBytes(4096)
		for i := 0; b.Loop(); i++ {
			if _, err := f.ReadvAt(buf, int64(i%4096)*4096); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("TryReadvAt", func(b *testing.B) {
		b.SetBytes(4096)
		for i := 0; b.Loop(); i++ {
			if _, err := f.TryReadvAt(buf, int64(i%4096)*4096); err != nil {
				b.Fatal(err)
			}
		}
	})
}
