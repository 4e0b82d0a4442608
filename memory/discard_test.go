package memory

import (
	"bytes"
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// TestDiscardReleases: after Discard the pages are gone from the host
// (mincore; for a memfd, the file's allocated blocks too), read as zeros,
// and the pages around them keep their bytes.
func TestDiscardReleases(t *testing.T) {
	const size = 64 << 10
	for _, b := range []Backing{Anonymous, Memfd} {
		t.Run(b.String(), func(t *testing.T) {
			m, err := NewWithOptions([]Layout{{GPA: 0x100000, Size: size}}, Options{Backing: b})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			r := m.Regions()[0]
			// Small pages only, so that residency is counted per 4 KiB.
			unix.Madvise(r.Data, unix.MADV_NOHUGEPAGE)
			if _, err := m.WriteAt(bytes.Repeat([]byte{0xa5}, size), 0x100000); err != nil {
				t.Fatal(err)
			}
			if got := resident(t, r.Data); got != size/4096 {
				t.Fatalf("%d pages resident after filling, want %d", got, size/4096)
			}
			blocks := func() int64 {
				fd, _, ok := r.File()
				if !ok {
					return -1
				}
				var st unix.Stat_t
				if err := unix.Fstat(fd, &st); err != nil {
					t.Fatal(err)
				}
				return st.Blocks
			}
			before := blocks()
			if err := m.Discard(0x104000, 0x8000); err != nil {
				t.Fatal(err)
			}
			if got := resident(t, r.Data); got != size/4096-8 {
				t.Errorf("%d pages resident after releasing 8, want %d", got, size/4096-8)
			}
			if b == Memfd {
				if after := blocks(); before-after != 0x8000/512 {
					t.Errorf("memfd blocks %d -> %d, want %d fewer", before, after, 0x8000/512)
				}
			}
			got := make([]byte, size)
			m.ReadAt(got, 0x100000)
			want := bytes.Repeat([]byte{0xa5}, size)
			clear(want[0x4000:0xc000])
			if !bytes.Equal(got, want) {
				t.Error("after Discard the range does not read as zeros, or its neighbours changed")
			}
		})
	}
}

// TestDiscardChecks: a range outside RAM, across a hole, unaligned or
// wrapping is refused and releases nothing.
func TestDiscardChecks(t *testing.T) {
	m, err := New([]Layout{{GPA: 0, Size: 0x4000}, {GPA: 0x10000, Size: 0x4000}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for _, r := range m.Regions() {
		for i := range r.Data {
			r.Data[i] = 1
		}
	}
	for _, c := range []struct {
		gpa, n uint64
		want   error
	}{
		{0x4000, 0x1000, ErrOutOfRange},
		{0x3000, 0x2000, ErrOutOfRange},               // runs off region 0
		{0x2000, 0xf000, ErrOutOfRange},               // across the hole
		{0x13000, ^uint64(0) &^ 0xfff, ErrOutOfRange}, // wraps
		{0x1001, 0x1000, ErrUnaligned},
		{0x1000, 0x800, ErrUnaligned},
		{1 << 63, 0x1000, ErrOutOfRange},
	} {
		if err := m.Discard(c.gpa, c.n); !errors.Is(err, c.want) {
			t.Errorf("Discard(%#x, %#x) = %v, want %v", c.gpa, c.n, err, c.want)
		}
	}
	for _, r := range m.Regions() {
		if !bytes.Equal(r.Data, bytes.Repeat([]byte{1}, len(r.Data))) {
			t.Errorf("a refused Discard changed region %#x", r.GPA)
		}
	}
	if err := m.Discard(0x10000, 0); err != nil {
		t.Errorf("empty Discard: %v", err)
	}
}

// TestDiscardMarksDirty: the released range changed content, so with
// tracking on it is in the dirty bitmap (and nothing else is).
func TestDiscardMarksDirty(t *testing.T) {
	m, err := New([]Layout{{GPA: 0, Size: 0x40000}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Discard(0x3000, 0x2000); err != nil {
		t.Fatal(err)
	}
	m.EnableDirtyTracking()
	if err := m.Discard(0x5000, 0x3000); err != nil {
		t.Fatal(err)
	}
	bm, err := m.TakeDirty(0)
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(0x7) << 5; bm[0] != want {
		t.Errorf("dirty bitmap %#x, want %#x (pages 5-7)", bm[0], want)
	}
}
