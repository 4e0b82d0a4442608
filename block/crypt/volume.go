package crypt

import (
	"crypto/rand"
	"fmt"
	"io"
	"sort"
	"strconv"

	"github.com/viovmm/vio/block"
)

// Storage is what a LUKS2 volume lives on: any block back-end.
type Storage interface {
	io.ReaderAt
	io.WriterAt
	Flush() error
	Size() int64
}

// Volume is a LUKS2 image's header, read and checked, with the operations
// on its keyslots. It does not own dev.
type Volume struct {
	dev   Storage
	hdr   *header
	stale bool // one header copy is missing, corrupt or older
}

// ReadVolume reads and checks dev's LUKS2 headers.
func ReadVolume(dev Storage) (*Volume, error) {
	h, stale, err := readHeaders(dev, dev.Size())
	if err != nil {
		return nil, err
	}
	if _, err := h.meta.Segments["0"].dataSize(dev.Size()); err != nil {
		return nil, err
	}
	return &Volume{dev: dev, hdr: h, stale: stale}, nil
}

func (v *Volume) writeHeader() error {
	if err := writeHeaders(v.dev, v.hdr); err != nil {
		return err
	}
	v.stale = false
	return nil
}

// UUID returns the volume's UUID.
func (v *Volume) UUID() string { return v.hdr.uuid }

// Metadata returns the volume's JSON metadata (not to be modified).
func (v *Volume) Metadata() *Metadata { return v.hdr.meta }

// SectorSize returns the data segment's sector size.
func (v *Volume) SectorSize() int { return v.hdr.meta.Segments["0"].SectorSize }

// DataOffset returns where the encrypted data starts in the image.
func (v *Volume) DataOffset() int64 { return int64(v.hdr.meta.Segments["0"].Offset) }

// FormatOptions choose a new volume's layout and its first keyslot.
type FormatOptions struct {
	// SectorSize of the data: 512 or 4096 (default 4096, as cryptsetup
	// chooses for an image file); 1024 and 2048 work too.
	SectorSize int
	// KeyBits is 256 (AES-128-XTS) or 512 (AES-256-XTS, the default).
	KeyBits int
	KDF     KDFParams
	Label   string
}

// The layout vio formats, cryptsetup's default: 16 KiB headers (12 KiB of
// JSON each), keyslots up to 16 MiB, data from 16 MiB on.
const (
	formatHdrSize    = 16 << 10
	FormatDataOffset = 16 << 20
)

// Format writes a new LUKS2 header with one keyslot (0) for passphrase on
// dev. The data area is not touched: bytes already there read as noise
// (or, if all zero, as zeroes). dev must be larger than FormatDataOffset.
func Format(dev Storage, passphrase []byte, o FormatOptions) error {
	if o.SectorSize == 0 {
		o.SectorSize = 4096
	}
	if o.SectorSize < sectorSizeMin || o.SectorSize > sectorSizeMax || o.SectorSize&(o.SectorSize-1) != 0 {
		return fmt.Errorf("crypt: sector size %d: use 512 or 4096", o.SectorSize)
	}
	if o.KeyBits == 0 {
		o.KeyBits = 512
	}
	if o.KeyBits != 256 && o.KeyBits != 512 {
		return fmt.Errorf("crypt: key size %d bits: use 256 or 512 (AES-128-XTS or AES-256-XTS)", o.KeyBits)
	}
	if len(o.Label) >= labelLen {
		return fmt.Errorf("crypt: label %q is longer than %d bytes", o.Label, labelLen-1)
	}
	if len(passphrase) == 0 {
		return fmt.Errorf("crypt: the passphrase is empty")
	}
	p, err := o.KDF.withDefaults()
	if err != nil {
		return err
	}
	if dev.Size() < FormatDataOffset+int64(o.SectorSize) {
		return fmt.Errorf("crypt: the image (%d bytes) is too small for a LUKS2 header and data: it needs more than %d bytes", dev.Size(), FormatDataOffset)
	}
	key := make([]byte, o.KeyBits/8)
	defer clear(key)
	if _, err := rand.Read(key); err != nil {
		return err
	}
	dsalt := make([]byte, 32)
	if _, err := rand.Read(dsalt); err != nil {
		return err
	}
	d := &Digest{Type: "pbkdf2", Keyslots: []string{"0"}, Segments: []string{"0"}, Hash: "sha256", Iterations: digestIterations, Salt: dsalt, Digest: make([]byte, 32)}
	sum, err := d.of(key)
	if err != nil {
		return err
	}
	d.Digest = sum
	uuid, err := newUUID()
	if err != nil {
		return err
	}
	m := &Metadata{
		Keyslots: map[string]*Keyslot{},
		Segments: map[string]*Segment{"0": {Type: "crypt", Offset: FormatDataOffset, Size: "dynamic", Encryption: supportedCipher, SectorSize: o.SectorSize}},
		Digests:  map[string]*Digest{"0": d},
		Config:   Config{JSONSize: formatHdrSize - binHeaderSize, KeyslotsSize: FormatDataOffset - 2*formatHdrSize},
	}
	v := &Volume{dev: dev, hdr: &header{hdrSize: formatHdrSize, csumAlg: "sha256", uuid: uuid, label: o.Label, meta: m}}
	k, err := v.writeKeyslot(key, passphrase, p, 2*formatHdrSize, keyslotAreaSize(len(key)))
	if err != nil {
		return err
	}
	m.Keyslots["0"] = k
	return v.writeHeader()
}

func newUUID() (string, error) {
	var u [16]byte
	if _, err := rand.Read(u[:]); err != nil {
		return "", err
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16]), nil
}

// Dump writes a description of the volume like `cryptsetup luksDump`'s: the
// layout, the data segment and the keyslots' parameters. It shows no key
// material (salts and digests are public, but are left out too: nobody
// needs them to manage an image).
func (v *Volume) Dump(w io.Writer) {
	h, m := v.hdr, v.hdr.meta
	fmt.Fprintf(w, "LUKS header information\nVersion:       2\nEpoch:         %d\n", h.seqID)
	fmt.Fprintf(w, "Metadata area: %d [bytes]\nKeyslots area: %d [bytes]\n", h.hdrSize-binHeaderSize, m.Config.KeyslotsSize)
	fmt.Fprintf(w, "UUID:          %s\nLabel:         %s\n", h.uuid, orNone(h.label))
	if v.stale {
		fmt.Fprintf(w, "Warning:       one header copy is missing, damaged or older; the next change rewrites it\n")
	}
	s := m.Segments["0"]
	fmt.Fprintf(w, "\nData segments:\n  0: %s\n\toffset: %d [bytes]\n\tlength: %s\n\tcipher: %s\n\tsector: %d [bytes]\n",
		s.Type, s.Offset, lengthString(s.Size), s.Encryption, s.SectorSize)
	fmt.Fprintf(w, "\nKeyslots:\n")
	var ids []int
	for id := range m.Keyslots {
		n, _ := strconv.Atoi(id)
		ids = append(ids, n)
	}
	sort.Ints(ids)
	for _, n := range ids {
		k := m.Keyslots[strconv.Itoa(n)]
		fmt.Fprintf(w, "  %d: %s\n\tKey:        %d bits\n\tCipher:     %s\n\tPBKDF:      %s\n", n, k.Type, 8*k.KeySize, k.Area.Encryption, k.KDF.Type)
		if k.KDF.Type == "pbkdf2" {
			fmt.Fprintf(w, "\tHash:       %s\n\tIterations: %d\n", k.KDF.Hash, k.KDF.Iterations)
		} else {
			fmt.Fprintf(w, "\tTime cost:  %d\n\tMemory:     %d [KiB]\n\tThreads:    %d\n", k.KDF.Time, k.KDF.Memory, k.KDF.CPUs)
		}
		fmt.Fprintf(w, "\tAF stripes: %d\n\tArea offset:%d [bytes]\n\tArea length:%d [bytes]\n", k.AF.Stripes, k.Area.Offset, k.Area.Size)
	}
	var tokens []string
	for id := range m.Tokens {
		tokens = append(tokens, id)
	}
	sort.Strings(tokens)
	fmt.Fprintf(w, "Tokens:\n")
	for _, t := range tokens {
		fmt.Fprintf(w, "  %s\n", t)
	}
}

func orNone(s string) string {
	if s == "" {
		return "(no label)"
	}
	return s
}

func lengthString(s string) string {
	if s == "dynamic" {
		return "(whole device)"
	}
	return s + " [bytes]"
}

// IsLUKS reports whether b starts with a LUKS header's magic (any
// version), for probes.
func IsLUKS(b []byte) bool {
	return len(b) >= 6 && string(b[:6]) == string(magicPrimary)
}

var _ Storage = block.Backend(nil)
