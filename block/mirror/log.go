package mirror

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// The dirty-region log is a small file beside the children:
//
//	page 0         header (below), the rest of the page zero
//	pages 1..      W: write-intent bitmap, one bit per region, LSB first,
//	               padded to whole pages: regions a write may have been
//	               in flight to since the last flush all children passed
//	then           D: degraded bitmap, same size: regions written while
//	               a child was out (failed, or not yet copied to a new one)
//
// Header (little-endian):
//
//	0   8  magic "VIOMLOG\x01"
//	8   4  version (1)
//	12  4  slots recorded (1..MaxSlots)
//	16  8  region size in bytes (a power of two)
//	24  8  disk size in bytes
//	32  8  slot states, one byte each (0 absent, 1 in sync, 2 stale)
//	40  4  CRC-32C of bytes 0..40
//
// A bit is set, and the file synced, before the write it covers is issued
// to any child; W bits are cleared after a flush that every child passed,
// D bits as a rebuild makes them durable on the child that lacked them.
// So after a crash, W ∪ D (for a stale child) or W (among in-sync
// children) is a superset of the regions the children may disagree on.
const (
	logMagic   = "VIOMLOG\x01"
	logVersion = 1
	pageSize   = 4096
	headerLen  = 44
)

// Slot states as the log records them.
const (
	slotAbsent = 0
	slotInSync = 1
	slotStale  = 2
)

// Bounds on what a log (and a mirror) may describe.
const (
	MaxSlots      = 8
	MinRegion     = 4096
	MaxRegion     = 1 << 30
	DefaultRegion = 1 << 20
	// MaxRegions bounds one bitmap to 32 MiB (a 256 TiB disk at 1 MiB).
	MaxRegions = 1 << 28
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// logState is what a log file holds.
type logState struct {
	region, size int64
	slots        []uint8
	w, d         bitmap
}

func regionsOf(size, region int64) int64 { return (size + region - 1) / region }

// bitmapPages is how many pages one bitmap of n regions takes.
func bitmapPages(n int64) int64 { return (n + pageSize*8 - 1) / (pageSize * 8) }

// logLen is the file length of a log for n regions.
func logLen(n int64) int64 { return pageSize * (1 + 2*bitmapPages(n)) }

// checkGeometry says what is wrong with a region size for a disk size.
func checkGeometry(size, region int64) error {
	if region < MinRegion || region > MaxRegion || region&(region-1) != 0 {
		return fmt.Errorf("region size %d: want a power of two from %d to %d bytes", region, MinRegion, MaxRegion)
	}
	if size <= 0 || size > 1<<62 {
		return fmt.Errorf("disk size %d is out of range", size)
	}
	if regionsOf(size, region) > MaxRegions {
		return fmt.Errorf("a %d-byte disk has more than %d regions of %d bytes: choose a larger region", size, MaxRegions, region)
	}
	return nil
}

func (s *logState) header() []byte {
	h := make([]byte, pageSize)
	copy(h, logMagic)
	binary.LittleEndian.PutUint32(h[8:], logVersion)
	binary.LittleEndian.PutUint32(h[12:], uint32(len(s.slots)))
	binary.LittleEndian.PutUint64(h[16:], uint64(s.region))
	binary.LittleEndian.PutUint64(h[24:], uint64(s.size))
	copy(h[32:40], s.slots)
	binary.LittleEndian.PutUint32(h[40:], crc32.Checksum(h[:40], castagnoli))
	return h
}

// parseHeader checks a log's first page and returns its geometry and slots.
func parseHeader(h []byte) (*logState, error) {
	if len(h) < pageSize {
		return nil, fmt.Errorf("the file is %d bytes, shorter than a log header", len(h))
	}
	if string(h[:8]) != logMagic {
		return nil, errors.New("not a vio mirror log (bad magic)")
	}
	if crc32.Checksum(h[:40], castagnoli) != binary.LittleEndian.Uint32(h[40:]) {
		return nil, errors.New("the header's checksum does not match (a torn or damaged log)")
	}
	if v := binary.LittleEndian.Uint32(h[8:]); v != logVersion {
		return nil, fmt.Errorf("log version %d: this vio reads version %d", v, logVersion)
	}
	n := binary.LittleEndian.Uint32(h[12:])
	if n == 0 || n > MaxSlots {
		return nil, fmt.Errorf("the log records %d children: want 1 to %d", n, MaxSlots)
	}
	region := binary.LittleEndian.Uint64(h[16:])
	size := binary.LittleEndian.Uint64(h[24:])
	if region > 1<<62 || size > 1<<62 {
		return nil, errors.New("the log's sizes are out of range")
	}
	s := &logState{region: int64(region), size: int64(size), slots: append([]uint8(nil), h[32:32+n]...)}
	if err := checkGeometry(s.size, s.region); err != nil {
		return nil, err
	}
	for i, st := range s.slots {
		if st > slotStale {
			return nil, fmt.Errorf("child %d has state %d: want 0, 1 or 2", i, st)
		}
	}
	for _, b := range h[32+n : 40] {
		if b != 0 {
			return nil, errors.New("the header's unused slot bytes are not zero")
		}
	}
	return s, nil
}

// parseLog decodes a whole log file. It is what a file on disk reaches, so
// every field is checked before it sizes anything.
func parseLog(data []byte) (*logState, error) {
	s, err := parseHeader(data)
	if err != nil {
		return nil, err
	}
	n := regionsOf(s.size, s.region)
	if want := logLen(n); int64(len(data)) != want {
		return nil, fmt.Errorf("the file is %d bytes, but a log of %d regions is %d", len(data), n, want)
	}
	bp := bitmapPages(n) * pageSize
	s.w = decodeBitmap(data[pageSize:pageSize+bp], n)
	s.d = decodeBitmap(data[pageSize+bp:], n)
	return s, nil
}

// decodeBitmap reads n bits; bits beyond n are ignored.
func decodeBitmap(p []byte, n int64) bitmap {
	b := newBitmap(n)
	for i := range b {
		b[i] = binary.LittleEndian.Uint64(p[i*8:])
	}
	if r := n % 64; r != 0 {
		b[len(b)-1] &= 1<<r - 1
	}
	return b
}

// logFile is an open log: the state in memory is the mirror's; the file
// follows it page by page.
type logFile struct {
	f  *os.File
	wp int64 // pages per bitmap
}

// readLogFile opens path, returning the file (nil when it does not exist
// yet and readOnly is set) and its parsed state (nil for a new, empty file).
func openLogFile(path string, readOnly bool) (*os.File, *logState, error) {
	flag := os.O_RDWR | os.O_CREATE
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag|unix.O_CLOEXEC, 0o600)
	if err != nil {
		if readOnly && errors.Is(err, os.ErrNotExist) {
			return nil, nil, nil
		}
		return nil, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, nil, fmt.Errorf("%s is not a regular file", path)
	}
	if st.Size() == 0 {
		return f, nil, nil
	}
	// The header bounds the file's length before the file is read whole.
	h := make([]byte, pageSize)
	if _, err := io.ReadFull(io.NewSectionReader(f, 0, pageSize), h); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w", path, errors.Join(errors.New("reading the header"), err))
	}
	hs, err := parseHeader(h)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	if want := logLen(regionsOf(hs.size, hs.region)); st.Size() != want {
		f.Close()
		return nil, nil, fmt.Errorf("%s: the file is %d bytes, but its header describes %d", path, st.Size(), want)
	}
	data := make([]byte, st.Size())
	if _, err := f.ReadAt(data, 0); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	s, err := parseLog(data)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, s, nil
}

// encodePage returns page p of the file for state s.
func (s *logState) encodePage(p int64) []byte {
	if p == 0 {
		return s.header()
	}
	wp := bitmapPages(regionsOf(s.size, s.region))
	b := s.w
	if p > wp {
		b = s.d
		p -= wp
	}
	out := make([]byte, pageSize)
	first := (p - 1) * pageSize / 8
	for i := int64(0); i < pageSize/8 && first+i < int64(len(b)); i++ {
		binary.LittleEndian.PutUint64(out[i*8:], b[first+i])
	}
	return out
}

// encode returns the whole file for s (a new log, and the tests).
func (s *logState) encode() []byte {
	var buf bytes.Buffer
	n := logLen(regionsOf(s.size, s.region)) / pageSize
	for p := range n {
		buf.Write(s.encodePage(p))
	}
	return buf.Bytes()
}

// page numbers of W's and D's bit i.
func wPage(i int64) int64           { return 1 + i/(pageSize*8) }
func dPage(i int64, wp int64) int64 { return 1 + wp + i/(pageSize*8) }
