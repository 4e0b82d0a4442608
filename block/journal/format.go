package journal

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// The log file: a 64-byte header, then records back to back. Every record
// is a 56-byte header (checksummed) and a payload (checksummed
// separately): write data, or a point's name. All integers are
// little-endian.
//
//	header: "VIOJRNL1" | version u32 | flags u32 | base size u64 |
//	        base point id u64 | first segment id u64 | reserved | crc u32
//	record: magic u32 | type u8 | 3 pad | seq u64 | a u64 | b u64 | c u64 |
//	        payload length u32 | payload crc u32 | header crc u32 | pad u32
//
// seq numbers the records from 1 with no gap, so a record left over from
// an earlier, longer incarnation of the file never passes for a new one.
const (
	headerSize    = 64
	recHeaderSize = 56
	version       = 1
	recMagic      = 0x4a524543 // "CERJ"
	// maxData bounds one write record's payload; larger writes are split.
	maxData = 1 << 20
	// maxName bounds a point's name.
	maxName = 64
)

var fileMagic = [8]byte{'V', 'I', 'O', 'J', 'R', 'N', 'L', '1'}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Record types and what a, b, c and the payload mean for each.
const (
	recWrite       = 1 // a: segment, b: disk offset; payload: the data
	recZero        = 2 // a: segment, b: disk offset, c: length (write zeroes, discard)
	recPoint       = 3 // a: segment it closes, b: time (Unix ns), c: next segment; payload: name or empty
	recName        = 4 // a: point id; payload: name
	recRevert      = 5 // a: target point id, c: next segment
	recDrop        = 6 // a: point id (merged into its successor)
	recCommitBegin = 7 // a: point id about to be copied into the base
	recCommitDone  = 8 // a: point id now in the base
)

// header is the log file's header.
type header struct {
	baseSize int64
	baseID   uint64 // id of the point the base holds
	firstSeg uint64 // the segment the first write belongs to
}

func (h header) encode() []byte {
	b := make([]byte, headerSize)
	copy(b, fileMagic[:])
	binary.LittleEndian.PutUint32(b[8:], version)
	binary.LittleEndian.PutUint64(b[16:], uint64(h.baseSize))
	binary.LittleEndian.PutUint64(b[24:], h.baseID)
	binary.LittleEndian.PutUint64(b[32:], h.firstSeg)
	binary.LittleEndian.PutUint32(b[60:], crc32.Checksum(b[:60], castagnoli))
	return b
}

// errFormat marks a log file that is not a journal or is damaged beyond
// its tail.
var errFormat = errors.New("not a valid journal log")

func decodeHeader(b []byte) (header, error) {
	if len(b) < headerSize || [8]byte(b[:8]) != fileMagic {
		return header{}, fmt.Errorf("%w: no journal header", errFormat)
	}
	if crc32.Checksum(b[:60], castagnoli) != binary.LittleEndian.Uint32(b[60:]) {
		return header{}, fmt.Errorf("%w: header checksum mismatch", errFormat)
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != version {
		return header{}, fmt.Errorf("%w: version %d (this vio reads version %d)", errFormat, v, version)
	}
	h := header{
		baseSize: int64(binary.LittleEndian.Uint64(b[16:])),
		baseID:   binary.LittleEndian.Uint64(b[24:]),
		firstSeg: binary.LittleEndian.Uint64(b[32:]),
	}
	// Ids grow by one a record from firstSeg: far below 2^62 they never
	// wrap.
	if h.baseSize < 0 || h.firstSeg <= h.baseID || h.firstSeg >= 1<<62 {
		return header{}, fmt.Errorf("%w: header fields out of range", errFormat)
	}
	return h, nil
}

// record is one record's header, and its payload when the scan read it.
type record struct {
	typ     uint8
	seq     uint64
	a, b, c uint64
	plen    uint32
	pcrc    uint32
	pos     int64  // file offset of the record
	payload []byte // names always; data only when verifying
}

func (r *record) size() int64 { return recHeaderSize + int64(r.plen) }

func (r *record) encodeHeader(b []byte) {
	binary.LittleEndian.PutUint32(b[0:], recMagic)
	b[4], b[5], b[6], b[7] = r.typ, 0, 0, 0
	binary.LittleEndian.PutUint64(b[8:], r.seq)
	binary.LittleEndian.PutUint64(b[16:], r.a)
	binary.LittleEndian.PutUint64(b[24:], r.b)
	binary.LittleEndian.PutUint64(b[32:], r.c)
	binary.LittleEndian.PutUint32(b[40:], r.plen)
	binary.LittleEndian.PutUint32(b[44:], r.pcrc)
	binary.LittleEndian.PutUint32(b[48:], crc32.Checksum(b[:48], castagnoli))
	binary.LittleEndian.PutUint32(b[52:], 0)
}

// decodeRecordHeader checks a record header's framing (magic, checksum,
// type, payload bound). The meaning is history.apply's to check.
func decodeRecordHeader(b []byte) (record, bool) {
	if binary.LittleEndian.Uint32(b[0:]) != recMagic ||
		crc32.Checksum(b[:48], castagnoli) != binary.LittleEndian.Uint32(b[48:]) {
		return record{}, false
	}
	r := record{
		typ:  b[4],
		seq:  binary.LittleEndian.Uint64(b[8:]),
		a:    binary.LittleEndian.Uint64(b[16:]),
		b:    binary.LittleEndian.Uint64(b[24:]),
		c:    binary.LittleEndian.Uint64(b[32:]),
		plen: binary.LittleEndian.Uint32(b[40:]),
		pcrc: binary.LittleEndian.Uint32(b[44:]),
	}
	if r.typ < recWrite || r.typ > recCommitDone {
		return record{}, false
	}
	switch r.typ {
	case recWrite:
		if r.plen == 0 || r.plen > maxData {
			return record{}, false
		}
	case recPoint, recName:
		if r.plen > maxName {
			return record{}, false
		}
	default:
		if r.plen != 0 {
			return record{}, false
		}
	}
	return r, true
}

// scanLog reads the records in [start, end) in order and calls fn for each
// framed one. With verify it reads and checks every payload, streaming;
// without, it reads only headers and names, skipping over data. It stops
// at the first record that is torn (short, checksum mismatch, sequence
// gap) and returns where the good records end and the next sequence
// number. An error from fn stops the scan and is returned.
func scanLog(r io.ReaderAt, start, end int64, firstSeq uint64, verify bool, fn func(*record) error) (goodEnd int64, nextSeq uint64, err error) {
	var br *bufio.Reader
	if verify {
		br = bufio.NewReaderSize(io.NewSectionReader(r, start, end-start), 1<<20)
	}
	// read fills p from the stream (verify) or from the file at off.
	read := func(p []byte, off int64) bool {
		if br != nil {
			_, err := io.ReadFull(br, p)
			return err == nil
		}
		n, err := r.ReadAt(p, off)
		return n == len(p) && (err == nil || err == io.EOF)
	}
	pos, seq := start, firstSeq
	var hb [recHeaderSize]byte
	for {
		if end-pos < recHeaderSize || !read(hb[:], pos) {
			return pos, seq, nil // end, or a torn header
		}
		rec, ok := decodeRecordHeader(hb[:])
		if !ok || rec.seq != seq || rec.size() > end-pos {
			return pos, seq, nil
		}
		rec.pos = pos
		if verify || rec.typ == recPoint || rec.typ == recName {
			rec.payload = make([]byte, rec.plen)
			if !read(rec.payload, pos+recHeaderSize) {
				return pos, seq, nil
			}
			if crc32.Checksum(rec.payload, castagnoli) != rec.pcrc {
				return pos, seq, nil
			}
		}
		if err := fn(&rec); err != nil {
			return pos, seq, err
		}
		pos += rec.size()
		seq++
	}
}

func crcOf(p []byte) uint32 { return crc32.Checksum(p, castagnoli) }
