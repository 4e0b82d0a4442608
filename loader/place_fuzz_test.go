package loader_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/viovmm/vio/arch/x86"
	"github.com/viovmm/vio/loader"
	"github.com/viovmm/vio/loader/loadertest"
	"github.com/viovmm/vio/memory"
)

type span struct{ start, end uint64 } // [start, end)

func (a span) overlaps(b span) bool { return a.start < b.end && b.start < a.end }

// lowTables are the ranges below 1 MiB that vmm's boot writes (see the map
// in arch/x86/layout.go): GDT and IDT, zero page, boot stack, page tables,
// command line, and the EBDA and BIOS area holding the MP, SMBIOS and ACPI
// tables.
var lowTables = []span{
	{x86.GDTAddr, x86.IDTAddr + 0x10},
	{x86.ZeroPageAddr, x86.ZeroPageAddr + x86.ZeroPageSize},
	{x86.BootStack - 0xff0, x86.BootStack},
	{x86.PML4Addr, x86.PDAddr + 4*4096},
	{x86.CmdlineAddr, x86.CmdlineAddr + x86.CmdlineMax},
	{x86.EBDAStart, x86.HighMemStart},
}

// inE820RAM reports whether s lies in one RAM entry of the map.
func inE820RAM(m []x86.E820Entry, s span) bool {
	for _, e := range m {
		if e.Type == x86.E820RAM && s.start >= e.Addr && s.end <= e.Addr+e.Size {
			return true
		}
	}
	return false
}

// FuzzBootPlacement places a kernel (a bzImage with hostile setup_sects,
// relocatable flag, kernel_alignment, pref_address, init_size,
// cmdline_size and initrd_addr_max, or an ELF vmlinux at a hostile
// address), an initrd of hostile size and a command line in guest RAM of
// hostile size, as vmm's boot does, with the pure placement functions, and
// builds the e820 map and the zero page. Each step either fails with an
// error or gives a placement where:
//   - the kernel as loaded and the area it decompresses into, and the
//     initrd, each lie in one RAM entry of the e820 map (not in the MMIO
//     hole, the VGA hole or reserved memory, not beyond RAM);
//   - none of them overlaps another or the boot tables below 1 MiB (zero
//     page, GDT/IDT, stack, page tables, command line, MP/SMBIOS/ACPI);
//   - the initrd is page aligned, above the kernel, and ends at or below
//     initrd_addr_max (and below 4 GiB, as the 32-bit ramdisk_image field
//     needs);
//   - an initrd is refused only when no page-aligned place exists;
//   - the command line fits both the kernel's cmdline_size and its slot;
//   - the zero page accepts every header Parse accepts and carries the
//     addresses, sizes and e820 map chosen.
func FuzzBootPlacement(f *testing.F) {
	// A modern kernel in 512 MiB with a 16 MiB initrd.
	f.Add(uint32(512<<20>>12), uint8(4), true, uint8(21), uint32(16<<20>>12), uint32(0), uint16(64<<10>>4), uint32(2047), uint32(0x7fffffff), uint32(16<<20), "console=ttyS0", false)
	// Fixed kernel at 1 MiB, an initrd_addr_max below the kernel's end.
	f.Add(uint32(64<<20>>12), uint8(0), false, uint8(0), uint32(1<<20>>12), uint32(8<<20), uint16(4096), uint32(255), uint32(0x200000), uint32(4096), "root=/dev/vda", false)
	// A fixed kernel built for 64 KiB, over the boot tables.
	f.Add(uint32(64<<20>>12), uint8(4), false, uint8(0), uint32(0x10), uint32(0), uint16(4096), uint32(2047), uint32(0), uint32(4096), "", false)
	// 4 GiB of RAM (split around the MMIO hole), a 3 GiB initrd.
	f.Add(uint32(4<<30>>12), uint8(4), true, uint8(21), uint32(16<<20>>12), uint32(0), uint16(4096), uint32(0), uint32(0xffffffff), uint32(3<<30), "x", false)
	// ELF kernels at 16 MiB and in the first MiB.
	f.Add(uint32(64<<20>>12), uint8(0), false, uint8(0), uint32(16<<20>>12), uint32(0x1000), uint16(256), uint32(0), uint32(0), uint32(4096), "", true)
	f.Add(uint32(64<<20>>12), uint8(0), false, uint8(0), uint32(0x20), uint32(0x1000), uint16(256), uint32(0), uint32(0), uint32(4096), "", true)
	f.Fuzz(func(t *testing.T, memPages uint32, setupSects uint8, relocatable bool, alignLog uint8, prefPages uint32,
		initSize uint32, pmParas uint16, cmdlineSize, initrdAddrMax, initrdSize uint32, cmdline string, elf bool) {
		layout, err := x86.RAMLayout(uint64(memPages) * 4096)
		if err != nil {
			return // vmm refuses such a memory size before placing anything
		}
		e820, err := x86.E820Map(layout)
		if err != nil {
			t.Fatalf("e820 map of %+v: %v", layout, err)
		}
		checkE820(t, layout, e820)

		var info loader.LoadInfo
		var header []byte
		var limit uint64
		var kernelImage span
		maxCmdline := uint32(2048)
		if elf {
			img := loadertest.ELF(make([]byte, 16+int(pmParas)), uint64(prefPages)*4096, uint64(initSize))
			k, err := loader.ParseELF(bytes.NewReader(img), int64(len(img)))
			if err != nil {
				return
			}
			if info, err = k.Place(layout); err != nil {
				return
			}
			kernelImage = span{info.LoadAddr, info.End}
			header, limit = loader.ELFSetupHeader(maxCmdline), 0x7fffffff
		} else {
			o := loadertest.Default()
			o.SetupSects, o.Relocatable, o.KernelAlignment = setupSects, relocatable, 1<<(alignLog%32)
			o.PrefAddress, o.InitSize, o.CmdlineSize, o.InitrdAddrMax = uint64(prefPages)*4096, initSize, cmdlineSize, initrdAddrMax
			o.ProtectedMode = make([]byte, 16*int(pmParas))
			img := loadertest.BzImage(o)
			k, err := loader.Parse(bytes.NewReader(img), int64(len(img)))
			if err != nil {
				return
			}
			h := &k.Header
			info, err = k.Place(layout, loader.DefaultLoadAddr)
			// Where boot.rst says the kernel runs: a relocatable one at
			// the load address rounded up to kernel_alignment but not
			// below pref_address, a fixed one at pref_address.
			run := span{h.PrefAddress, h.PrefAddress + uint64(h.InitSize)}
			if h.Relocatable {
				a := uint64(h.KernelAlignment)
				run.start = max((uint64(loader.DefaultLoadAddr)+a-1)&^(a-1), h.PrefAddress)
				run.end = run.start + uint64(h.InitSize)
			}
			kernelImage = span{loader.DefaultLoadAddr, loader.DefaultLoadAddr + uint64(k.KernelSize())}
			if err != nil {
				// Refused: then the kernel really would run in the first
				// MiB or outside RAM.
				if run.start >= loader.LowMemEnd && inE820RAMorLow(layout, run) && inE820RAMorLow(layout, kernelImage) {
					t.Fatalf("kernel refused although it fits: %v (run %+v, image %+v)", err, run, kernelImage)
				}
				return
			}
			if info.LoadAddr != kernelImage.start || info.RunAddr != run.start || info.End != max(run.end, kernelImage.end) {
				t.Fatalf("placement %+v for image %+v and run area %+v", info, kernelImage, run)
			}
			for _, s := range []span{kernelImage, run} {
				if !inE820RAM(e820, s) {
					t.Fatalf("kernel part %#x-%#x is not in one RAM entry of %+v", s.start, s.end, e820)
				}
			}
			header, limit, maxCmdline = h.Raw, h.InitrdLimit(), h.CmdlineSize
			if limit > 1<<32-1 || h.InitrdAddrMax != 0 && limit > uint64(h.InitrdAddrMax) {
				t.Fatalf("initrd limit %#x for initrd_addr_max %#x", limit, h.InitrdAddrMax)
			}
		}
		kernel := span{min(info.LoadAddr, info.RunAddr), info.End}
		if !inE820RAM(e820, kernelImage) {
			t.Fatalf("kernel %#x-%#x is not in one RAM entry", kernelImage.start, kernelImage.end)
		}
		for _, l := range lowTables {
			if kernel.overlaps(l) {
				t.Fatalf("kernel %#x-%#x overlaps the boot tables at %#x-%#x", kernel.start, kernel.end, l.start, l.end)
			}
		}

		var initrd span
		if initrdSize > 0 {
			n := uint64(initrdSize)
			addr, err := loader.PlaceInitrd(layout, int64(n), info.End, limit)
			if err != nil {
				if !errors.Is(err, loader.ErrTooBig) {
					t.Fatalf("initrd refused with %v", err)
				}
				// Refused: no page-aligned place may exist.
				for _, l := range layout {
					lo := (max(l.GPA, info.End) + 4095) &^ 4095
					hi := min(l.GPA+l.Size, limit+1)
					if hi > lo && hi-lo >= n {
						t.Fatalf("a %#x-byte initrd refused although %#x-%#x is free below the limit %#x", n, lo, hi, limit)
					}
				}
			} else {
				initrd = span{addr, addr + n}
				switch {
				case addr%4096 != 0 || addr < info.End || initrd.end-1 > limit || initrd.end > 1<<32:
					t.Fatalf("initrd at %#x-%#x (kernel ends at %#x, limit %#x)", addr, initrd.end, info.End, limit)
				case !inE820RAM(e820, initrd):
					t.Fatalf("initrd %#x-%#x is not in one RAM entry", initrd.start, initrd.end)
				case initrd.overlaps(kernel):
					t.Fatalf("initrd %#x-%#x overlaps the kernel %#x-%#x", initrd.start, initrd.end, kernel.start, kernel.end)
				}
				for _, l := range lowTables {
					if initrd.overlaps(l) {
						t.Fatalf("initrd overlaps the boot tables at %#x-%#x", l.start, l.end)
					}
				}
			}
		}

		c := loader.NewCmdline(min(maxCmdline, x86.CmdlineMax-1))
		if err := c.Add(cmdline); err == nil {
			if c.Len() > int(maxCmdline) || c.Len()+1 > x86.CmdlineMax {
				t.Fatalf("a %d-byte command line for cmdline_size %d", c.Len(), maxCmdline)
			}
		}

		zp, err := x86.ZeroPage(x86.BootParams{SetupHeader: header, CmdlineAddr: x86.CmdlineAddr,
			RamdiskAddr: initrd.start, RamdiskSize: initrd.end - initrd.start, E820: e820})
		if err != nil {
			t.Fatalf("zero page for an accepted kernel: %v", err)
		}
		le := binary.LittleEndian
		if got := uint64(le.Uint32(zp[0x218:])) | uint64(le.Uint32(zp[0x0c0:]))<<32; got != initrd.start {
			t.Fatalf("ramdisk_image %#x, want %#x", got, initrd.start)
		}
		if got := uint64(le.Uint32(zp[0x21c:])) | uint64(le.Uint32(zp[0x0c4:]))<<32; got != initrd.end-initrd.start {
			t.Fatalf("ramdisk_size %#x", got)
		}
		if got := le.Uint32(zp[0x228:]); got != x86.CmdlineAddr || le.Uint16(zp[0x1fe:]) != 0xaa55 {
			t.Fatalf("cmd_line_ptr %#x", got)
		}
		if int(zp[0x1e8]) != len(e820) {
			t.Fatalf("%d e820 entries in the zero page, %d in the map", zp[0x1e8], len(e820))
		}
		for i, e := range e820 {
			o := 0x2d0 + 20*i
			if le.Uint64(zp[o:]) != e.Addr || le.Uint64(zp[o+8:]) != e.Size || le.Uint32(zp[o+16:]) != e.Type {
				t.Fatalf("e820 entry %d differs in the zero page", i)
			}
		}
	})
}

// inE820RAMorLow reports whether s lies in one range of layout (the
// loader's own test, before the e820 map carves the first MiB).
func inE820RAMorLow(layout []memory.Layout, s span) bool {
	for _, l := range layout {
		if s.start >= l.GPA && s.end <= l.GPA+l.Size {
			return true
		}
	}
	return false
}

// checkE820 checks the map against the RAM layout: sorted, disjoint,
// inside RAM, the first MiB's EBDA and BIOS area reserved, the VGA hole
// absent, and every other byte of RAM listed as RAM.
func checkE820(t *testing.T, layout []memory.Layout, m []x86.E820Entry) {
	t.Helper()
	var ram, listed uint64
	for _, l := range layout {
		ram += l.Size
	}
	for i, e := range m {
		if e.Size == 0 || i > 0 && e.Addr < m[i-1].Addr+m[i-1].Size {
			t.Fatalf("e820 entry %d %+v is empty or out of order", i, e)
		}
		if !inE820RAMorLow(layout, span{e.Addr, e.Addr + e.Size}) {
			t.Fatalf("e820 entry %+v is outside RAM", e)
		}
		low := span{x86.EBDAStart, x86.HighMemStart}
		if reserved := e.Type == x86.E820Reserved; reserved != low.overlaps(span{e.Addr, e.Addr + e.Size}) ||
			reserved && (e.Addr < low.start || e.Addr+e.Size > low.end) {
			t.Fatalf("e820 entry %+v: type %d in the wrong place", e, e.Type)
		}
		if (span{e.Addr, e.Addr + e.Size}).overlaps(span{x86.VGAStart, x86.BIOSStart}) {
			t.Fatalf("e820 entry %+v covers the VGA hole", e)
		}
		listed += e.Size
	}
	if listed != ram-(x86.BIOSStart-x86.VGAStart) {
		t.Fatalf("e820 lists %#x bytes of %#x bytes of RAM", listed, ram)
	}
}
