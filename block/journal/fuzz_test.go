package journal

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/viovmm/vio/block/blocktest"
)

// validLog returns the log of a short random run, as a seed.
func validLog(t testing.TB, seed uint64) []byte {
	dir, err := os.MkdirTemp("", "journal-seed")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "j.log")
	base := blocktest.NewMem(fuzzSize)
	j, err := OpenJournal(keepOpen{base}, path, Options{KeepPoints: 2})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 12; i++ {
		j.WriteAt(bytes.Repeat([]byte{byte(i)}, 700+int(seed)*10), int64(i*997)%fuzzSize)
		switch i % 4 {
		case 1:
			j.Flush()
		case 2:
			j.Mark("m" + string(rune('a'+i)))
		case 3:
			j.WriteZeroes(int64(i*100), 300, false)
			j.Revert("1")
		}
	}
	j.Close()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

const fuzzSize = 16 << 10

// FuzzLog opens a journal on a hostile log file: it must open or refuse
// with an error, never panic, and once open, read, list, mark, revert,
// compact and close without panicking.
func FuzzLog(f *testing.F) {
	f.Add(validLog(f, 1))
	f.Add(validLog(f, 2))
	f.Add([]byte("VIOJRNL1"))
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "j.log")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		j, err := OpenJournal(blocktest.NewMem(fuzzSize), path, Options{MaxExtents: 4096, noSync: true})
		if err != nil {
			return
		}
		buf := make([]byte, fuzzSize)
		if _, err := j.ReadAt(buf, 0); err != nil {
			t.Fatalf("read after a successful open: %v", err)
		}
		st, err := j.List()
		if err != nil {
			t.Fatal(err)
		}
		j.Mark("fz")
		if len(st.Points) > 1 {
			j.Revert("")
			j.Revert(strconv.FormatUint(st.Points[0].ID, 10))
		}
		if err := j.Compact(); err != nil {
			t.Fatalf("compacting a log that opened: %v", err)
		}
		j.Close()
	})
}
