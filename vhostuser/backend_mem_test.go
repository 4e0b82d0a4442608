package vhostuser

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/memory"
)

// TestSharedMemoryRegions maps a table of two regions of one memfd at
// guest and user addresses that differ, as QEMU sends them (RAM below and
// above a hole), and checks the translation and the accesses: within a
// region they reach the right bytes of the file; across two regions, in
// the hole or past the end they fail with ErrOutOfRange.
func TestSharedMemoryRegions(t *testing.T) {
	fd, err := unix.MemfdCreate("shared-memory-test", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, 3<<16); err != nil {
		t.Fatal(err)
	}
	tbl := MemoryTable{Regions: []MemoryRegion{
		{GuestAddr: 0, Size: 1 << 16, UserAddr: 0x7000_0000_0000, MmapOffset: 0},
		{GuestAddr: 1 << 20, Size: 2 << 16, UserAddr: 0x7000_0001_0000, MmapOffset: 1 << 16},
	}}
	m, err := mapMemoryTable(tbl, []int{fd, fd})
	if err != nil {
		t.Fatal(err)
	}
	defer m.close()
	for _, c := range []struct {
		ua, n, gpa uint64
		ok         bool
	}{
		{0x7000_0000_0000, 16, 0, true},
		{0x7000_0000_fff0, 16, 0xfff0, true},
		{0x7000_0000_fff8, 16, 0, false}, // crosses into the next region
		{0x7000_0001_0000, 2 << 16, 1 << 20, true},
		{0x7000_0003_0000, 1, 0, false}, // past the end
		{0x6fff_ffff_fff0, 32, 0, false},
		{^uint64(0) - 4, 16, 0, false}, // would wrap
	} {
		gpa, err := m.userToGPA(c.ua, c.n)
		if c.ok != (err == nil) || c.ok && gpa != c.gpa {
			t.Errorf("userToGPA(%#x, %d) = %#x, %v", c.ua, c.n, gpa, err)
		}
		if !c.ok && !errors.Is(err, ErrBadAddress) {
			t.Errorf("userToGPA(%#x, %d): %v, want ErrBadAddress", c.ua, c.n, err)
		}
	}
	// A write at GPA 1 MiB + 8 lands at file offset 64 KiB + 8.
	if _, err := m.WriteAt([]byte("region 2"), 1<<20+8); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 8)
	if _, err := unix.Pread(fd, got, 1<<16+8); err != nil || string(got) != "region 2" {
		t.Fatalf("file holds %q at 64 KiB + 8 (%v)", got, err)
	}
	if err := m.StoreUint16(1<<20+2, 0xbeef); err != nil {
		t.Fatal(err)
	}
	if v, err := m.LoadUint16(1<<20 + 2); err != nil || v != 0xbeef {
		t.Fatalf("LoadUint16: %#x %v", v, err)
	}
	for _, bad := range []struct{ addr, n uint64 }{
		{0xfff8, 16},       // across the end of region 1 into the hole
		{0x80000, 1},       // in the hole
		{3 << 20, 1},       // past the last region
		{1<<20 + 2<<16, 1}, // just past region 2
	} {
		if _, err := m.Slice(bad.addr, bad.n); !errors.Is(err, memory.ErrOutOfRange) {
			t.Errorf("Slice(%#x, %d): %v", bad.addr, bad.n, err)
		}
		if _, err := m.SliceForWrite(bad.addr, bad.n); !errors.Is(err, memory.ErrOutOfRange) {
			t.Errorf("SliceForWrite(%#x, %d): %v", bad.addr, bad.n, err)
		}
	}
	if _, err := m.ReadAt(got, -8); !errors.Is(err, memory.ErrOutOfRange) {
		t.Errorf("ReadAt(-8): %v", err)
	}
	if _, err := m.LoadUint32(0x80000); !errors.Is(err, memory.ErrOutOfRange) {
		t.Errorf("LoadUint32 in the hole: %v", err)
	}
}
