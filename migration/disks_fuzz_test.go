package migration

import (
	"bytes"
	"testing"
)

// FuzzDecodeDisks feeds arbitrary disks records to the receiver's parser:
// it must never panic nor allocate beyond its bounds, and what it accepts
// must encode back to exactly the input (one way to write each list).
func FuzzDecodeDisks(f *testing.F) {
	good, _ := encodeDisks(NewToken(), []Disk{{ID: "d0", Size: 1 << 30}, {ID: "data-disk", Size: 512}})
	f.Add(good)
	f.Add(good[:len(good)-1])
	f.Add(append(bytes.Clone(good), 0))
	f.Add(make([]byte, 20))
	dup, _ := encodeDisks(Token{}, []Disk{{ID: "x", Size: 1}})
	dup = append(dup, dup[20:]...)
	dup[16] = 2
	f.Add(dup)
	f.Fuzz(func(t *testing.T, b []byte) {
		token, disks, err := decodeDisks(b)
		if err != nil {
			return
		}
		if len(disks) == 0 || len(disks) > MaxCopiedDisks {
			t.Fatalf("accepted %d disks", len(disks))
		}
		again, err := encodeDisks(token, disks)
		if err != nil {
			t.Fatalf("accepted %v, which does not encode: %v", disks, err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("accepted %x, which encodes as %x", b, again)
		}
	})
}

// FuzzDiskPreface: a preface is accepted only with the magic, and its
// token is the 16 bytes after it.
func FuzzDiskPreface(f *testing.F) {
	f.Add(append([]byte(DiskMagic), make([]byte, 16)...))
	f.Add([]byte("VIOMIGR\x00"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		tok, err := ReadDiskPreface(bytes.NewReader(b))
		if err != nil {
			return
		}
		if len(b) < diskPrefaceSize || string(b[:8]) != DiskMagic || !bytes.Equal(tok[:], b[8:24]) {
			t.Fatalf("accepted %x as token %x", b, tok)
		}
	})
}
