package balloon

import (
	"encoding/binary"
	"slices"

	"github.com/viovmm/vio/virtio"
)

// pageSpan is the pages [start, end), as page frame numbers.
type pageSpan struct{ start, end uint64 }

// pfnChunk is how many page numbers are read, sorted and merged at a time.
const pfnChunk = 1024

// readPFNs reads the little-endian 32-bit page frame numbers of an inflate
// or deflate request (its readable buffers, as one byte stream), at most
// MaxPFNsPerRequest of them, and appends to runs the runs of contiguous
// pages that lie in ram (sorted, non-overlapping page spans), each run
// inside one span so that it can be released in one call. Duplicates in
// a chunk are merged; numbers outside ram are skipped.
//
// n counts the numbers read, bad those outside ram or past the limit;
// malformed says the bytes were not a whole number of entries.
func readPFNs(b virtio.Buffers, ram []pageSpan, runs *[]pageSpan) (n, bad uint64, malformed bool) {
	total := b.Len()
	if total%4 != 0 {
		malformed = true
	}
	entries := uint64(total / 4)
	if entries > MaxPFNsPerRequest {
		bad += entries - MaxPFNsPerRequest
		entries = MaxPFNsPerRequest
	}
	n = entries
	var raw [pfnChunk * 4]byte
	pfns := make([]uint64, 0, pfnChunk)
	for off := uint64(0); off < entries; off += pfnChunk {
		k := min(entries-off, pfnChunk)
		buf := raw[:k*4]
		// The driver may change the buffer under us: what is read once
		// is what is used, and every number is checked below.
		if _, err := b.ReadAt(buf, int64(off*4)); err != nil {
			malformed = true
			break
		}
		pfns = pfns[:0]
		for i := range k {
			pfns = append(pfns, uint64(binary.LittleEndian.Uint32(buf[i*4:])))
		}
		bad += mergeRuns(pfns, ram, runs)
	}
	return n, bad, malformed
}

// mergeRuns sorts pfns and appends their runs inside ram to runs,
// returning how many numbers lie outside ram.
func mergeRuns(pfns []uint64, ram []pageSpan, runs *[]pageSpan) (bad uint64) {
	slices.Sort(pfns)
	span := 0 // ram spans are sorted, and so are pfns: walk both once
	for i := 0; i < len(pfns); {
		p := pfns[i]
		for span < len(ram) && ram[span].end <= p {
			span++
		}
		if span == len(ram) || p < ram[span].start {
			bad++
			i++
			continue
		}
		// Extend the run while the next number is the same page or the
		// next one, and still inside this span.
		end := p + 1
		i++
		for i < len(pfns) && pfns[i] <= end && pfns[i] < ram[span].end {
			end = max(end, pfns[i]+1)
			i++
		}
		*runs = append(*runs, pageSpan{p, end})
	}
	return bad
}

// Statistics tags (spec 5.5.6.3) and the names vio shows them under.
// Amounts of memory are in bytes; the rest are counts.
var statNames = [...]string{
	0:  "swap_in",
	1:  "swap_out",
	2:  "major_faults",
	3:  "minor_faults",
	4:  "free_memory",
	5:  "total_memory",
	6:  "available_memory",
	7:  "disk_caches",
	8:  "hugetlb_allocations",
	9:  "hugetlb_failures",
	10: "oom_kills",
	11: "alloc_stalls",
	12: "async_scans",
	13: "direct_scans",
	14: "async_reclaims",
	15: "direct_reclaims",
}

// statSize is one struct virtio_balloon_stat: le16 tag, le64 val, packed.
const statSize = 10

// maxStats bounds the entries read from one statistics buffer; a driver
// sends one per tag it knows.
const maxStats = 64

// parseStats reads a statistics buffer. Unknown tags are skipped (a newer
// driver knows more); a later entry for a tag wins. malformed says the
// buffer was not a whole number of entries, or had more than maxStats.
func parseStats(b virtio.Buffers) (got map[string]uint64, malformed bool) {
	total := b.Len()
	if total%statSize != 0 || total/statSize > maxStats {
		malformed = true
	}
	k := min(total/statSize, maxStats)
	buf := make([]byte, k*statSize)
	if _, err := b.ReadAt(buf, 0); err != nil {
		return nil, true
	}
	got = map[string]uint64{}
	for i := int64(0); i < k; i++ {
		e := buf[i*statSize:]
		tag := binary.LittleEndian.Uint16(e)
		if int(tag) < len(statNames) {
			got[statNames[tag]] = binary.LittleEndian.Uint64(e[2:])
		}
	}
	return got, malformed
}
