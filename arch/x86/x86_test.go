package x86_test

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/viovmm/vio/arch/x86"
	"github.com/viovmm/vio/loader"
	"github.com/viovmm/vio/loader/loadertest"
	"github.com/viovmm/vio/memory"
)

var le = binary.LittleEndian

func newMem(t testing.TB, size uint64) *memory.Memory {
	t.Helper()
	layout, err := x86.RAMLayout(size)
	if err != nil {
		t.Fatal(err)
	}
	m, err := memory.New(layout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func TestRAMLayout(t *testing.T) {
	for _, tc := range []struct {
		size uint64
		want []memory.Layout
	}{
		{512 << 20, []memory.Layout{{GPA: 0, Size: 512 << 20}}},
		{3 << 30, []memory.Layout{{GPA: 0, Size: 3 << 30}}},
		{4 << 30, []memory.Layout{{GPA: 0, Size: 3 << 30}, {GPA: 4 << 30, Size: 1 << 30}}},
	} {
		got, err := x86.RAMLayout(tc.size)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(tc.want) {
			t.Fatalf("%d MiB: %+v", tc.size>>20, got)
		}
		var total uint64
		for i := range got {
			if got[i] != tc.want[i] {
				t.Errorf("%d MiB: region %d is %+v, want %+v", tc.size>>20, i, got[i], tc.want[i])
			}
			total += got[i].Size
			end := got[i].GPA + got[i].Size
			if got[i].GPA < x86.MMIOEnd && end > x86.MMIOStart {
				t.Errorf("region %+v overlaps the MMIO hole", got[i])
			}
		}
		if total != tc.size {
			t.Errorf("%d MiB laid out as %d", tc.size>>20, total>>20)
		}
		low, high := x86.SplitRAM(got)
		if low+high != tc.size || low > x86.MMIOStart || high > 0 && low != x86.MMIOStart {
			t.Errorf("%d MiB split as %#x below 4 GiB, %#x above", tc.size>>20, low, high)
		}
	}
	for _, bad := range []uint64{0, 1 << 20, 64<<20 + 1} {
		if _, err := x86.RAMLayout(bad); err == nil {
			t.Errorf("RAMLayout(%#x) accepted", bad)
		}
	}
}

func TestE820(t *testing.T) {
	for _, size := range []uint64{64 << 20, 3 << 30, 6 << 30} {
		layout, _ := x86.RAMLayout(size)
		m, err := x86.E820Map(layout)
		if err != nil {
			t.Fatal(err)
		}
		var ram uint64
		for i, e := range m {
			if i > 0 && m[i-1].Addr+m[i-1].Size > e.Addr {
				t.Errorf("%d MiB: entries %d and %d out of order or overlapping: %+v", size>>20, i-1, i, m)
			}
			if e.Addr < x86.MMIOEnd && e.Addr+e.Size > x86.MMIOStart {
				t.Errorf("entry %+v covers the MMIO hole", e)
			}
			if e.Type == x86.E820RAM {
				ram += e.Size
				if e.Addr < x86.HighMemStart && e.Addr+e.Size > x86.EBDAStart {
					t.Errorf("RAM entry %+v covers the EBDA/BIOS area", e)
				}
			}
		}
		// RAM reported = RAM laid out less the 0x9fc00..1 MiB range.
		if want := size - (x86.HighMemStart - x86.EBDAStart); ram != want {
			t.Errorf("%d MiB: e820 RAM %#x, want %#x", size>>20, ram, want)
		}
		if m[0].Addr != 0 || m[0].Type != x86.E820RAM {
			t.Errorf("first entry %+v", m[0])
		}
		// The MP table's home is reserved.
		found := false
		for _, e := range m {
			found = found || e.Type == x86.E820Reserved && e.Addr <= x86.MPTableAddr && e.Addr+e.Size >= x86.HighMemStart
		}
		if !found {
			t.Errorf("MP table area not reserved: %+v", m)
		}
	}
}

func TestZeroPage(t *testing.T) {
	img := loadertest.BzImage(loadertest.Default())
	k, err := loader.Parse(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	layout, _ := x86.RAMLayout(6 << 30)
	e820, _ := x86.E820Map(layout)
	zp, err := x86.ZeroPage(x86.BootParams{
		SetupHeader: k.Header.Raw,
		CmdlineAddr: x86.CmdlineAddr,
		RamdiskAddr: 0x7fe00000,
		RamdiskSize: 0x123456,
		E820:        e820,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(zp) != 4096 {
		t.Fatalf("zero page is %d bytes", len(zp))
	}
	if string(zp[0x202:0x206]) != "HdrS" || le.Uint16(zp[0x206:]) != k.Header.Version || le.Uint16(zp[0x1fe:]) != 0xaa55 {
		t.Error("setup header not copied")
	}
	if zp[0x210] != 0xff {
		t.Errorf("type_of_loader %#x", zp[0x210])
	}
	if zp[0x211]&1 == 0 {
		t.Error("LOADED_HIGH lost")
	}
	if got := le.Uint32(zp[0x228:]); got != x86.CmdlineAddr {
		t.Errorf("cmd_line_ptr %#x", got)
	}
	if le.Uint32(zp[0x218:]) != 0x7fe00000 || le.Uint32(zp[0x21c:]) != 0x123456 {
		t.Errorf("ramdisk %#x+%#x", le.Uint32(zp[0x218:]), le.Uint32(zp[0x21c:]))
	}
	if zp[0x1ef] != 0 {
		t.Error("sentinel set")
	}
	if int(zp[0x1e8]) != len(e820) {
		t.Fatalf("e820_entries %d, want %d", zp[0x1e8], len(e820))
	}
	for i, e := range e820 {
		o := 0x2d0 + 20*i
		got := x86.E820Entry{Addr: le.Uint64(zp[o:]), Size: le.Uint64(zp[o+8:]), Type: le.Uint32(zp[o+16:])}
		if got != e {
			t.Errorf("e820 entry %d reads back %+v, want %+v", i, got, e)
		}
	}
	if _, err := x86.ZeroPage(x86.BootParams{SetupHeader: make([]byte, 0x100)}); err == nil {
		t.Error("accepted a setup header that overruns edd_mbr_sig_buffer")
	}
}

// walk translates a virtual address through the 4-level tables at cr3, as
// the MMU does, reading guest memory.
func walk(t *testing.T, mem *memory.Memory, cr3, va uint64) (uint64, bool) {
	t.Helper()
	table := cr3 &^ 0xfff
	for level := 3; level >= 0; level-- {
		idx := va >> (12 + 9*uint(level)) & 511
		var b [8]byte
		if _, err := mem.ReadAt(b[:], int64(table+idx*8)); err != nil {
			t.Fatalf("reading level %d entry: %v", level, err)
		}
		e := le.Uint64(b[:])
		if e&x86.PTEPresent == 0 {
			return 0, false
		}
		if level == 1 && e&x86.PTEPS != 0 {
			return e&^(1<<21-1)&(1<<52-1) | va&(1<<21-1), true
		}
		if level == 2 && e&x86.PTEPS != 0 {
			t.Fatal("unexpected 1 GiB page")
		}
		table = e & 0x000ffffffffff000
		if level == 0 {
			return table | va&0xfff, true
		}
	}
	return 0, false
}

func TestLongModeSetup(t *testing.T) {
	mem := newMem(t, 64<<20)
	s, err := x86.SetupLongMode(mem)
	if err != nil {
		t.Fatal(err)
	}
	if s.Cr0&x86.CR0PG == 0 || s.Cr0&x86.CR0PE == 0 || s.Cr4&x86.CR4PAE == 0 ||
		s.Efer&(x86.EFERLME|x86.EFERLMA) != x86.EFERLME|x86.EFERLMA || s.Cr3 != x86.PML4Addr {
		t.Errorf("control registers %+v", s)
	}
	for _, va := range []uint64{0, 0x1000, 0x1234567, 0x7fffffff, x86.IOAPICAddr, x86.LAPICAddr + 0x20, 0xffffffff} {
		pa, ok := walk(t, mem, s.Cr3, va)
		if !ok || pa != va {
			t.Errorf("va %#x -> %#x (present %v), want identity", va, pa, ok)
		}
	}
	if _, ok := walk(t, mem, s.Cr3, x86.IdentityMapSize); ok {
		t.Errorf("%#x mapped beyond the identity map", uint64(x86.IdentityMapSize))
	}
	// Segment registers agree with the GDT in memory.
	gdt := make([]byte, int(s.Gdt.Limit)+1)
	if _, err := mem.ReadAt(gdt, int64(s.Gdt.Base)); err != nil {
		t.Fatal(err)
	}
	for name, seg := range map[string]x86.Segment{"cs": s.Cs, "ds": s.Ds, "ss": s.Ss, "tr": s.Tr} {
		d := le.Uint64(gdt[seg.Selector:])
		if got := x86.DecodeDescriptor(seg.Selector, d); got != seg {
			t.Errorf("%s = %+v, GDT says %+v", name, seg, got)
		}
	}
	if s.Cs.Selector != 0x10 || s.Ds.Selector != 0x18 || s.Ss.Selector != 0x18 {
		t.Errorf("selectors cs %#x ds %#x ss %#x; boot.rst wants 0x10/0x18", s.Cs.Selector, s.Ds.Selector, s.Ss.Selector)
	}
	if s.Cs.L != 1 || s.Cs.Db != 0 || s.Cs.Type&0x8 == 0 || s.Cs.Limit != 0xffffffff {
		t.Errorf("cs is not a flat 64-bit code segment: %+v", s.Cs)
	}
	if s.Ds.Type&0x8 != 0 || s.Ds.Type&0x2 == 0 || s.Ds.Limit != 0xffffffff {
		t.Errorf("ds is not a flat writable data segment: %+v", s.Ds)
	}
	if s.Tr.S != 0 || s.Tr.Type != 0xb || s.Tr.Present != 1 {
		t.Errorf("tr is not a busy 64-bit TSS: %+v", s.Tr)
	}
	r := x86.BootRegs(0x100200)
	if r.Rip != 0x100200 || r.Rsi != x86.ZeroPageAddr || r.Rflags&(1<<9) != 0 || r.Rflags&2 == 0 {
		t.Errorf("regs %+v", r)
	}
	// The boot structures must not overlap each other.
	type span struct{ a, n uint64 }
	spans := map[string]span{
		"gdt": {x86.GDTAddr, uint64(s.Gdt.Limit) + 1}, "idt": {x86.IDTAddr, 8},
		"zeropage": {x86.ZeroPageAddr, 4096}, "stack": {x86.BootStack - 0xff0, 0xff0},
		"pagetables": {x86.PML4Addr, 6 * 4096}, "cmdline": {x86.CmdlineAddr, x86.CmdlineMax},
	}
	for n1, s1 := range spans {
		for n2, s2 := range spans {
			if n1 < n2 && s1.a < s2.a+s2.n && s2.a < s1.a+s1.n {
				t.Errorf("%s and %s overlap", n1, n2)
			}
		}
	}
}

func TestDescriptorRoundTrip(t *testing.T) {
	for _, d := range []uint64{0x00af9b000000ffff, 0x00cf93000000ffff, 0x0000890012340067, 0xff4f9a1234565678} {
		s := x86.DecodeDescriptor(8, d)
		if s.G == 1 {
			s.Limit >>= 12
		}
		if got := x86.EncodeDescriptor(s); got != d {
			t.Errorf("%#016x decodes and encodes to %#016x", d, got)
		}
	}
}

func TestBootMSRs(t *testing.T) {
	seen := map[uint32]bool{}
	misc := false
	for _, m := range x86.BootMSRs() {
		if seen[m.Index] {
			t.Errorf("MSR %#x twice", m.Index)
		}
		seen[m.Index] = true
		if m.Index == x86.MSRIA32MiscEnable {
			misc = m.Data&x86.MiscEnableFastString != 0
		}
	}
	if !misc {
		t.Error("IA32_MISC_ENABLE lacks fast strings")
	}
}
