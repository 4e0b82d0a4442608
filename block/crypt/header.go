package crypt

import (
	"bytes"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
)

// The LUKS2 binary header: 4096 bytes, followed by the JSON metadata area,
// hdrSize bytes in all. Two copies: the primary at offset 0, the secondary
// right after it (at hdrSize). Integers are big-endian.
const (
	binHeaderSize = 4096

	offMagic     = 0
	offVersion   = 6
	offHdrSize   = 8
	offSeqID     = 16
	offLabel     = 24
	offCsumAlg   = 72
	offSalt      = 104
	offUUID      = 168
	offSubsystem = 208
	offHdrOffset = 256
	offCsum      = 448

	labelLen   = 48
	csumAlgLen = 32
	saltLen    = 64
	uuidLen    = 40
	csumLen    = 64
)

var (
	magicPrimary   = []byte{'L', 'U', 'K', 'S', 0xba, 0xbe}
	magicSecondary = []byte{'S', 'K', 'U', 'L', 0xba, 0xbe}
)

// hdrSizes are the header sizes (binary header plus JSON area) LUKS2
// allows; the secondary header sits at one of them.
var hdrSizes = []int64{16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20, 2 << 20, 4 << 20}

func validHdrSize(n uint64) bool {
	for _, s := range hdrSizes {
		if uint64(s) == n {
			return true
		}
	}
	return false
}

// ErrNotLUKS is returned when neither header copy carries the LUKS2 magic.
var ErrNotLUKS = errors.New("crypt: not a LUKS2 image (no LUKS2 header at offset 0 or in a secondary header position)")

// ErrCorrupt is wrapped by every error about a header that is present but
// malformed or fails its checksum.
var ErrCorrupt = errors.New("crypt: corrupt LUKS2 header")

// header is one decoded header copy.
type header struct {
	hdrSize   int64
	seqID     uint64
	label     string
	subsystem string
	csumAlg   string
	salt      [saltLen]byte
	uuid      string
	offset    int64 // where this copy lives
	meta      *Metadata
}

// hashByName returns the constructor of a checksum/KDF hash LUKS2 names.
func hashByName(name string) (func() hash.Hash, bool) {
	switch name {
	case "sha1":
		return sha1.New, true
	case "sha256":
		return sha256.New, true
	case "sha512":
		return sha512.New, true
	}
	return nil, false
}

// cstring returns b up to its first NUL; ok is false when b has no NUL
// (the field must be terminated).
func cstring(b []byte) (string, bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return "", false
	}
	return string(b[:i]), true
}

// parseHeader decodes and checks one header copy from area, which holds at
// least the copy's hdrSize bytes read at off. primary says which magic is
// expected.
func parseHeader(area []byte, off int64, primary bool) (*header, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: header at offset %d: %s", ErrCorrupt, off, fmt.Sprintf(format, a...))
	}
	if len(area) < binHeaderSize {
		return nil, bad("shorter than the 4096-byte binary header")
	}
	magic := magicSecondary
	if primary {
		magic = magicPrimary
	}
	if !bytes.Equal(area[offMagic:offMagic+6], magic) {
		return nil, ErrNotLUKS
	}
	if v := binary.BigEndian.Uint16(area[offVersion:]); v != 2 {
		return nil, fmt.Errorf("crypt: header at offset %d is LUKS version %d; vio reads LUKS2 only (convert a LUKS1 image with cryptsetup convert --type luks2)", off, v)
	}
	hsize := binary.BigEndian.Uint64(area[offHdrSize:])
	if !validHdrSize(hsize) {
		return nil, bad("header size %d is not one LUKS2 allows", hsize)
	}
	if uint64(len(area)) < hsize {
		return nil, bad("header size %d runs past the image", hsize)
	}
	h := &header{hdrSize: int64(hsize), seqID: binary.BigEndian.Uint64(area[offSeqID:]), offset: off}
	var ok bool
	if h.label, ok = cstring(area[offLabel : offLabel+labelLen]); !ok {
		return nil, bad("label is not NUL-terminated")
	}
	if h.csumAlg, ok = cstring(area[offCsumAlg : offCsumAlg+csumAlgLen]); !ok {
		return nil, bad("checksum algorithm is not NUL-terminated")
	}
	if h.uuid, ok = cstring(area[offUUID : offUUID+uuidLen]); !ok {
		return nil, bad("UUID is not NUL-terminated")
	}
	if h.subsystem, ok = cstring(area[offSubsystem : offSubsystem+labelLen]); !ok {
		return nil, bad("subsystem is not NUL-terminated")
	}
	copy(h.salt[:], area[offSalt:offSalt+saltLen])
	if ho := binary.BigEndian.Uint64(area[offHdrOffset:]); ho != uint64(off) {
		return nil, bad("it says it lives at offset %d", ho)
	}
	newHash, ok := hashByName(h.csumAlg)
	if !ok {
		return nil, bad("checksum algorithm %q is not supported (want sha256, sha512 or sha1)", h.csumAlg)
	}
	sum := checksum(newHash, area[:hsize])
	if subtle.ConstantTimeCompare(sum, area[offCsum:offCsum+len(sum)]) != 1 {
		return nil, bad("checksum mismatch")
	}
	meta, err := parseMetadata(area[binHeaderSize:hsize], h.hdrSize)
	if err != nil {
		return nil, fmt.Errorf("%w: header at offset %d: %w", ErrCorrupt, off, err)
	}
	h.meta = meta
	return h, nil
}

// checksum hashes a header area with its checksum field taken as zeroes.
func checksum(newHash func() hash.Hash, area []byte) []byte {
	d := newHash()
	d.Write(area[:offCsum])
	d.Write(make([]byte, csumLen))
	d.Write(area[offCsum+csumLen:])
	return d.Sum(nil)
}

// encode builds the hdrSize bytes of h at its offset, with its metadata,
// checksum included.
func (h *header) encode(primary bool) ([]byte, error) {
	js, err := h.meta.encode()
	if err != nil {
		return nil, err
	}
	if int64(len(js)) >= h.hdrSize-binHeaderSize {
		return nil, fmt.Errorf("crypt: the JSON metadata (%d bytes) does not fit the %d-byte metadata area", len(js), h.hdrSize-binHeaderSize)
	}
	area := make([]byte, h.hdrSize)
	if primary {
		copy(area[offMagic:], magicPrimary)
	} else {
		copy(area[offMagic:], magicSecondary)
	}
	binary.BigEndian.PutUint16(area[offVersion:], 2)
	binary.BigEndian.PutUint64(area[offHdrSize:], uint64(h.hdrSize))
	binary.BigEndian.PutUint64(area[offSeqID:], h.seqID)
	putCString(area[offLabel:offLabel+labelLen], h.label)
	putCString(area[offCsumAlg:offCsumAlg+csumAlgLen], h.csumAlg)
	copy(area[offSalt:offSalt+saltLen], h.salt[:])
	putCString(area[offUUID:offUUID+uuidLen], h.uuid)
	putCString(area[offSubsystem:offSubsystem+labelLen], h.subsystem)
	binary.BigEndian.PutUint64(area[offHdrOffset:], uint64(h.offset))
	copy(area[binHeaderSize:], js)
	newHash, ok := hashByName(h.csumAlg)
	if !ok {
		return nil, fmt.Errorf("crypt: checksum algorithm %q is not supported", h.csumAlg)
	}
	copy(area[offCsum:], checksum(newHash, area))
	return area, nil
}

func putCString(dst []byte, s string) {
	n := copy(dst[:len(dst)-1], s)
	clear(dst[n:])
}

// readHeaders reads both header copies from r and returns the one to use:
// the valid copy with the higher sequence id. Like cryptsetup, it looks for
// the secondary at every offset LUKS2 allows when the primary is unreadable.
// stale reports whether the other copy is missing, corrupt or older (the
// next write repairs it).
func readHeaders(r io.ReaderAt, size int64) (h *header, stale bool, err error) {
	read := func(off, n int64) []byte {
		if off+n > size {
			return nil
		}
		b := make([]byte, n)
		if _, err := r.ReadAt(b, off); err != nil {
			return nil
		}
		return b
	}
	peekSize := func(b []byte) int64 {
		if len(b) < binHeaderSize {
			return 0
		}
		n := binary.BigEndian.Uint64(b[offHdrSize:])
		if !validHdrSize(n) {
			return 0
		}
		return int64(n)
	}
	var primary, secondary *header
	var perr, serr error = ErrNotLUKS, ErrNotLUKS
	if bin := read(0, binHeaderSize); bin != nil {
		if n := peekSize(bin); n > 0 {
			if area := read(0, n); area != nil {
				primary, perr = parseHeader(area, 0, true)
			} else {
				perr = fmt.Errorf("%w: the primary header's size runs past the image", ErrCorrupt)
			}
		} else if bytes.Equal(bin[:6], magicPrimary) {
			_, perr = parseHeader(bin, 0, true)
		}
	}
	offsets := hdrSizes
	if primary != nil {
		offsets = []int64{primary.hdrSize}
	}
	for _, off := range offsets {
		bin := read(off, binHeaderSize)
		if bin == nil || !bytes.Equal(bin[:6], magicSecondary) {
			continue
		}
		n := peekSize(bin)
		if n == 0 {
			_, serr = parseHeader(bin, off, false)
			continue
		}
		area := read(off, n)
		if area == nil {
			serr = fmt.Errorf("%w: the secondary header's size runs past the image", ErrCorrupt)
			continue
		}
		secondary, serr = parseHeader(area, off, false)
		if secondary != nil {
			break
		}
	}
	switch {
	case primary != nil && secondary != nil:
		if secondary.seqID > primary.seqID {
			return secondary, true, nil
		}
		return primary, secondary.seqID != primary.seqID || secondary.hdrSize != primary.hdrSize, nil
	case primary != nil:
		return primary, true, nil
	case secondary != nil:
		return secondary, true, nil
	}
	if !errors.Is(perr, ErrNotLUKS) {
		return nil, false, perr
	}
	return nil, false, serr
}

// writeHeaders writes h as both copies with the next sequence id: the
// primary first, then the secondary, each followed by a flush, so that a
// crash leaves at least one valid copy (the older or the newer).
func writeHeaders(w interface {
	io.WriterAt
	Flush() error
}, h *header) error {
	h.seqID++
	for _, primary := range []bool{true, false} {
		c := *h
		c.offset = 0
		if !primary {
			c.offset = h.hdrSize
		}
		// A fresh salt for each copy, as the format asks.
		if _, err := rand.Read(c.salt[:]); err != nil {
			return err
		}
		area, err := c.encode(primary)
		if err != nil {
			return err
		}
		if _, err := w.WriteAt(area, c.offset); err != nil {
			return fmt.Errorf("crypt: writing the LUKS2 header at offset %d: %w", c.offset, err)
		}
		if err := w.Flush(); err != nil {
			return fmt.Errorf("crypt: flushing the LUKS2 header: %w", err)
		}
	}
	h.offset = 0
	return nil
}
