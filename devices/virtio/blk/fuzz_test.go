package blk

import (
	"encoding/binary"
	"testing"

	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/virtio"
)

func fuzzHeader(typ uint32, sector uint64, rest ...byte) []byte {
	b := make([]byte, HeaderSize, HeaderSize+len(rest))
	binary.LittleEndian.PutUint32(b, typ)
	binary.LittleEndian.PutUint64(b[8:], sector)
	return append(b, rest...)
}

// FuzzRequest feeds arbitrary requests, split arbitrarily into
// descriptors, to the request handler: it must never panic, must write the
// status as the last writable byte with a defined value, report no more
// than the writable length, and never change the disk's size.
func FuzzRequest(f *testing.F) {
	seg := func(sector uint64, n, flags uint32) []byte {
		b := make([]byte, SegmentSize)
		binary.LittleEndian.PutUint64(b, sector)
		binary.LittleEndian.PutUint32(b[8:], n)
		binary.LittleEndian.PutUint32(b[12:], flags)
		return b
	}
	f.Add(fuzzHeader(TypeIn, 3), uint64(0), uint32(1025), uint8(0xff))
	f.Add(fuzzHeader(TypeOut, 1, make([]byte, 1024)...), uint64(0x0305), uint32(1), uint8(0xff))
	f.Add(fuzzHeader(TypeOut, 127, make([]byte, 1024)...), uint64(7), uint32(1), uint8(0xff))
	f.Add(fuzzHeader(TypeFlush, 0), uint64(0), uint32(1), uint8(0xff))
	f.Add(fuzzHeader(TypeGetID, 0), uint64(0), uint32(21), uint8(0xff))
	f.Add(fuzzHeader(TypeDiscard, 0, append(seg(2, 4, 0), seg(100, 1, 0)...)...), uint64(0), uint32(1), uint8(0xff))
	f.Add(fuzzHeader(TypeWriteZeroes, 0, seg(2, 4, 1)...), uint64(0x11), uint32(1), uint8(0xff))
	f.Add(fuzzHeader(TypeWriteZeroes, 0, seg(1<<60, 4, 0)...), uint64(0), uint32(1), uint8(0))
	f.Add(fuzzHeader(TypeIn, 1<<56), uint64(0), uint32(513), uint8(0xff))
	f.Add([]byte{1, 2, 3}, uint64(0), uint32(1), uint8(0xff))
	f.Add(fuzzHeader(TypeOut, 0, 1, 2, 3), uint64(0), uint32(0), uint8(0xff))

	const diskSize = 64 << 10
	f.Fuzz(func(t *testing.T, readable []byte, cuts uint64, wlen uint32, feat uint8) {
		wlen %= 70 << 10
		mem := blocktest.NewMem(diskSize)
		d, err := New(mem, Config{Serial: "fuzz", ReadOnly: feat&0x80 == 0 && feat&1 != 0, SizeMax: uint32(feat&0x40) << 6})
		if err != nil {
			t.Fatal(err)
		}
		var negotiated uint64
		for i, fb := range []uint64{FeatureFlush, FeatureDiscard, FeatureWriteZeroes, FeatureConfigWCE} {
			if feat&(2<<i) != 0 {
				negotiated |= fb & d.features
			}
		}
		d.negotiate.Store(negotiated)
		c := &virtio.Chain{}
		c.Readable = cut(readable, cuts)
		w := make([]byte, wlen)
		for i := range w {
			w[i] = 0xee
		}
		c.Writable = cut(w, cuts>>32)
		wk := &worker{d: d}
		var n uint32
		res := tryNot
		if feat&0x20 != 0 {
			// The queue goroutine's inline read first, as it tries one;
			// a request it does not serve goes to handle as it would to
			// a worker.
			n, res = wk.tryRead(c, memTry{mem}) // all zeroes
			if res == tryServed {
				if w[wlen-1] != StatusOK {
					t.Fatalf("inline read served with status %d", w[wlen-1])
				}
				for _, b := range w[:wlen-1] {
					if b != 0 {
						t.Fatal("inline read of zeroes put other bytes in the data area")
					}
				}
			}
		}
		if res != tryServed {
			n = wk.handle(c)
		}
		switch {
		case wlen == 0 && n != 0:
			t.Fatalf("wrote %d bytes into no writable buffer", n)
		case wlen > 0 && n != wlen:
			t.Fatalf("used length %d of %d", n, wlen)
		case wlen > 0 && w[wlen-1] > StatusUnsupp:
			t.Fatalf("status %d", w[wlen-1])
		}
		if mem.Size() != diskSize {
			t.Fatalf("disk size changed to %d", mem.Size())
		}
	})
}

// memTry serves every try from a memory disk.
type memTry struct{ *blocktest.Mem }

func (m memTry) TryReadvAt(bufs [][]byte, off int64) (int, error) { return m.ReadvAt(bufs, off) }

// cut splits b into up to four pieces at positions taken from cuts.
func cut(b []byte, cuts uint64) virtio.Buffers {
	var out virtio.Buffers
	for i := 0; i < 3 && len(b) > 0; i++ {
		k := int(cuts>>(16*i)&0xffff) % (len(b) + 1)
		if k > 0 {
			out = append(out, b[:k])
			b = b[k:]
		}
	}
	if len(b) > 0 {
		out = append(out, b)
	}
	return out
}
