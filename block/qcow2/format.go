package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// On-disk constants of the qcow2 format (docs/interop/qcow2.txt in QEMU).
const (
	magic = 0x514649fb // "QFI\xfb"

	minClusterBits = 9
	maxClusterBits = 21

	v2HeaderLen = 72
	v3HeaderLen = 104
	// The header qemu-img 7.2 writes: v3 fields, the compression type
	// byte and padding to 8.
	headerLenWritten = 112

	maxBackingName = 1023
	// Limits QEMU also enforces, which bound every allocation made from a
	// header field.
	maxL1Bytes        = 32 << 20
	maxRefTableBytes  = 8 << 20
	maxSnapshots      = 65536
	maxSnapTableBytes = 64 << 20
	maxSnapExtra      = 1024
	maxVirtualSize    = 1 << 61

	// Incompatible feature bits.
	incompatDirty      = 1 << 0
	incompatCorrupt    = 1 << 1
	incompatDataFile   = 1 << 2
	incompatCompressed = 1 << 3
	incompatExtL2      = 1 << 4
	knownIncompat      = incompatDirty | incompatCorrupt | incompatDataFile | incompatCompressed | incompatExtL2

	compatLazyRefcounts = 1 << 0

	// Header extension types.
	extEnd           = 0x00000000
	extBackingFormat = 0xe2792aca
	extFeatureTable  = 0x6803f857
	extBitmaps       = 0x23852875
	extCrypto        = 0x0537be77
	extDataFile      = 0x44415441

	// L1/L2 entry bits.
	oflagCopied     = 1 << 63
	oflagCompressed = 1 << 62
	oflagZero       = 1 << 0
	l1OffsetMask    = 0x00fffffffffffe00
	l2OffsetMask    = 0x00fffffffffffe00
	l1Reserved      = 0x7f000000000001ff
	l2Reserved      = 0x3f000000000001fe // standard cluster, v3
)

// ErrCorrupt is matched by every error that reports an inconsistent image.
var ErrCorrupt = errors.New("qcow2: image is corrupt")

// ErrUnsupported is matched by errors about valid images using features
// this implementation does not have.
var ErrUnsupported = errors.New("qcow2: unsupported feature")

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

// header is the decoded fixed header plus its extensions.
type header struct {
	version          uint32
	backingOffset    uint64
	backingSize      uint32
	clusterBits      uint32
	size             uint64
	cryptMethod      uint32
	l1Size           uint32
	l1Offset         uint64
	refTableOffset   uint64
	refTableClusters uint32
	nbSnapshots      uint32
	snapshotsOffset  uint64
	incompatible     uint64
	compatible       uint64
	autoclear        uint64
	refcountOrder    uint32
	headerLength     uint32
	compressionType  uint8

	backingFile   string
	backingFormat string
	features      []featureName
	// unknown extensions, kept to be written back unchanged
	extra []extension
}

type featureName struct {
	kind, bit uint8
	name      string
}

type extension struct {
	typ  uint32
	data []byte
}

// parseHeader decodes and validates the header found in the first cluster
// of an image. fileSize bounds every offset. buf holds at least the first
// cluster, or the whole file if that is shorter.
func parseHeader(buf []byte, fileSize int64) (*header, error) {
	if len(buf) < v2HeaderLen {
		return nil, corrupt("file too short for a header (%d bytes)", len(buf))
	}
	be := binary.BigEndian
	if be.Uint32(buf) != magic {
		return nil, errors.New("qcow2: not a qcow2 image (bad magic)")
	}
	h := &header{
		version:          be.Uint32(buf[4:]),
		backingOffset:    be.Uint64(buf[8:]),
		backingSize:      be.Uint32(buf[16:]),
		clusterBits:      be.Uint32(buf[20:]),
		size:             be.Uint64(buf[24:]),
		cryptMethod:      be.Uint32(buf[32:]),
		l1Size:           be.Uint32(buf[36:]),
		l1Offset:         be.Uint64(buf[40:]),
		refTableOffset:   be.Uint64(buf[48:]),
		refTableClusters: be.Uint32(buf[56:]),
		nbSnapshots:      be.Uint32(buf[60:]),
		snapshotsOffset:  be.Uint64(buf[64:]),
		refcountOrder:    4,
		headerLength:     v2HeaderLen,
	}
	switch h.version {
	case 2:
	case 3:
		if len(buf) < v3HeaderLen {
			return nil, corrupt("file too short for a version 3 header")
		}
		h.incompatible = be.Uint64(buf[72:])
		h.compatible = be.Uint64(buf[80:])
		h.autoclear = be.Uint64(buf[88:])
		h.refcountOrder = be.Uint32(buf[96:])
		h.headerLength = be.Uint32(buf[100:])
	default:
		return nil, fmt.Errorf("%w: qcow2 version %d", ErrUnsupported, h.version)
	}
	if h.clusterBits < minClusterBits || h.clusterBits > maxClusterBits {
		return nil, corrupt("cluster bits %d out of range %d..%d", h.clusterBits, minClusterBits, maxClusterBits)
	}
	cs := uint64(1) << h.clusterBits
	if uint64(len(buf)) < min(cs, uint64(fileSize)) {
		return nil, fmt.Errorf("qcow2: internal error: header buffer of %d bytes", len(buf))
	}
	if h.version == 3 {
		if h.headerLength < v3HeaderLen || uint64(h.headerLength) > cs || h.headerLength%8 != 0 ||
			int(h.headerLength) > len(buf) {
			return nil, corrupt("header length %d invalid", h.headerLength)
		}
		if h.headerLength > v3HeaderLen {
			h.compressionType = buf[104]
		}
	}
	if h.refcountOrder > 6 {
		return nil, corrupt("refcount order %d > 6", h.refcountOrder)
	}
	if h.cryptMethod != 0 {
		return nil, fmt.Errorf("%w: encryption (method %d)", ErrUnsupported, h.cryptMethod)
	}
	if u := h.incompatible &^ knownIncompat; u != 0 {
		return nil, fmt.Errorf("%w: unknown incompatible feature bits %#x", ErrUnsupported, u)
	}
	if h.incompatible&incompatDataFile != 0 {
		return nil, fmt.Errorf("%w: external data file", ErrUnsupported)
	}
	if h.incompatible&incompatExtL2 != 0 {
		return nil, fmt.Errorf("%w: extended L2 entries (subclusters)", ErrUnsupported)
	}
	if (h.incompatible&incompatCompressed != 0) != (h.compressionType != 0) {
		return nil, corrupt("compression type %d disagrees with the feature bit", h.compressionType)
	}
	if h.compressionType > 1 {
		return nil, fmt.Errorf("%w: compression type %d", ErrUnsupported, h.compressionType)
	}
	if h.size > maxVirtualSize {
		return nil, corrupt("virtual size %d too large", h.size)
	}
	// Tables must be cluster aligned and lie within the file, and their
	// sizes are bounded before anything is allocated for them.
	inFile := func(what string, off, n uint64) error {
		if off%cs != 0 {
			return corrupt("%s offset %#x not cluster aligned", what, off)
		}
		if n > 0 && (off == 0 || off > uint64(fileSize) || n > uint64(fileSize)-off) {
			return corrupt("%s (%d bytes at %#x) is outside the file (%d bytes)", what, n, off, fileSize)
		}
		return nil
	}
	if uint64(h.l1Size)*8 > maxL1Bytes {
		return nil, corrupt("L1 table of %d entries is too large", h.l1Size)
	}
	if need := l1Needed(h.size, h.clusterBits); uint64(h.l1Size) < need {
		return nil, corrupt("L1 table of %d entries too small for %d bytes (need %d)", h.l1Size, h.size, need)
	}
	if err := inFile("L1 table", h.l1Offset, uint64(h.l1Size)*8); err != nil {
		return nil, err
	}
	if h.refTableClusters == 0 || uint64(h.refTableClusters)*cs > maxRefTableBytes {
		return nil, corrupt("refcount table of %d clusters", h.refTableClusters)
	}
	if err := inFile("refcount table", h.refTableOffset, uint64(h.refTableClusters)*cs); err != nil {
		return nil, err
	}
	if h.nbSnapshots > maxSnapshots {
		return nil, corrupt("%d snapshots", h.nbSnapshots)
	}
	if h.nbSnapshots > 0 {
		if err := inFile("snapshot table", h.snapshotsOffset, uint64(h.nbSnapshots)*40); err != nil {
			return nil, err
		}
	}
	if h.backingOffset != 0 {
		if h.backingSize > maxBackingName || h.backingOffset > cs || uint64(h.backingSize) > cs-h.backingOffset ||
			h.backingOffset+uint64(h.backingSize) > uint64(len(buf)) {
			return nil, corrupt("backing file name (%d bytes at %d) invalid", h.backingSize, h.backingOffset)
		}
		h.backingFile = string(buf[h.backingOffset : h.backingOffset+uint64(h.backingSize)])
	}
	if err := h.parseExtensions(buf); err != nil {
		return nil, err
	}
	return h, nil
}

// l1Needed returns the number of L1 entries that map size bytes.
func l1Needed(size uint64, clusterBits uint32) uint64 {
	perL2 := uint64(1) << (clusterBits - 3)
	span := perL2 << clusterBits
	return (size + span - 1) / span
}

func (h *header) parseExtensions(buf []byte) error {
	be := binary.BigEndian
	off := uint64(h.headerLength)
	end := uint64(len(buf))
	if h.backingOffset != 0 {
		end = min(end, h.backingOffset)
	}
	for off+8 <= end {
		typ := be.Uint32(buf[off:])
		n := uint64(be.Uint32(buf[off+4:]))
		off += 8
		if typ == extEnd {
			return nil
		}
		if n > end-off {
			return corrupt("header extension %#x of %d bytes overruns the header", typ, n)
		}
		data := buf[off : off+n]
		switch typ {
		case extBackingFormat:
			h.backingFormat = string(data)
		case extFeatureTable:
			for i := 0; i+48 <= len(data); i += 48 {
				name := data[i+2 : i+48]
				for j, c := range name {
					if c == 0 {
						name = name[:j]
						break
					}
				}
				h.features = append(h.features, featureName{data[i], data[i+1], string(name)})
			}
		case extCrypto:
			return fmt.Errorf("%w: encryption header", ErrUnsupported)
		case extDataFile:
			return fmt.Errorf("%w: external data file", ErrUnsupported)
		default:
			h.extra = append(h.extra, extension{typ, append([]byte(nil), data...)})
		}
		off += (n + 7) &^ 7
	}
	if h.version == 3 {
		return corrupt("header extensions have no end marker")
	}
	return nil // v2 images may end the header area without an end marker
}

// featureTable is the feature name table this implementation writes, so
// that tools can name the bits.
var featureTable = []featureName{
	{0, 0, "dirty bit"}, {0, 1, "corrupt bit"}, {0, 2, "external data file"},
	{0, 3, "compression type"}, {0, 4, "extended L2 entries"},
	{1, 0, "lazy refcounts"}, {2, 0, "bitmaps"}, {2, 1, "raw external data"},
}

// encode renders the header and its extensions into one cluster-sized
// buffer. The backing file name is placed after the extensions.
func (h *header) encode(cs int) ([]byte, error) {
	buf := make([]byte, cs)
	be := binary.BigEndian
	be.PutUint32(buf, magic)
	be.PutUint32(buf[4:], h.version)
	be.PutUint32(buf[16:], uint32(len(h.backingFile)))
	be.PutUint32(buf[20:], h.clusterBits)
	be.PutUint64(buf[24:], h.size)
	be.PutUint32(buf[32:], h.cryptMethod)
	be.PutUint32(buf[36:], h.l1Size)
	be.PutUint64(buf[40:], h.l1Offset)
	be.PutUint64(buf[48:], h.refTableOffset)
	be.PutUint32(buf[56:], h.refTableClusters)
	be.PutUint32(buf[60:], h.nbSnapshots)
	be.PutUint64(buf[64:], h.snapshotsOffset)
	off := v2HeaderLen
	if h.version >= 3 {
		be.PutUint64(buf[72:], h.incompatible)
		be.PutUint64(buf[80:], h.compatible)
		be.PutUint64(buf[88:], h.autoclear)
		be.PutUint32(buf[96:], h.refcountOrder)
		hl := max(h.headerLength, headerLenWritten)
		be.PutUint32(buf[100:], hl)
		buf[104] = h.compressionType
		off = int(hl)
	}
	put := func(typ uint32, data []byte) error {
		if off+8+len(data)+8 > cs {
			return fmt.Errorf("qcow2: header extensions do not fit in a cluster")
		}
		be.PutUint32(buf[off:], typ)
		be.PutUint32(buf[off+4:], uint32(len(data)))
		copy(buf[off+8:], data)
		off += 8 + (len(data)+7)&^7
		return nil
	}
	if h.backingFormat != "" {
		if err := put(extBackingFormat, []byte(h.backingFormat)); err != nil {
			return nil, err
		}
	}
	// The feature name table is optional; small clusters leave no room.
	if h.version >= 3 && off+8+48*len(featureTable)+8+len(h.backingFile)+len(h.backingFormat)+16 <= cs {
		ft := make([]byte, 48*len(featureTable))
		for i, f := range featureTable {
			ft[i*48], ft[i*48+1] = f.kind, f.bit
			copy(ft[i*48+2:i*48+48], f.name)
		}
		if err := put(extFeatureTable, ft); err != nil {
			return nil, err
		}
	}
	for _, e := range h.extra {
		if err := put(e.typ, e.data); err != nil {
			return nil, err
		}
	}
	if h.version >= 3 {
		if err := put(extEnd, nil); err != nil {
			return nil, err
		}
	}
	if h.backingFile != "" {
		if len(h.backingFile) > maxBackingName || off+len(h.backingFile) > cs {
			return nil, fmt.Errorf("qcow2: backing file name too long")
		}
		be.PutUint64(buf[8:], uint64(off))
		copy(buf[off:], h.backingFile)
		off += len(h.backingFile)
	}
	return buf[:(off+511)&^511], nil
}

// snapshot is one entry of the snapshot table.
type snapshot struct {
	l1Offset   uint64
	l1Size     uint32
	id, name   string
	dateSec    uint32
	dateNsec   uint32
	vmClockNs  uint64
	vmState    uint64 // size of saved VM state (we never write any)
	diskSize   uint64 // virtual size when taken; 0 if unknown (v2)
	icount     uint64
	hasIcount  bool
	extraTail  []byte // extra data beyond what we understand, kept
	vmStateLow uint32
}

// parseSnapshots decodes n snapshot entries from buf (the bytes from the
// table's offset to, at most, the bounded table size).
func parseSnapshots(buf []byte, n int, clusterBits uint32, fileSize int64, version uint32) ([]snapshot, int, error) {
	be := binary.BigEndian
	cs := uint64(1) << clusterBits
	var out []snapshot
	off := 0
	for i := 0; i < n; i++ {
		if off+40 > len(buf) {
			return nil, 0, corrupt("snapshot table truncated at entry %d", i)
		}
		e := buf[off:]
		s := snapshot{
			l1Offset:   be.Uint64(e),
			l1Size:     be.Uint32(e[8:]),
			dateSec:    be.Uint32(e[16:]),
			dateNsec:   be.Uint32(e[20:]),
			vmClockNs:  be.Uint64(e[24:]),
			vmStateLow: be.Uint32(e[32:]),
		}
		idLen := int(be.Uint16(e[12:]))
		nameLen := int(be.Uint16(e[14:]))
		extra := int(be.Uint32(e[36:]))
		if extra > maxSnapExtra {
			return nil, 0, corrupt("snapshot %d has %d bytes of extra data", i, extra)
		}
		size := 40 + extra + idLen + nameLen
		if off+size > len(buf) {
			return nil, 0, corrupt("snapshot table truncated at entry %d", i)
		}
		x := e[40 : 40+extra]
		s.vmState = uint64(s.vmStateLow)
		if len(x) >= 8 {
			s.vmState = be.Uint64(x)
		}
		if len(x) >= 16 {
			s.diskSize = be.Uint64(x[8:])
		} else if version >= 3 {
			return nil, 0, corrupt("snapshot %d lacks the extra data version 3 requires", i)
		}
		if len(x) >= 24 {
			s.icount = be.Uint64(x[16:])
			s.hasIcount = true
		}
		if len(x) > 24 {
			s.extraTail = append([]byte(nil), x[24:]...)
		}
		s.id = string(e[40+extra : 40+extra+idLen])
		s.name = string(e[40+extra+idLen : size])
		if s.l1Offset%cs != 0 || uint64(s.l1Size)*8 > maxL1Bytes ||
			(s.l1Size > 0 && (s.l1Offset == 0 || s.l1Offset > uint64(fileSize) || uint64(s.l1Size)*8 > uint64(fileSize)-s.l1Offset)) {
			return nil, 0, corrupt("snapshot %q has an invalid L1 table (%d entries at %#x)", s.name, s.l1Size, s.l1Offset)
		}
		out = append(out, s)
		off += (size + 7) &^ 7
	}
	return out, off, nil
}

func encodeSnapshots(snaps []snapshot) []byte {
	be := binary.BigEndian
	var buf []byte
	for _, s := range snaps {
		extra := make([]byte, 16, 24+len(s.extraTail))
		be.PutUint64(extra, s.vmState)
		be.PutUint64(extra[8:], s.diskSize)
		if s.hasIcount || len(s.extraTail) > 0 {
			extra = be.AppendUint64(extra, s.icount)
			extra = append(extra, s.extraTail...)
		}
		e := make([]byte, 40)
		be.PutUint64(e, s.l1Offset)
		be.PutUint32(e[8:], s.l1Size)
		be.PutUint16(e[12:], uint16(len(s.id)))
		be.PutUint16(e[14:], uint16(len(s.name)))
		be.PutUint32(e[16:], s.dateSec)
		be.PutUint32(e[20:], s.dateNsec)
		be.PutUint64(e[24:], s.vmClockNs)
		be.PutUint32(e[32:], uint32(min(s.vmState, 1<<32-1)))
		be.PutUint32(e[36:], uint32(len(extra)))
		e = append(e, extra...)
		e = append(e, s.id...)
		e = append(e, s.name...)
		for len(e)%8 != 0 {
			e = append(e, 0)
		}
		buf = append(buf, e...)
	}
	return buf
}
