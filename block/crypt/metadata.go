package crypt

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
)

// Metadata is the LUKS2 JSON metadata, with the fields vio reads and
// writes. Objects are keyed by decimal ids ("0", "1", ...), as in the
// format.
type Metadata struct {
	Keyslots map[string]*Keyslot        `json:"keyslots"`
	Tokens   map[string]json.RawMessage `json:"tokens"`
	Segments map[string]*Segment        `json:"segments"`
	Digests  map[string]*Digest         `json:"digests"`
	Config   Config                     `json:"config"`
}

// Keyslot is one passphrase's copy of the volume key: the key, split by the
// anti-forensic splitter (AF) and encrypted under a key derived from the
// passphrase (KDF), stored in Area.
type Keyslot struct {
	Type     string `json:"type"`
	KeySize  int    `json:"key_size"`
	Area     Area   `json:"area"`
	KDF      KDF    `json:"kdf"`
	AF       AF     `json:"af"`
	Priority *int   `json:"priority,omitempty"`
}

// Area is where a keyslot's encrypted material lives in the keyslots area.
type Area struct {
	Type       string `json:"type"`
	Offset     U64    `json:"offset"`
	Size       U64    `json:"size"`
	Encryption string `json:"encryption"`
	KeySize    int    `json:"key_size"`
}

// KDF derives the keyslot's key from the passphrase: pbkdf2 (Hash,
// Iterations) or argon2i/argon2id (Time, Memory in KiB, CPUs).
type KDF struct {
	Type       string `json:"type"`
	Hash       string `json:"hash,omitempty"`
	Iterations uint32 `json:"iterations,omitempty"`
	Time       uint32 `json:"time,omitempty"`
	Memory     uint32 `json:"memory,omitempty"`
	CPUs       uint32 `json:"cpus,omitempty"`
	Salt       []byte `json:"salt"`
}

// AF is the anti-forensic splitter's parameters.
type AF struct {
	Type    string `json:"type"`
	Stripes int    `json:"stripes"`
	Hash    string `json:"hash"`
}

// Segment is the encrypted data: Offset bytes into the image, Size bytes
// long or "dynamic" (to the end of the image).
type Segment struct {
	Type       string          `json:"type"`
	Offset     U64             `json:"offset"`
	Size       string          `json:"size"`
	IVTweak    U64             `json:"iv_tweak"`
	Encryption string          `json:"encryption"`
	SectorSize int             `json:"sector_size"`
	Flags      []string        `json:"flags,omitempty"`
	Integrity  json.RawMessage `json:"integrity,omitempty"`
}

// Digest verifies a candidate volume key: pbkdf2 of the key with Salt,
// compared to Digest.
type Digest struct {
	Type       string   `json:"type"`
	Keyslots   []string `json:"keyslots"`
	Segments   []string `json:"segments"`
	Hash       string   `json:"hash"`
	Iterations uint32   `json:"iterations"`
	Salt       []byte   `json:"salt"`
	Digest     []byte   `json:"digest"`
}

// Config holds the sizes of the metadata and keyslots areas.
type Config struct {
	JSONSize     U64             `json:"json_size"`
	KeyslotsSize U64             `json:"keyslots_size"`
	Flags        []string        `json:"flags,omitempty"`
	Requirements json.RawMessage `json:"requirements,omitempty"`
}

// U64 is a 64-bit number, written as a JSON string of decimal digits as
// LUKS2 writes offsets and sizes.
type U64 uint64

func (u U64) MarshalJSON() ([]byte, error) {
	return []byte(strconv.Quote(strconv.FormatUint(uint64(u), 10))), nil
}

func (u *U64) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a number in a string, got %s", b)
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return fmt.Errorf("%q is not a decimal number", s)
	}
	*u = U64(n)
	return nil
}

// Bounds on what a header may ask for: cryptsetup's own limits where it
// has them, so that every image cryptsetup writes opens, while a hostile
// one cannot make vio allocate or compute without end.
const (
	maxKeyslots      = 32
	maxKeyslotsSize  = 128 << 20 // cryptsetup's LUKS2_MAX_KEYSLOTS_SIZE
	maxKeySize       = 512
	maxStripes       = 1 << 16
	maxSaltLen       = 1024
	maxArgonMemory   = 4 << 20 // KiB: 4 GiB, cryptsetup's maximum
	maxArgonTime     = 1 << 16
	maxArgonCPUs     = 16
	maxPBKDF2Iter    = 1 << 30
	maxDigestLen     = 64
	supportedCipher  = "aes-xts-plain64"
	sectorSizeMin    = 512
	sectorSizeMax    = 4096
	keyslotAlignment = 4096
)

// parseMetadata decodes the JSON area (hdrSize-4096 bytes, the text ending
// at the first NUL) and checks it.
func parseMetadata(area []byte, hdrSize int64) (*Metadata, error) {
	if i := bytes.IndexByte(area, 0); i >= 0 {
		area = area[:i]
	} else {
		return nil, errors.New("the JSON area is not NUL-terminated")
	}
	var m Metadata
	d := json.NewDecoder(bytes.NewReader(area))
	if err := d.Decode(&m); err != nil {
		return nil, fmt.Errorf("JSON metadata: %w", err)
	}
	if d.More() {
		return nil, errors.New("JSON metadata: text after the closing brace")
	}
	if err := m.check(hdrSize); err != nil {
		return nil, err
	}
	return &m, nil
}

func (m *Metadata) encode() ([]byte, error) {
	if m.Tokens == nil {
		m.Tokens = map[string]json.RawMessage{}
	}
	return json.Marshal(m)
}

// checkID accepts the decimal ids LUKS2 uses as object keys.
func checkID(what, id string, limit int) (int, error) {
	n, err := strconv.Atoi(id)
	if err != nil || n < 0 || n >= limit || strconv.Itoa(n) != id {
		return 0, fmt.Errorf("%s id %q is not a number below %d", what, id, limit)
	}
	return n, nil
}

// check validates everything later code relies on: ids, sizes and offsets
// inside their areas, KDF costs within bounds, digests that name existing
// keyslots and segments.
func (m *Metadata) check(hdrSize int64) error {
	if m.Keyslots == nil || m.Segments == nil || m.Digests == nil {
		return errors.New("JSON metadata: keyslots, segments or digests is missing")
	}
	if uint64(m.Config.JSONSize) != uint64(hdrSize-binHeaderSize) {
		return fmt.Errorf("config.json_size %d does not match the header size %d", m.Config.JSONSize, hdrSize)
	}
	ks := uint64(m.Config.KeyslotsSize)
	if ks%keyslotAlignment != 0 || ks > maxKeyslotsSize {
		return fmt.Errorf("config.keyslots_size %d is not a multiple of 4096 of at most 128 MiB", ks)
	}
	if len(m.Config.Requirements) > 0 {
		var r struct {
			Mandatory []string `json:"mandatory"`
		}
		if err := json.Unmarshal(m.Config.Requirements, &r); err != nil {
			return fmt.Errorf("config.requirements: %w", err)
		}
		if len(r.Mandatory) > 0 {
			return fmt.Errorf("the image has requirements vio does not meet (%q): finish them with cryptsetup first (e.g. an interrupted reencryption)", r.Mandatory)
		}
	}
	areaStart := uint64(2 * hdrSize)
	areaEnd := areaStart + ks
	if len(m.Keyslots) > maxKeyslots {
		return fmt.Errorf("%d keyslots: LUKS2 allows %d", len(m.Keyslots), maxKeyslots)
	}
	type span struct{ lo, hi uint64 }
	var used []span
	for id, k := range m.Keyslots {
		if _, err := checkID("keyslot", id, maxKeyslots); err != nil {
			return err
		}
		if k == nil {
			return fmt.Errorf("keyslot %s is null", id)
		}
		if err := k.check(areaStart, areaEnd); err != nil {
			return fmt.Errorf("keyslot %s: %w", id, err)
		}
		used = append(used, span{uint64(k.Area.Offset), uint64(k.Area.Offset) + uint64(k.Area.Size)})
	}
	sort.Slice(used, func(i, j int) bool { return used[i].lo < used[j].lo })
	for i := 1; i < len(used); i++ {
		if used[i].lo < used[i-1].hi {
			return errors.New("two keyslots' areas overlap")
		}
	}
	if len(m.Segments) != 1 || m.Segments["0"] == nil {
		return fmt.Errorf("the image has %d data segments; vio opens images with exactly one, segment 0 (finish a reencryption with cryptsetup first)", len(m.Segments))
	}
	if err := m.Segments["0"].check(areaEnd); err != nil {
		return fmt.Errorf("segment 0: %w", err)
	}
	if len(m.Digests) > maxKeyslots {
		return fmt.Errorf("%d digests: too many", len(m.Digests))
	}
	for id, d := range m.Digests {
		if _, err := checkID("digest", id, maxKeyslots); err != nil {
			return err
		}
		if d == nil {
			return fmt.Errorf("digest %s is null", id)
		}
		if err := d.check(m); err != nil {
			return fmt.Errorf("digest %s: %w", id, err)
		}
	}
	if len(m.Tokens) > maxKeyslots {
		return fmt.Errorf("%d tokens: LUKS2 allows %d", len(m.Tokens), maxKeyslots)
	}
	return nil
}

func (k *Keyslot) check(areaStart, areaEnd uint64) error {
	if k.Type != "luks2" {
		return fmt.Errorf("type %q is not supported (want luks2)", k.Type)
	}
	if k.KeySize <= 0 || k.KeySize > maxKeySize {
		return fmt.Errorf("key_size %d is out of range", k.KeySize)
	}
	a := k.Area
	if a.Type != "raw" {
		return fmt.Errorf("area type %q is not supported (want raw)", a.Type)
	}
	if a.KeySize <= 0 || a.KeySize > maxKeySize {
		return fmt.Errorf("area key_size %d is out of range", a.KeySize)
	}
	off, size := uint64(a.Offset), uint64(a.Size)
	if off < areaStart || size > areaEnd || off > areaEnd-size || off%sectorSizeMin != 0 || size%sectorSizeMin != 0 {
		return fmt.Errorf("area [%d, +%d) lies outside the keyslots area [%d, %d) or is not in 512-byte sectors", off, size, areaStart, areaEnd)
	}
	if k.AF.Type != "luks1" {
		return fmt.Errorf("af type %q is not supported (want luks1)", k.AF.Type)
	}
	if _, ok := hashByName(k.AF.Hash); !ok {
		return fmt.Errorf("af hash %q is not supported", k.AF.Hash)
	}
	if k.AF.Stripes <= 0 || k.AF.Stripes > maxStripes {
		return fmt.Errorf("af stripes %d is out of range", k.AF.Stripes)
	}
	if uint64(k.KeySize)*uint64(k.AF.Stripes) > size {
		return fmt.Errorf("the split key (%d x %d bytes) does not fit its %d-byte area", k.KeySize, k.AF.Stripes, size)
	}
	return k.KDF.check()
}

func (f *KDF) check() error {
	if len(f.Salt) == 0 || len(f.Salt) > maxSaltLen {
		return fmt.Errorf("kdf salt of %d bytes is out of range", len(f.Salt))
	}
	switch f.Type {
	case "pbkdf2":
		if _, ok := hashByName(f.Hash); !ok {
			return fmt.Errorf("pbkdf2 hash %q is not supported (want sha256, sha512 or sha1)", f.Hash)
		}
		if f.Iterations == 0 || f.Iterations > maxPBKDF2Iter {
			return fmt.Errorf("pbkdf2 iterations %d is out of range (1 to %d)", f.Iterations, maxPBKDF2Iter)
		}
	case "argon2i", "argon2id":
		if f.Time == 0 || f.Time > maxArgonTime {
			return fmt.Errorf("%s time %d is out of range (1 to %d)", f.Type, f.Time, maxArgonTime)
		}
		if f.CPUs == 0 || f.CPUs > maxArgonCPUs {
			return fmt.Errorf("%s cpus %d is out of range (1 to %d)", f.Type, f.CPUs, maxArgonCPUs)
		}
		if f.Memory < 8*f.CPUs || f.Memory > maxArgonMemory {
			return fmt.Errorf("%s memory %d KiB is out of range (8 per cpu to %d)", f.Type, f.Memory, maxArgonMemory)
		}
	default:
		return fmt.Errorf("kdf type %q is not supported (want pbkdf2, argon2i or argon2id)", f.Type)
	}
	return nil
}

// dataSize returns the size of the segment on an image of imageSize bytes,
// in whole sectors.
func (s *Segment) dataSize(imageSize int64) (int64, error) {
	off := int64(s.Offset)
	if s.Size == "dynamic" {
		if imageSize < off {
			return 0, fmt.Errorf("crypt: the image (%d bytes) ends before its data segment starts (%d)", imageSize, off)
		}
		n := imageSize - off
		return n - n%int64(s.SectorSize), nil
	}
	n, _ := strconv.ParseUint(s.Size, 10, 63) // checked in check
	if int64(n) > imageSize-off {
		return 0, fmt.Errorf("crypt: the data segment (%d bytes at %d) runs past the end of the image (%d bytes)", n, off, imageSize)
	}
	return int64(n), nil
}

func (s *Segment) check(areaEnd uint64) error {
	if s.Type != "crypt" {
		return fmt.Errorf("type %q is not supported (want crypt)", s.Type)
	}
	if s.SectorSize < sectorSizeMin || s.SectorSize > sectorSizeMax || s.SectorSize&(s.SectorSize-1) != 0 {
		return fmt.Errorf("sector_size %d is not a power of two from 512 to 4096", s.SectorSize)
	}
	if uint64(s.Offset) < areaEnd || uint64(s.Offset) > 1<<62 || uint64(s.Offset)%uint64(s.SectorSize) != 0 {
		return fmt.Errorf("offset %d overlaps the header and keyslots (which end at %d) or is not in whole sectors", s.Offset, areaEnd)
	}
	if s.Size != "dynamic" {
		n, err := strconv.ParseUint(s.Size, 10, 63)
		if err != nil || n%uint64(s.SectorSize) != 0 {
			return fmt.Errorf("size %q is neither \"dynamic\" nor a number of whole sectors", s.Size)
		}
	}
	if len(s.Integrity) > 0 && string(s.Integrity) != "null" {
		return errors.New("authenticated encryption (integrity) is not supported")
	}
	if uint64(s.IVTweak) > 1<<62 {
		return fmt.Errorf("iv_tweak %d is out of range", s.IVTweak)
	}
	return nil
}

func (d *Digest) check(m *Metadata) error {
	if d.Type != "pbkdf2" {
		return fmt.Errorf("type %q is not supported (want pbkdf2)", d.Type)
	}
	if _, ok := hashByName(d.Hash); !ok {
		return fmt.Errorf("hash %q is not supported", d.Hash)
	}
	if d.Iterations == 0 || d.Iterations > maxPBKDF2Iter {
		return fmt.Errorf("iterations %d is out of range", d.Iterations)
	}
	if len(d.Salt) == 0 || len(d.Salt) > maxSaltLen || len(d.Digest) == 0 || len(d.Digest) > maxDigestLen {
		return errors.New("salt or digest length is out of range")
	}
	if len(d.Keyslots) > maxKeyslots || len(d.Segments) > maxKeyslots {
		return errors.New("too many keyslots or segments named")
	}
	for _, k := range d.Keyslots {
		if m.Keyslots[k] == nil {
			return fmt.Errorf("names keyslot %q, which does not exist", k)
		}
	}
	for _, s := range d.Segments {
		if m.Segments[s] == nil {
			return fmt.Errorf("names segment %q, which does not exist", s)
		}
	}
	return nil
}

// segmentDigest returns the digest that covers segment 0 and keyslot id.
func (m *Metadata) segmentDigest(keyslot string) *Digest {
	for _, d := range m.Digests {
		if contains(d.Segments, "0") && contains(d.Keyslots, keyslot) {
			return d
		}
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// keyslotIDs returns the keyslot ids in the order unlocking tries them:
// priority 2 (high) first, then normal; priority 0 (ignore) slots are left
// out. Within a priority, by number.
func (m *Metadata) keyslotIDs() []string {
	var ids []string
	for id, k := range m.Keyslots {
		if k.Priority != nil && *k.Priority == 0 {
			continue
		}
		ids = append(ids, id)
	}
	prio := func(id string) int {
		if p := m.Keyslots[id].Priority; p != nil {
			return *p
		}
		return 1
	}
	sort.Slice(ids, func(i, j int) bool {
		if pi, pj := prio(ids[i]), prio(ids[j]); pi != pj {
			return pi > pj
		}
		a, _ := strconv.Atoi(ids[i])
		b, _ := strconv.Atoi(ids[j])
		return a < b
	})
	return ids
}
