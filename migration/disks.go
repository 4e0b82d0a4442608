package migration

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"unicode/utf8"
)

// Disks that are not on storage both hosts see are copied with the VM
// (docs/migration.md, "Disks not on shared storage"): the source names
// them in a disks record after the config, with the token that opens the
// destination's exports; the destination opens its own image of each and
// serves it over NBD, on further connections to the migration's listener
// that open with a disk preface (diskconns.go) carrying that token; the
// source mirrors each disk into its export until it is in sync, and only
// then starts copying RAM. From then on every guest write reaches both
// images, so the disks are in sync at the switchover, where the source
// flushes and disconnects them before it sends the device state.
//
// Why the copy comes first: QEMU's drive-mirror and its management tools
// order it the same way. RAM copied while a disk still syncs would be
// dirtied again by the time the disk is done, and the two copies would
// share the link.

// Disk is a disk the source copies: its id in the config and its size in
// bytes (the destination's image must have exactly that size).
type Disk struct {
	ID   string
	Size int64
}

// Token names one migration's disk copy: only connections presenting it
// reach the destination's exports. It travels in the migration stream
// (under TLS when the migration has it).
type Token [16]byte

// NewToken returns a random token.
func NewToken() Token {
	var t Token
	rand.Read(t[:])
	return t
}

// Limits on a disks record, which the receiver checks before it
// allocates.
const (
	MaxCopiedDisks = 64
	MaxDiskIDLen   = 255
	maxDisksRecord = len(Token{}) + 4 + MaxCopiedDisks*(8+1+MaxDiskIDLen)
)

// DiskCopier copies the source's disks to the destination (vmm's
// diskCopy). Send announces Disks, starts the copy once the destination
// is ready, waits until Ready, and checks Err after every pre-copy
// iteration; the caller tears the copy down when Send fails.
type DiskCopier interface {
	// Disks are the disks to copy, in the order the record lists them.
	Disks() []Disk
	// Start begins the copy into the destination's exports, reached with
	// token. On error nothing is copying.
	Start(token Token) error
	// Ready is closed once every disk is in sync (each guest write then
	// reaches both sides) or a copy has failed (Err says).
	Ready() <-chan struct{}
	// Progress returns the bytes copied so far and the bytes to copy.
	Progress() (copied, total uint64)
	// Err is why a disk's copy failed, or nil: a disk that fell out of
	// sync (the destination stopped answering) fails the migration.
	Err() error
}

// DiskTarget is a Target that can take copies of the source's disks.
type DiskTarget interface {
	Target
	// BuildCopying builds the VM as Build does, and opens the
	// destination's own image of each of disks for the source to copy
	// into over connections that present token; it serves them until the
	// VM is restored or discarded. A disk it cannot take (no image, a
	// size that differs, a disk that is not in the config) fails it
	// with one sentence naming the disk.
	BuildCopying(config []byte, disks []Disk, token Token) (Incoming, error)
}

func (e *encoder) disks(token Token, ds []Disk) error {
	b, err := encodeDisks(token, ds)
	if err != nil {
		return err
	}
	return e.record(recDisks, nil, b)
}

// encodeDisks is the disks record's payload: the token, a count u32,
// then per disk its size u64, the length of its id u8 and the id.
func encodeDisks(token Token, ds []Disk) ([]byte, error) {
	if len(ds) == 0 || len(ds) > MaxCopiedDisks {
		return nil, fmt.Errorf("migration: %d disks to copy, want 1 to %d", len(ds), MaxCopiedDisks)
	}
	b := append([]byte(nil), token[:]...)
	b = le.AppendUint32(b, uint32(len(ds)))
	for _, d := range ds {
		if err := checkDisk(d); err != nil {
			return nil, fmt.Errorf("migration: %w", err)
		}
		b = le.AppendUint64(b, uint64(d.Size))
		b = append(b, byte(len(d.ID)))
		b = append(b, d.ID...)
	}
	return b, nil
}

func checkDisk(d Disk) error {
	switch {
	case d.ID == "" || len(d.ID) > MaxDiskIDLen:
		return fmt.Errorf("disk id %q: want 1 to %d bytes", d.ID, MaxDiskIDLen)
	case !utf8.ValidString(d.ID) || bytes.IndexByte([]byte(d.ID), 0) >= 0:
		return fmt.Errorf("disk id %q is not valid UTF-8 without NUL", d.ID)
	case d.Size <= 0:
		return fmt.Errorf("disk %s of %d bytes", d.ID, d.Size)
	}
	return nil
}

// decodeDisks parses a disks record (hostile): every length is checked
// before it is used, ids must be unique, and nothing may follow the last.
func decodeDisks(b []byte) (Token, []Disk, error) {
	var t Token
	if len(b) < len(t)+4 || len(b) > maxDisksRecord {
		return t, nil, protoErr("disks record of %d bytes", len(b))
	}
	copy(t[:], b)
	n := le.Uint32(b[len(t):])
	if n == 0 || n > MaxCopiedDisks {
		return t, nil, protoErr("disks record with %d disks, want 1 to %d", n, MaxCopiedDisks)
	}
	b = b[len(t)+4:]
	ds := make([]Disk, 0, n)
	seen := map[string]bool{}
	for range n {
		if len(b) < 9 {
			return t, nil, protoErr("disks record cut short")
		}
		size, l := le.Uint64(b), int(b[8])
		b = b[9:]
		if len(b) < l {
			return t, nil, protoErr("disks record cut short")
		}
		d := Disk{ID: string(b[:l]), Size: int64(size)}
		b = b[l:]
		if size > 1<<62 {
			return t, nil, protoErr("disk %q of %d bytes", d.ID, size)
		}
		if err := checkDisk(d); err != nil {
			return t, nil, protoErr("%v", err)
		}
		if seen[d.ID] {
			return t, nil, protoErr("disk %q named twice", d.ID)
		}
		seen[d.ID] = true
		ds = append(ds, d)
	}
	if len(b) != 0 {
		return t, nil, protoErr("%d bytes after the last disk", len(b))
	}
	return t, ds, nil
}

func (e *encoder) diskProgress(copied, total uint64) error {
	var h [16]byte
	b := le.AppendUint64(h[:0], copied)
	return e.record(recDiskProgress, le.AppendUint64(b, total), nil)
}

// DiskMagic opens a connection that carries a disk's copy rather than a
// migration stream: the magic, then the migration's token; the NBD
// handshake follows.
const DiskMagic = "VIODISK\x00"

const diskPrefaceSize = len(DiskMagic) + len(Token{})

// WriteDiskPreface opens a disk connection.
func WriteDiskPreface(w io.Writer, t Token) error {
	_, err := w.Write(append([]byte(DiskMagic), t[:]...))
	return err
}

// ReadDiskPreface reads a disk connection's preface (fixed size: nothing a
// peer sends makes it read more) and returns its token.
func ReadDiskPreface(r io.Reader) (Token, error) {
	var b [diskPrefaceSize]byte
	var t Token
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return t, protoErr("disk connection preface: %v", eofIsUnexpected(err))
	}
	if string(b[:len(DiskMagic)]) != DiskMagic {
		return t, protoErr("not a vio disk connection (bad magic)")
	}
	copy(t[:], b[len(DiskMagic):])
	return t, nil
}
