package mirror

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
)

func seedLog(size, region int64, slots []uint8, bits ...int64) []byte {
	n := regionsOf(size, region)
	s := &logState{region: region, size: size, slots: slots, w: newBitmap(n), d: newBitmap(n)}
	for _, b := range bits {
		s.w.set(b % n)
		s.d.set((b * 7) % n)
	}
	return s.encode()
}

// FuzzLog feeds hostile log files to the parser and to a mirror opening
// them: every field is checked before it sizes anything, nothing panics,
// and a log that parses re-encodes to a log that parses the same.
func FuzzLog(f *testing.F) {
	good := seedLog(1<<20, 64<<10, []uint8{slotInSync, slotStale}, 1, 5, 15)
	f.Add(good)
	f.Add(good[:pageSize])
	f.Add(seedLog(1<<20, 4096, []uint8{slotStale, slotInSync, slotAbsent}, 0, 255))
	huge := append([]byte(nil), good[:pageSize]...)
	huge[16+7] = 0x10 // region 2^60
	f.Add(huge)
	f.Add([]byte("VIOMLOG\x01"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1<<20 {
			return
		}
		s, err := parseLog(data)
		if err == nil {
			again, err := parseLog(s.encode())
			if err != nil {
				t.Fatalf("a parsed log re-encodes to one that does not parse: %v", err)
			}
			if again.size != s.size || again.region != s.region || !bytes.Equal(again.slots, s.slots) ||
				!slicesEqual(again.w, s.w) || !slicesEqual(again.d, s.d) {
				t.Fatal("a parsed log re-encodes differently")
			}
		}
		// The same bytes as a mirror's log file.
		p := filepath.Join(dir, "log")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		size := int64(1 << 20)
		if s != nil && s.size <= 4<<20 {
			size = s.size
		}
		kids := []block.Backend{blocktest.NewMem(size), blocktest.NewMem(size)}
		m, err := New(kids, Options{Log: p})
		if err != nil {
			if s != nil && s.size == size {
				// A parsed log of the right size is refused only when it
				// names no child in sync.
				for _, st := range s.slots[:min(2, len(s.slots))] {
					if st == slotInSync {
						t.Fatalf("a valid log was refused: %v", err)
					}
				}
			}
			return
		}
		if _, err := m.WriteAt([]byte{1, 2, 3}, size-3); err != nil {
			t.Fatal(err)
		}
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
	})
}

func slicesEqual(a, b bitmap) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
