package balloon

import (
	"encoding/binary"
	"testing"

	"github.com/viovmm/vio/virtio"
)

// FuzzGuestBuffers feeds what a guest puts in balloon requests — page
// number lists (inflate, deflate) and statistics buffers — split into
// descriptors at guest-chosen points. For page lists it checks that every
// run to release lies inside one RAM span, runs do not overlap, and
// every number read is either in a run or counted as bad.
func FuzzGuestBuffers(f *testing.F) {
	f.Add([]byte{1, 0, 0, 0, 2, 0, 0, 0, 0xff, 0xff, 0xff, 0xff}, uint8(3))
	f.Add(make([]byte, 10*6), uint8(0))
	f.Add([]byte{0xff, 0x03, 0, 0, 0x00, 0x04, 0, 0, 0x00, 0x10, 0, 0, 7}, uint8(5))
	ram := []pageSpan{{0, 1024}, {4096, 4096 + 512}}
	f.Fuzz(func(t *testing.T, data []byte, cut uint8) {
		// Up to two descriptors, cut at a guest-chosen point.
		var bufs virtio.Buffers
		if c := int(cut); c < len(data) {
			bufs = virtio.Buffers{data[:c], data[c:]}
		} else {
			bufs = virtio.Buffers{data}
		}
		var runs []pageSpan
		n, bad, malformed := readPFNs(bufs, ram, &runs)
		if want := uint64(len(data) / 4); n != min(want, MaxPFNsPerRequest) || malformed != (len(data)%4 != 0) {
			t.Fatalf("n=%d malformed=%v for %d bytes", n, malformed, len(data))
		}
		inRAM := map[uint64]bool{}
		for i := 0; i+4 <= len(data); i += 4 {
			p := uint64(binary.LittleEndian.Uint32(data[i:]))
			for _, s := range ram {
				if p >= s.start && p < s.end {
					inRAM[p] = true
				}
			}
		}
		var covered uint64
		for i, r := range runs {
			if r.start >= r.end {
				t.Fatalf("empty run %v", r)
			}
			inside := false
			for _, s := range ram {
				inside = inside || r.start >= s.start && r.end <= s.end
			}
			if !inside {
				t.Fatalf("run %v leaves guest RAM", r)
			}
			// Numbers are merged a chunk at a time: only within one chunk
			// must runs be disjoint (a page listed in two chunks is
			// released twice, which is harmless).
			for j := range i {
				if len(data) <= pfnChunk*4 && runs[j].start < r.end && r.start < runs[j].end {
					t.Fatalf("runs %v and %v overlap", runs[j], r)
				}
			}
			for p := r.start; p < r.end; p++ {
				if !inRAM[p] {
					t.Fatalf("run %v releases page %d, which was not listed", r, p)
				}
			}
			covered += r.end - r.start
		}
		if covered < uint64(len(inRAM)) || len(data) <= pfnChunk*4 && covered != uint64(len(inRAM)) {
			t.Fatalf("runs cover %d pages, %d distinct listed pages are RAM", covered, len(inRAM))
		}
		if bad > n {
			t.Fatalf("%d bad of %d", bad, n)
		}

		got, malformed := parseStats(bufs)
		if len(got) > len(statNames) {
			t.Fatalf("%d statistics from %d bytes", len(got), len(data))
		}
		if want := len(data)%statSize != 0 || len(data)/statSize > maxStats; malformed != want {
			t.Fatalf("stats malformed=%v for %d bytes", malformed, len(data))
		}
	})
}
