package memory

import (
	"errors"
	"math/bits"
	"testing"
)

// FuzzAccess checks every guest-reachable entry point's address/length
// check against an oracle written differently (with a 128-bit end address,
// so wrap-around cannot hide), and that a successful write marks exactly
// the pages it covers.
func FuzzAccess(f *testing.F) {
	const high = 0xffff_ffff_fffe_0000
	layout := []Layout{{GPA: 0, Size: 0x3000}, {GPA: 0x100000, Size: 0x2000}, {GPA: high, Size: 0x10000}}
	m, err := New(layout)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { m.Close() })
	m.EnableDirtyTracking()

	for _, s := range []struct {
		gpa, n uint64
		op     uint8
	}{
		{0, 0x3000, 0}, {0x2fff, 1, 1}, {0x2fff, 2, 2}, {0x100000, ^uint64(0), 3},
		{high, 0x10000, 1}, {high + 0xfffe, 2, 6}, {high + 0xfffc, 4, 8}, {^uint64(0), 1, 4},
		{0x1000, 0x2000, 5}, {1 << 63, 1, 4},
	} {
		f.Add(s.gpa, s.n, s.op)
	}

	inside := func(gpa, n uint64) (int, uint64, bool) {
		end, carry := bits.Add64(gpa, n, 0)
		for i, r := range m.Regions() {
			if carry == 0 && gpa >= r.GPA && gpa < r.GPA+r.Size() && end <= r.GPA+r.Size() {
				return i, gpa - r.GPA, true
			}
		}
		return -1, 0, false
	}

	f.Fuzz(func(t *testing.T, gpa, n uint64, op uint8) {
		width := uint64(0) // bytes written, for the dirty check
		var err error
		ok := false
		region, off, in := inside(gpa, n)
		switch op % 9 {
		case 0:
			var s []byte
			s, err = m.Slice(gpa, n)
			ok = in
			if err == nil && uint64(len(s)) != n {
				t.Fatalf("Slice(%#x, %#x) has length %d", gpa, n, len(s))
			}
		case 1:
			var s []byte
			s, err = m.SliceForWrite(gpa, n)
			ok, width = in, n
			if err == nil {
				if uint64(len(s)) != n {
					t.Fatalf("SliceForWrite(%#x, %#x) has length %d", gpa, n, len(s))
				}
				if n > 0 {
					s[0]++
					if s[0] != m.Regions()[region].Data[off] {
						t.Fatalf("SliceForWrite(%#x) does not alias its GPA", gpa)
					}
				}
			}
		case 2:
			err = m.MarkDirty(gpa, n)
			ok, width = in, n
		case 3, 4:
			n &= 0xffff // bound the buffer; the address stays free
			region, off, in = inside(gpa, n)
			ok = in && gpa <= 1<<63-1
			p := make([]byte, n)
			if op%9 == 3 {
				_, err = m.ReadAt(p, int64(gpa))
			} else {
				_, err = m.WriteAt(p, int64(gpa))
				width = n
			}
		case 5:
			_, err = m.LoadUint16(gpa)
			region, off, in = inside(gpa, 2)
			ok = in && gpa%2 == 0
		case 6:
			err = m.StoreUint16(gpa, uint16(n))
			region, off, in = inside(gpa, 2)
			ok, width = in && gpa%2 == 0, 2
		case 7:
			_, err = m.LoadUint32(gpa)
			region, off, in = inside(gpa, 4)
			ok = in && gpa%4 == 0
		case 8:
			err = m.StoreUint32(gpa, uint32(n))
			region, off, in = inside(gpa, 4)
			ok, width = in && gpa%4 == 0, 4
		}
		if ok != (err == nil) {
			t.Fatalf("op %d at %#x+%#x: err %v, oracle says in range = %v", op%9, gpa, n, err, ok)
		}
		if err != nil && !errors.Is(err, ErrOutOfRange) {
			t.Fatalf("op %d at %#x+%#x: %v is not ErrOutOfRange", op%9, gpa, n, err)
		}
		for i := range m.Regions() {
			b, err := m.TakeDirty(i)
			if err != nil {
				t.Fatal(err)
			}
			for p := range DirtyPages(b) {
				a := p * DirtyPageSize
				if !ok || width == 0 || i != region || a+DirtyPageSize <= off || a >= off+width {
					t.Fatalf("op %d at %#x+%#x: region %d page %d marked", op%9, gpa, n, i, p)
				}
			}
			if ok && width > 0 && i == region {
				for p := off / DirtyPageSize; p <= (off+width-1)/DirtyPageSize; p++ {
					if b[p/64]&(1<<(p%64)) == 0 {
						t.Fatalf("op %d at %#x+%#x: page %d not marked", op%9, gpa, n, p)
					}
				}
			}
		}
	})
}
