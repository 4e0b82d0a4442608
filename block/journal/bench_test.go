package journal

import (
	"path/filepath"
	"strconv"
	"testing"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/raw"
)

const benchSize = 256 << 20

// BenchmarkWrite compares 64 KiB random-offset writes with a flush every
// 16 writes, on a raw file and on a journal over the same kind of file
// (the journal's flush syncs twice).
func BenchmarkWrite(b *testing.B) {
	for _, journalled := range []bool{false, true} {
		b.Run(map[bool]string{false: "raw", true: "journal"}[journalled], func(b *testing.B) {
			dir := b.TempDir()
			f, err := raw.Create(filepath.Join(dir, "base.img"), benchSize, raw.Options{})
			if err != nil {
				b.Fatal(err)
			}
			var d block.Backend = f
			if journalled {
				if d, err = Open(f, filepath.Join(dir, "j.log"), Options{}); err != nil {
					b.Fatal(err)
				}
			}
			defer d.Close()
			p := make([]byte, 64<<10)
			b.SetBytes(int64(len(p)))
			for i := 0; b.Loop(); i++ {
				off := int64((i*7919)%(benchSize/len(p))) * int64(len(p))
				if _, err := d.WriteAt(p, off); err != nil {
					b.Fatal(err)
				}
				if i%16 == 15 {
					if err := d.Flush(); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// BenchmarkRevert measures a revert (an index rebuild from the log's
// headers) on a log of 64 MiB in 4 KiB writes over 64 points.
func BenchmarkRevert(b *testing.B) {
	dir := b.TempDir()
	f, err := raw.Create(filepath.Join(dir, "base.img"), benchSize, raw.Options{})
	if err != nil {
		b.Fatal(err)
	}
	j, err := OpenJournal(f, filepath.Join(dir, "j.log"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	p := make([]byte, 4096)
	for i := 0; i < 16384; i++ {
		j.WriteAt(p, int64((i*7919)%(benchSize/4096))*4096)
		if i%256 == 255 {
			j.Flush()
		}
	}
	st, _ := j.List()
	b.Logf("log %d MiB, %d points, %d index extents", st.LogBytes>>20, len(st.Points), j.idx.count)
	for i := 0; b.Loop(); i++ {
		target := st.Points[1+i%2*(len(st.Points)-2)].ID
		if err := j.Revert(strconv.FormatUint(target, 10)); err != nil {
			b.Fatal(err)
		}
	}
}
