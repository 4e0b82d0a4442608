package loader

import (
	"fmt"

	"github.com/viovmm/vio/memory"
)

// Placement: where the kernel and the initrd go is computed from the
// guest's RAM layout alone, by the pure functions in this file, so that
// hostile headers and memory sizes can be checked (and fuzzed) without
// mapping any memory; Load, ELFKernel.Load and LoadInitrd then copy.

// LowMemEnd is the end of the first MiB of guest physical memory, which the
// boot protocol leaves to real-mode code and the boot loader: the zero page,
// the command line, the boot page tables and the firmware tables (MP,
// SMBIOS, ACPI) a VMM writes all live below it. No part of a kernel may, or
// the VMM's tables would be written over the kernel (or the kernel would
// decompress itself over them).
const LowMemEnd = 0x100000

// Layout returns mem's RAM layout, for the Place functions.
func Layout(mem *memory.Memory) []memory.Layout {
	rs := mem.Regions()
	ls := make([]memory.Layout, len(rs))
	for i, r := range rs {
		ls[i] = memory.Layout{GPA: r.GPA, Size: r.Size()}
	}
	return ls
}

// inRAM reports whether the n bytes at a lie in one range of ram.
func inRAM(ram []memory.Layout, a, n uint64) bool {
	for _, l := range ram {
		if a >= l.GPA && a-l.GPA <= l.Size && n <= l.Size-(a-l.GPA) {
			return true
		}
	}
	return false
}

// Place computes where Load puts the kernel loaded at addr in guest RAM
// laid out as ram, and checks it: the image as loaded and the area the
// kernel decompresses into must each be RAM in one piece, and neither may
// reach below LowMemEnd.
func (k *Kernel) Place(ram []memory.Layout, addr uint64) (LoadInfo, error) {
	h := &k.Header
	if addr%4096 != 0 {
		return LoadInfo{}, fmt.Errorf("loader: load address %#x is not page aligned", addr)
	}
	if addr < LowMemEnd {
		return LoadInfo{}, fmt.Errorf("loader: load address %#x is in the first MiB, which the boot tables use", addr)
	}
	info := LoadInfo{LoadAddr: addr, Entry64: addr + 0x200}
	info.RunAddr = h.runAddr(addr)
	info.End = max(info.RunAddr+uint64(h.InitSize), addr+uint64(k.kernelSize))
	if info.RunAddr < LowMemEnd {
		// Only a kernel that is not relocatable runs below its load
		// address: its pref_address is below 1 MiB.
		return LoadInfo{}, fmt.Errorf("%w: the kernel is built to run at %#x (pref_address), in the first MiB, where the boot tables live; use a kernel built for 1 MiB or above",
			ErrBootProtocol, info.RunAddr)
	}
	if !inRAM(ram, addr, uint64(k.kernelSize)) {
		return LoadInfo{}, fmt.Errorf("%w: the %d MiB kernel does not fit in guest RAM at %#x; give the guest more memory",
			ErrTooBig, k.kernelSize>>20, addr)
	}
	if !inRAM(ram, info.RunAddr, uint64(h.InitSize)) {
		return LoadInfo{}, fmt.Errorf("%w: the kernel needs guest RAM from %#x to %#x (init_size %d MiB); give the guest more memory",
			ErrTooBig, info.RunAddr, info.RunAddr+uint64(h.InitSize), h.InitSize>>20)
	}
	return info, nil
}

// Place computes where Load puts the ELF kernel's segments in guest RAM
// laid out as ram: each must be RAM in one piece, at or above LowMemEnd.
// LoadAddr = RunAddr is the lowest segment address and End the first
// address past the highest.
func (k *ELFKernel) Place(ram []memory.Layout) (LoadInfo, error) {
	info := LoadInfo{Entry64: k.Entry, LoadAddr: ^uint64(0)}
	for _, s := range k.Segments {
		if s.Paddr < LowMemEnd {
			return LoadInfo{}, fmt.Errorf("%w: kernel segment %#x+%#x is in the first MiB, where the boot tables live; link the kernel at 1 MiB or above",
				ErrNotELF, s.Paddr, s.Memsz)
		}
		if !inRAM(ram, s.Paddr, s.Memsz) {
			return LoadInfo{}, fmt.Errorf("%w: kernel segment %#x+%#x is not in guest RAM; give the guest more memory",
				ErrTooBig, s.Paddr, s.Memsz)
		}
		info.LoadAddr = min(info.LoadAddr, s.Paddr)
		info.End = max(info.End, s.Paddr+s.Memsz)
	}
	info.RunAddr = info.LoadAddr
	return info, nil
}

// PlaceInitrd returns where LoadInitrd puts a size-byte initrd in guest
// RAM laid out as ram: the highest page-aligned address where it lies
// wholly in one RAM range, at or above minAddr and with its last byte at or
// below limit. Top of memory is where bootloaders put it: the kernel's
// early allocations grow upwards from its own end, so the initrd stays out
// of their way until it is unpacked.
func PlaceInitrd(ram []memory.Layout, size int64, minAddr, limit uint64) (uint64, error) {
	if size <= 0 {
		return 0, fmt.Errorf("loader: initrd is empty")
	}
	n := uint64(size)
	end := limit + 1 // first address the initrd may not touch
	if limit == ^uint64(0) {
		end = limit
	}
	var best uint64
	found := false
	for _, l := range ram {
		top := min(l.GPA+l.Size, end)
		lo := max(l.GPA, minAddr)
		if top <= lo || top-lo < n {
			continue
		}
		a := (top - n) &^ 4095
		if a < lo {
			continue
		}
		if !found || a > best {
			best, found = a, true
		}
	}
	if !found {
		return 0, fmt.Errorf("%w: a %d MiB initrd has no room in guest RAM between %#x and %#x (the kernel's initrd_addr_max); give the guest more memory",
			ErrTooBig, n>>20, minAddr, end)
	}
	return best, nil
}
