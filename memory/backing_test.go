package memory

import (
	"bytes"
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// newMemfd makes a sealed-against-nothing memfd of size bytes filled with
// pattern, as a peer or a snapshot writer would hand one over.
func newMemfd(t *testing.T, size int, pattern byte) int {
	t.Helper()
	fd, err := unix.MemfdCreate("memory-test", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if _, err := unix.Pwrite(fd, bytes.Repeat([]byte{pattern}, size), 0); err != nil {
		t.Fatal(err)
	}
	return fd
}

func TestBackingsLookAlike(t *testing.T) {
	for _, b := range []Backing{Anonymous, Memfd, DefaultBacking} {
		t.Run(b.String(), func(t *testing.T) {
			m, err := NewWithOptions([]Layout{{GPA: 0x10000, Size: 0x2000}, {GPA: 0, Size: 0x1000}}, Options{Backing: b})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			for _, r := range m.Regions() {
				if !bytes.Equal(r.Data, make([]byte, len(r.Data))) {
					t.Fatalf("region %#x is not zero-filled", r.GPA)
				}
			}
			if _, err := m.WriteAt([]byte("abc"), 0x11fff); !errors.Is(err, ErrOutOfRange) {
				t.Errorf("write off the end: %v", err)
			}
			if _, err := m.WriteAt([]byte("abc"), 0x11ffd); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, 3)
			if _, err := m.ReadAt(got, 0x11ffd); err != nil || string(got) != "abc" {
				t.Fatalf("read back %q, %v", got, err)
			}
			_, _, shared := m.Regions()[0].File()
			if want := b == Memfd || b == DefaultBacking && backingDefault == Memfd; shared != want {
				t.Errorf("File() ok = %v, want %v", shared, want)
			}
		})
	}
}

// A second mapping of the fd Region.File hands out is the same memory: what
// a vhost-user back-end would do with SET_MEM_TABLE.
func TestMemfdSecondMapping(t *testing.T) {
	m, err := NewWithOptions([]Layout{{GPA: 0, Size: 0x2000}, {GPA: 0x100000, Size: 0x3000}}, Options{Backing: Memfd})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	r := m.Regions()[1]
	fd, off, ok := r.File()
	if !ok || fd < 0 {
		t.Fatalf("File() = %d, %#x, %v", fd, off, ok)
	}
	if off != 0x2000 {
		t.Errorf("second region at file offset %#x, want %#x (after the first)", off, 0x2000)
	}
	peer, err := unix.Mmap(fd, int64(off), int(r.Size()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(peer)
	if _, err := m.WriteAt([]byte("from the VMM"), 0x101000); err != nil {
		t.Fatal(err)
	}
	if got := string(peer[0x1000 : 0x1000+12]); got != "from the VMM" {
		t.Errorf("peer sees %q", got)
	}
	copy(peer[0x2ff0:], "from the peer")
	got := make([]byte, 13)
	if _, err := m.ReadAt(got, 0x102ff0); err != nil || string(got) != "from the peer" {
		t.Errorf("VMM sees %q, %v", got, err)
	}
	// The peer cannot shrink the file under the VMM's mapping (SIGBUS).
	if err := unix.Ftruncate(fd, 0x1000); err == nil {
		t.Error("a holder of the fd could shrink guest RAM")
	}
}

func TestNewFromFileShared(t *testing.T) {
	fd := newMemfd(t, 0x4000, 0x5a)
	m, err := NewFromFile(fd, []FileRegion{{GPA: 0x200000, Size: 0x1000, Offset: 0x3000}, {GPA: 0, Size: 0x2000, Offset: 0}}, Shared)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.Size() != 0x3000 || m.Regions()[0].GPA != 0 {
		t.Fatalf("size %#x, first region %#x", m.Size(), m.Regions()[0].GPA)
	}
	if v, _ := m.LoadUint32(0x200000); v != 0x5a5a5a5a {
		t.Errorf("mapped file reads %#x", v)
	}
	if err := m.StoreUint32(0x200ffc, 0xfeedf00d); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	if _, err := unix.Pread(fd, b, 0x3ffc); err != nil || !bytes.Equal(b, []byte{0x0d, 0xf0, 0xed, 0xfe}) {
		t.Errorf("file holds % x, %v: shared write did not reach it", b, err)
	}
	dup, off, ok := m.Regions()[1].File()
	if !ok || dup == fd || off != 0x3000 {
		t.Errorf("File() = %d, %#x, %v; want a duplicate of %d at 0x3000", dup, off, ok, fd)
	}
	// NewFromFile sealed the memfd against shrinking.
	if err := unix.Ftruncate(fd, 0x1000); err == nil {
		t.Error("peer could shrink the file under a shared mapping")
	}
}

// A Private mapping restores lazily and never writes back.
func TestNewFromFilePrivate(t *testing.T) {
	fd := newMemfd(t, 0x2000, 0x11)
	m, err := NewFromFile(fd, []FileRegion{{GPA: 0x1000, Size: 0x2000}}, Private)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, _, ok := m.Regions()[0].File(); ok {
		t.Error("a private mapping offered its file for sharing")
	}
	got := make([]byte, 2)
	if _, err := m.ReadAt(got, 0x2ffe); err != nil || !bytes.Equal(got, []byte{0x11, 0x11}) {
		t.Fatalf("restored bytes % x, %v", got, err)
	}
	if _, err := m.WriteAt([]byte{1, 2, 3}, 0x1800); err != nil {
		t.Fatal(err)
	}
	if _, err := m.ReadAt(got, 0x1800); err != nil || !bytes.Equal(got, []byte{1, 2}) {
		t.Fatalf("guest sees % x, %v after writing", got, err)
	}
	file := make([]byte, 0x2000)
	if _, err := unix.Pread(fd, file, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(file, bytes.Repeat([]byte{0x11}, 0x2000)) {
		t.Error("a write to a private mapping reached the file")
	}
}

func TestNewFromFileRejects(t *testing.T) {
	fd := newMemfd(t, 0x3000, 0)
	for _, c := range []struct {
		name string
		rs   []FileRegion
		mode MapMode
		bad  bool // wants ErrBadFile specifically
	}{
		{"file too short", []FileRegion{{GPA: 0, Size: 0x4000}}, Shared, true},
		{"past the end", []FileRegion{{GPA: 0, Size: 0x1000, Offset: 0x3000}}, Private, true},
		{"unaligned offset", []FileRegion{{GPA: 0, Size: 0x1000, Offset: 0x800}}, Shared, true},
		{"offset wraps", []FileRegion{{GPA: 0, Size: 0x2000, Offset: ^uint64(0) &^ 0xfff}}, Shared, true},
		{"offset past int64", []FileRegion{{GPA: 0, Size: 0x1000, Offset: 1 << 63}}, Shared, true},
		{"overlapping GPAs", []FileRegion{{GPA: 0, Size: 0x2000}, {GPA: 0x1000, Size: 0x1000, Offset: 0x2000}}, Shared, false},
		{"GPA wraps", []FileRegion{{GPA: ^uint64(0) &^ 0xfff, Size: 0x2000}}, Shared, false},
		{"empty region", []FileRegion{{GPA: 0, Size: 0}}, Shared, false},
		{"unknown mode", []FileRegion{{GPA: 0, Size: 0x1000}}, MapMode(7), false},
	} {
		m, err := NewFromFile(fd, c.rs, c.mode)
		if err == nil {
			m.Close()
			t.Errorf("%s: accepted", c.name)
			continue
		}
		if c.bad && !errors.Is(err, ErrBadFile) {
			t.Errorf("%s: %v, want ErrBadFile", c.name, err)
		}
	}
	if _, err := NewFromFile(-1, []FileRegion{{GPA: 0, Size: 0x1000}}, Shared); !errors.Is(err, ErrBadFile) {
		t.Errorf("closed fd: %v", err)
	}
}

func TestNewWithOptionsRejectsBacking(t *testing.T) {
	if m, err := NewWithOptions([]Layout{{Size: 0x1000}}, Options{Backing: Backing(9)}); err == nil {
		m.Close()
		t.Error("unknown backing accepted")
	}
}

// After Disown, the process that handed guest RAM over cannot reach it:
// its writes land in private memory, the other mapping keeps the guest's
// bytes, reads here do not fault, and the file is no longer offered.
func TestDisown(t *testing.T) {
	src, err := NewWithOptions([]Layout{{GPA: 0, Size: 0x2000}, {GPA: 0x100000, Size: 0x3000}}, Options{Backing: Memfd})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	var frs []FileRegion
	var fd int
	for _, r := range src.Regions() {
		f, off, ok := r.File()
		if !ok {
			t.Fatal("no file")
		}
		fd = f
		frs = append(frs, FileRegion{GPA: r.GPA, Size: r.Size(), Offset: off})
	}
	dst, err := NewFromFile(fd, frs, Shared)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if _, err := src.WriteAt([]byte("guest"), 0x100010); err != nil {
		t.Fatal(err)
	}
	if err := src.Disown(); err != nil {
		t.Fatal(err)
	}
	if _, err := src.WriteAt([]byte("stray"), 0x100010); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	dst.ReadAt(got, 0x100010)
	if string(got) != "guest" {
		t.Errorf("the other mapping reads %q after the disowned side wrote", got)
	}
	src.ReadAt(got, 0x1000)
	for _, r := range src.Regions() {
		if _, _, ok := r.File(); ok {
			t.Errorf("region %#x still offers its file", r.GPA)
		}
	}
}
