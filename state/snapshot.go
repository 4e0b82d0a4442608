package state

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
)

// The container (docs/state-format.md).
const (
	// Magic opens every state file.
	Magic = "VIOSTATE"
	// FormatVersion is the container version this vio writes; it reads
	// every version from 1 up to it.
	FormatVersion = 1
	// HeaderSize is magic, format version, body length and body CRC.
	HeaderSize = len(Magic) + 12

	// Limits a decoder enforces before it allocates.
	MaxBodySize    = 64 << 20
	MaxSectionSize = 16 << 20
	MaxSections    = 4096
	MaxIDLen       = 128
	MaxKindLen     = 64
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Section is one component's state.
type Section struct {
	ID      string          `json:"id"`
	Kind    string          `json:"kind"`
	Version uint32          `json:"version"`
	Data    json.RawMessage `json:"data"`
}

type body struct {
	Sections []Section `json:"sections"`
}

// Snapshot is a set of sections keyed by component id. The VMM names
// components (a device's id from the VM configuration, with a suffix per
// part: "disk0/pci", "disk0/virtio-blk"). A Snapshot is not safe for
// concurrent use.
type Snapshot struct {
	sections []Section
	index    map[string]int
	restored map[string]bool
}

// New returns an empty snapshot.
func New() *Snapshot {
	return &Snapshot{index: make(map[string]int), restored: make(map[string]bool)}
}

func validName(s string, max int) bool {
	if s == "" || len(s) > max {
		return false
	}
	for _, c := range []byte(s) {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '-' || c == '_' || c == '.' || c == '/' || c == ':'
		if !ok {
			return false
		}
	}
	return true
}

// Save adds c's state as section id.
func (s *Snapshot) Save(id string, c Snapshottable) error {
	if !validName(id, MaxIDLen) {
		return fmt.Errorf("state: component id %q: use 1 to %d letters, digits or -_./:", id, MaxIDLen)
	}
	if _, dup := s.index[id]; dup {
		return fmt.Errorf("state: component id %q saved twice", id)
	}
	if len(s.sections) >= MaxSections {
		return fmt.Errorf("state: more than %d components", MaxSections)
	}
	kind := c.StateKind()
	if !validName(kind, MaxKindLen) {
		return fmt.Errorf("state: component %q has an invalid kind %q", id, kind)
	}
	data, err := c.MarshalState()
	if err != nil {
		return fmt.Errorf("state: save %s (%s): %w", id, kind, err)
	}
	if len(data) > MaxSectionSize {
		return fmt.Errorf("state: save %s (%s): %d bytes, the limit is %d", id, kind, len(data), MaxSectionSize)
	}
	s.index[id] = len(s.sections)
	s.sections = append(s.sections, Section{ID: id, Kind: kind, Version: c.StateVersion(), Data: data})
	return nil
}

// Restore restores c from section id. It refuses a missing section, a
// section of another kind, and a section version newer than c's.
func (s *Snapshot) Restore(id string, c Snapshottable) error {
	i, ok := s.index[id]
	if !ok {
		return fmt.Errorf("%w: it has no state for %q; restore with the configuration the snapshot was taken with", ErrMismatch, id)
	}
	sec := s.sections[i]
	if kind := c.StateKind(); sec.Kind != kind {
		return fmt.Errorf("%w: %q holds %s state but this machine has a %s there; restore with the configuration the snapshot was taken with", ErrMismatch, id, sec.Kind, kind)
	}
	if v := c.StateVersion(); sec.Version > v {
		return fmt.Errorf("%w: %q (%s) has state version %d, this vio reads up to %d: upgrade vio", ErrNewer, id, sec.Kind, sec.Version, v)
	}
	if sec.Version == 0 {
		return fmt.Errorf("%w: %q (%s) has state version 0", ErrCorrupt, id, sec.Kind)
	}
	if err := c.UnmarshalState(sec.Version, sec.Data); err != nil {
		return fmt.Errorf("state: restore %s (%s): %w", id, sec.Kind, err)
	}
	s.restored[id] = true
	return nil
}

// Sections returns the sections in the order they were saved.
func (s *Snapshot) Sections() []Section { return slices.Clone(s.sections) }

// Unrestored returns the ids of sections no Restore has used, so the VMM
// can refuse a snapshot with state for components this machine lacks.
func (s *Snapshot) Unrestored() []string {
	var ids []string
	for _, sec := range s.sections {
		if !s.restored[sec.ID] {
			ids = append(ids, sec.ID)
		}
	}
	return ids
}

// Encode writes the snapshot in the current format.
func (s *Snapshot) Encode(w io.Writer) error {
	b, err := json.Marshal(body{Sections: s.sections})
	if err != nil {
		return fmt.Errorf("state: encode: %w", err)
	}
	if len(b) > MaxBodySize {
		return fmt.Errorf("state: encode: %d bytes, the limit is %d", len(b), MaxBodySize)
	}
	hdr := make([]byte, 0, HeaderSize)
	hdr = append(hdr, Magic...)
	hdr = binary.LittleEndian.AppendUint32(hdr, FormatVersion)
	hdr = binary.LittleEndian.AppendUint32(hdr, uint32(len(b)))
	hdr = binary.LittleEndian.AppendUint32(hdr, crc32.Checksum(b, castagnoli))
	if _, err := w.Write(hdr); err != nil {
		return fmt.Errorf("state: write: %w", err)
	}
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("state: write: %w", err)
	}
	return nil
}

// Decode reads a snapshot. The input is hostile: sizes are checked before
// anything is allocated, the body's checksum before it is parsed, and
// every section's id, kind and size afterwards.
func Decode(r io.Reader) (*Snapshot, error) {
	hdr := make([]byte, HeaderSize)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, fmt.Errorf("%w: header: %w", ErrCorrupt, err)
	}
	if string(hdr[:len(Magic)]) != Magic {
		return nil, fmt.Errorf("%w: not a vio state file (bad magic)", ErrCorrupt)
	}
	le := binary.LittleEndian
	version := le.Uint32(hdr[len(Magic):])
	size := le.Uint32(hdr[len(Magic)+4:])
	sum := le.Uint32(hdr[len(Magic)+8:])
	switch {
	case version == 0:
		return nil, fmt.Errorf("%w: format version 0", ErrCorrupt)
	case version > FormatVersion:
		return nil, fmt.Errorf("%w: snapshot was written by a newer vio (format %d, this vio reads up to %d): upgrade vio", ErrNewer, version, FormatVersion)
	case size > MaxBodySize:
		return nil, fmt.Errorf("%w: body of %d bytes, the limit is %d", ErrCorrupt, size, MaxBodySize)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("%w: body: %w", ErrCorrupt, err)
	}
	if crc32.Checksum(b, castagnoli) != sum {
		return nil, fmt.Errorf("%w: checksum mismatch (the file is damaged or truncated)", ErrCorrupt)
	}
	var bd body
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&bd); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: data after the body", ErrCorrupt)
	}
	if len(bd.Sections) > MaxSections {
		return nil, fmt.Errorf("%w: %d sections, the limit is %d", ErrCorrupt, len(bd.Sections), MaxSections)
	}
	s := New()
	for _, sec := range bd.Sections {
		switch {
		case !validName(sec.ID, MaxIDLen):
			return nil, fmt.Errorf("%w: bad section id %q", ErrCorrupt, sec.ID)
		case !validName(sec.Kind, MaxKindLen):
			return nil, fmt.Errorf("%w: section %q has a bad kind %q", ErrCorrupt, sec.ID, sec.Kind)
		case len(sec.Data) > MaxSectionSize:
			return nil, fmt.Errorf("%w: section %q of %d bytes", ErrCorrupt, sec.ID, len(sec.Data))
		case len(sec.Data) == 0:
			return nil, fmt.Errorf("%w: section %q has no data", ErrCorrupt, sec.ID)
		}
		if _, dup := s.index[sec.ID]; dup {
			return nil, fmt.Errorf("%w: section %q appears twice", ErrCorrupt, sec.ID)
		}
		s.index[sec.ID] = len(s.sections)
		s.sections = append(s.sections, sec)
	}
	return s, nil
}
