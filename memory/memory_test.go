package memory

import (
	"bytes"
	"errors"
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
