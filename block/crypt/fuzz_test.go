package crypt

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"testing"
)

// sparseDev is a read-only image: data at offset 0, zeroes after it up to
// size. It lets the fuzzer hand out a "large" image without allocating it.
type sparseDev struct {
	data []byte
	size int64
}

func (s *sparseDev) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= s.size {
		return 0, io.EOF
	}
	n := min(int64(len(p)), s.size-off)
	clear(p[:n])
	if off < int64(len(s.data)) {
		copy(p[:n], s.data[off:])
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

func (s *sparseDev) WriteAt(p []byte, off int64) (int, error) {
	return 0, errors.New("read-only")
}
func (s *sparseDev) Flush() error { return nil }
func (s *sparseDev) Size() int64  { return s.size }

// fixChecksum recomputes the checksum of the header copy at off in b, so
// that mutations reach the JSON checks instead of dying at the checksum.
func fixChecksum(b []byte, off int64) {
	if int64(len(b)) < off+binHeaderSize {
		return
	}
	area := b[off:]
	n := int64(len(area))
	if s := int64(binaryHdrSize(area)); s > 0 && s <= n {
		n = s
	}
	h, ok := hashByName("sha256")
	if !ok {
		return
	}
	copy(area[offCsum:offCsum+csumLen], make([]byte, csumLen))
	copy(area[offCsum:], checksum(h, area[:n]))
}

func binaryHdrSize(area []byte) uint64 {
	var n uint64
	for _, c := range area[offHdrSize : offHdrSize+8] {
		n = n<<8 | uint64(c)
	}
	if !validHdrSize(n) {
		return 0
	}
	return n
}

// FuzzHeader feeds hostile headers to the parser: the first 512 bytes of
// a binary header (the rest of its 4096 bytes is padding) and the JSON
// text, assembled into a primary copy and, with both set, a secondary copy
// behind it. (The fuzz input stays small: the fuzzer slows down in
// proportion to the input's size.) With fix set, the checksums are made
// right first so that the mutated fields and JSON are parsed. A header
// that parses must describe an image the rest of the package can use
// without panicking: it encodes, parses back and dumps. Unlocking runs the
// header's KDF, whose cost the header chooses within the bounds metadata.go
// sets; TestFuzzSeedsParse checks that costs beyond them are refused.
func FuzzHeader(f *testing.F) {
	m := newVolume(f, 1<<20, FormatOptions{})
	v, err := ReadVolume(m)
	if err != nil {
		f.Fatal(err)
	}
	if _, err := v.AddKey(testPass, []byte("two"), fastArgon); err != nil {
		f.Fatal(err)
	}
	img := m.Bytes()
	bin := img[:512]
	js := img[binHeaderSize:formatHdrSize]
	js = js[:bytes.IndexByte(js, 0)]
	f.Add(bin, js, false, true)
	f.Add(bin, js, true, true)
	f.Add(bin, js, true, false)
	f.Fuzz(func(t *testing.T, bin, js []byte, fix, both bool) {
		if len(bin) > 512 || len(js) > 64<<10 {
			return
		}
		data := assemble(bin, js, fix, both)
		dev := &sparseDev{data: data, size: FormatDataOffset + 1<<20}
		v, err := ReadVolume(dev)
		if err != nil {
			return
		}
		v.Dump(io.Discard)
		out, err := v.hdr.meta.encode()
		if err != nil {
			t.Fatalf("a parsed header does not encode: %v", err)
		}
		var back Metadata
		if err := json.Unmarshal(out, &back); err != nil {
			t.Fatalf("encoded metadata does not decode: %v", err)
		}
		if err := back.check(v.hdr.hdrSize); err != nil {
			t.Fatalf("metadata that passed its checks fails them after a round trip: %v", err)
		}
	})
}

// assemble builds FuzzHeader's image from its input.
func assemble(bin, js []byte, fix, both bool) []byte {
	hsize := int64(binaryHdrSize(append(bytes.Clone(bin), make([]byte, 512)...)))
	if hsize == 0 {
		hsize = formatHdrSize
	}
	data := make([]byte, 2*hsize)
	copy(data, bin)
	copy(data[binHeaderSize:hsize], js)
	if both {
		copy(data[hsize:], data[:hsize])
		copy(data[hsize:], magicSecondary)
		for i := 0; i < 8; i++ {
			data[hsize+offHdrOffset+int64(i)] = byte(uint64(hsize) >> (56 - 8*i))
		}
	}
	if fix {
		fixChecksum(data, 0)
		if both {
			fixChecksum(data, hsize)
		}
	}
	return data
}

// TestFuzzSeedsParse keeps FuzzHeader honest: its seeds must reach the
// metadata checks, and a change to the JSON that breaks a rule must be
// refused.
func TestFuzzSeedsParse(t *testing.T) {
	m := newVolume(t, 1<<20, FormatOptions{KDF: fastArgon})
	img := m.Bytes()
	bin, js := img[:512], img[binHeaderSize:formatHdrSize]
	js = js[:bytes.IndexByte(js, 0)]
	for _, c := range []struct{ fix, both bool }{{false, true}, {true, true}, {true, false}} {
		if _, err := ReadVolume(&sparseDev{data: assemble(bin, js, c.fix, c.both), size: FormatDataOffset + 1<<20}); err != nil {
			t.Errorf("seed %+v: %v", c, err)
		}
	}
	bad := map[string]string{
		`"sector_size":4096`:         `"sector_size":4097`,
		`"offset":"16777216"`:        `"offset":"4096"`,
		`"stripes":4000`:             `"stripes":4000000`,
		`"type":"luks1"`:             `"type":"luks9"`,
		`"iterations":1000`:          `"iterations":0`,
		`"keyslots":["0"]`:           `"keyslots":["7"]`,
		`"json_size":"12288"`:        `"json_size":"4096"`,
		`"keyslots_size":"16744448"`: `"keyslots_size":"999999999"`,
	}
	for from, to := range bad {
		j := bytes.Replace(js, []byte(from), []byte(to), 1)
		if bytes.Equal(j, js) {
			t.Errorf("the seed's JSON has no %s", from)
			continue
		}
		if _, err := ReadVolume(&sparseDev{data: assemble(bin, j, true, false), size: FormatDataOffset + 1<<20}); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s accepted (%v)", to, err)
		}
	}
}
