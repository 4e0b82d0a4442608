package memory

import (
	"bytes"
	"errors"
	"slices"
	"testing"
)

func newTwo(t *testing.T) *Memory {
	t.Helper()
	m, err := New([]Layout{{GPA: 0x10000, Size: 0x2000}, {GPA: 0, Size: 0x1000}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func TestReadWriteBounds(t *testing.T) {
	m := newTwo(t)
	if m.Size() != 0x3000 || m.Regions()[0].GPA != 0 {
		t.Fatalf("size %#x regions %v", m.Size(), len(m.Regions()))
	}
	in := []byte("hello")
	if _, err := m.WriteAt(in, 0x10ffe); err != nil {
		t.Fatal(err)
	}
	out := make([]byte, 5)
	if _, err := m.ReadAt(out, 0x10ffe); err != nil || !bytes.Equal(in, out) {
		t.Fatalf("read %q, %v", out, err)
	}
	for _, c := range []struct {
		gpa int64
		n   int
	}{
		{0xffe, 4},              // crosses the end of region 0 into a hole
		{0x1000, 1},             // in the hole
		{0x11ffd, 4},            // runs off the end
		{-1, 1},                 // negative
		{0x7fffffffffffffff, 2}, // far away
	} {
		if _, err := m.ReadAt(make([]byte, c.n), c.gpa); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("ReadAt(%#x,%d) = %v, want ErrOutOfRange", c.gpa, c.n, err)
		}
		if _, err := m.WriteAt(make([]byte, c.n), c.gpa); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("WriteAt(%#x,%d) = %v, want ErrOutOfRange", c.gpa, c.n, err)
		}
	}
	if _, err := m.Slice(0x10000, 1<<63); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("huge slice: %v", err)
	}
}

func TestNewRejects(t *testing.T) {
	for _, l := range [][]Layout{
		{{GPA: 0, Size: 100}},
		{{GPA: 0, Size: 0x2000}, {GPA: 0x1000, Size: 0x1000}},
		{{GPA: 0x800, Size: 0x1000}},
	} {
		if m, err := New(l); err == nil {
			m.Close()
			t.Errorf("New(%v) succeeded", l)
		}
	}
}

func TestAtomics(t *testing.T) {
	m := newTwo(t)
	if err := m.StoreUint16(0x10002, 0xbeef); err != nil {
		t.Fatal(err)
	}
	if err := m.StoreUint16(0x10000, 0x1234); err != nil {
		t.Fatal(err)
	}
	if v, _ := m.LoadUint32(0x10000); v != 0xbeef1234 {
		t.Fatalf("word = %#x", v)
	}
	if v, _ := m.LoadUint16(0x10002); v != 0xbeef {
		t.Fatalf("half = %#x", v)
	}
	// the last two bytes of a region
	if err := m.StoreUint16(0xffe, 7); err != nil {
		t.Fatal(err)
	}
	if v, _ := m.LoadUint16(0xffe); v != 7 {
		t.Fatalf("edge = %d", v)
	}
	if _, err := m.LoadUint16(0x10001); err == nil {
		t.Error("unaligned load accepted")
	}
	if err := m.StoreUint32(0x1000, 1); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("hole store: %v", err)
	}
}

// Every new entry point rejects what Slice rejects, including lengths that
// would wrap gpa+n past 2^64.
func TestBoundsNewAPIs(t *testing.T) {
	m := newTwo(t)
	m.EnableDirtyTracking()
	for _, c := range []struct{ gpa, n uint64 }{
		{0xfff, 2},                          // crosses into the hole
		{0x1000, 0},                         // in the hole, even empty
		{0x12000, 0},                        // one past the last byte
		{0x10001, ^uint64(0)},               // gpa+n wraps to just below gpa
		{0x10000, ^uint64(0) - 0x10000 + 1}, // gpa+n wraps to exactly 0
		{^uint64(0), 1},                     // last address
		{^uint64(0) &^ 0xfff, 0x1000},       // top page
		{0x11fff, 2},                        // off the end of the last region
		{0x10000, 0x2001},                   // one byte too many
		{0x10000, 1 << 63},                  // huge
	} {
		if _, err := m.SliceForWrite(c.gpa, c.n); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("SliceForWrite(%#x, %#x) = %v", c.gpa, c.n, err)
		}
		if err := m.MarkDirty(c.gpa, c.n); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("MarkDirty(%#x, %#x) = %v", c.gpa, c.n, err)
		}
		if _, err := m.Slice(c.gpa, c.n); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("Slice(%#x, %#x) = %v", c.gpa, c.n, err)
		}
	}
	for _, gpa := range []uint64{0x1000, 0x11ffe + 2, ^uint64(0) - 1, ^uint64(0) - 3} {
		if err := m.StoreUint16(gpa, 1); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("StoreUint16(%#x) = %v", gpa, err)
		}
		if err := m.StoreUint32(gpa&^3, 1); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("StoreUint32(%#x) = %v", gpa&^3, err)
		}
	}
	for i := range m.Regions() {
		if b, _ := m.TakeDirty(i); slices.ContainsFunc(b, func(w uint64) bool { return w != 0 }) {
			t.Errorf("region %d: rejected accesses marked pages %#x", i, b)
		}
	}
	// Layouts that reach or pass 2^64.
	for _, l := range []Layout{
		{GPA: ^uint64(0) &^ 0xfff, Size: 0x1000},
		{GPA: 0x1000, Size: ^uint64(0) &^ 0xfff},
	} {
		if m, err := New([]Layout{l}); err == nil {
			m.Close()
			t.Errorf("New(%#x+%#x) succeeded", l.GPA, l.Size)
		}
	}
}
