package loader

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/viovmm/vio/memory"
)

// ErrNotELF reports a file that is not a loadable x86-64 ELF kernel.
var ErrNotELF = errors.New("loader: not an x86-64 ELF kernel")

// maxSegments bounds the program headers looked at: a vmlinux has a
// handful, and a hostile file must not make the loader loop for long.
const maxSegments = 64

// Segment is one PT_LOAD program header of an ELF kernel.
type Segment struct {
	Paddr  uint64 // guest physical load address
	Offset int64  // file offset of its bytes
	Filesz uint64 // bytes copied from the file
	Memsz  uint64 // bytes in memory; the rest past Filesz is zeroed
}

// ELFKernel is an uncompressed x86-64 vmlinux, loaded at the physical
// addresses of its segments and entered at its 64-bit entry point
// (startup_64), as Firecracker does. It skips the bzImage decompressor,
// which matters where the guest runs slowly (software virtualisation);
// the kernel runs where it was linked (no KASLR relocation).
type ELFKernel struct {
	Entry    uint64 // physical entry point (e_entry: phys_startup_64)
	Segments []Segment
	image    io.ReaderAt
}

// ParseELF validates the ELF headers of an x86-64 kernel in r.
func ParseELF(r io.ReaderAt, size int64) (*ELFKernel, error) {
	var id [16]byte
	if m, _ := r.ReadAt(id[:], 0); m < len(id) || !bytes.HasPrefix(id[:], []byte(elf.ELFMAG)) {
		head := make([]byte, min(size, 1024))
		m, _ := r.ReadAt(head, 0)
		return nil, fmt.Errorf("%w: the file is %s", ErrNotELF, describe(head[:m]))
	}
	// debug/elf parses the headers; it reads only what it is asked for,
	// and the checks below bound everything the loader then uses.
	f, err := elf.NewFile(io.NewSectionReader(r, 0, size))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotELF, err)
	}
	if f.Class != elf.ELFCLASS64 || f.Data != elf.ELFDATA2LSB || f.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("%w: %v %v %v", ErrNotELF, f.Class, f.Data, f.Machine)
	}
	if f.Type != elf.ET_EXEC {
		return nil, fmt.Errorf("%w: ELF type %v, want an executable (a vmlinux)", ErrNotELF, f.Type)
	}
	if len(f.Progs) > maxSegments {
		return nil, fmt.Errorf("%w: %d program headers", ErrNotELF, len(f.Progs))
	}
	k := &ELFKernel{Entry: f.Entry, image: r}
	entryOK := false
	for _, p := range f.Progs {
		if p.Type != elf.PT_LOAD || p.Memsz == 0 {
			continue
		}
		if p.Filesz > p.Memsz || p.Off > uint64(size) || p.Filesz > uint64(size)-p.Off {
			return nil, fmt.Errorf("%w: segment at %#x claims %#x bytes at file offset %#x of %#x",
				ErrNotELF, p.Paddr, p.Filesz, p.Off, size)
		}
		if p.Paddr >= maxPrefAddress || p.Memsz >= maxPrefAddress {
			return nil, fmt.Errorf("%w: segment at %#x+%#x is absurdly placed", ErrNotELF, p.Paddr, p.Memsz)
		}
		k.Segments = append(k.Segments, Segment{Paddr: p.Paddr, Offset: int64(p.Off), Filesz: p.Filesz, Memsz: p.Memsz})
		if f.Entry >= p.Paddr && f.Entry-p.Paddr < p.Filesz {
			entryOK = true
		}
	}
	if len(k.Segments) == 0 {
		return nil, fmt.Errorf("%w: no loadable segments", ErrNotELF)
	}
	if !entryOK {
		return nil, fmt.Errorf("%w: entry point %#x is not in a loaded segment (a virtual address? vio needs the physical one)",
			ErrNotELF, f.Entry)
	}
	return k, nil
}

// Load copies the segments into guest memory and zeroes their tails. The
// returned LoadInfo has LoadAddr = RunAddr = the lowest segment address,
// End past the highest, and Entry64 the ELF entry point.
func (k *ELFKernel) Load(mem *memory.Memory) (LoadInfo, error) {
	info, err := k.Place(Layout(mem))
	if err != nil {
		return LoadInfo{}, err
	}
	for _, s := range k.Segments {
		// Written through Slice, which dirty tracking does not see: loading
		// runs before the VM starts, and tracking (a migration) only after.
		dst, err := mem.Slice(s.Paddr, s.Memsz)
		if err != nil {
			return LoadInfo{}, fmt.Errorf("loader: kernel segment destination: %w", err)
		}
		if m, err := k.image.ReadAt(dst[:s.Filesz], s.Offset); uint64(m) < s.Filesz {
			return LoadInfo{}, fmt.Errorf("loader: reading kernel segment at %#x: %w", s.Paddr, err)
		}
		clear(dst[s.Filesz:])
	}
	return info, nil
}

// ELFSetupHeader returns a setup header, as found at 0x1f1 in a bzImage,
// for an ELF kernel, which has none: the kernel proper reads a few fields
// of boot_params.hdr (the "HdrS" magic, the protocol version, the
// command line size, the initrd limit), so the zero page must carry them.
func ELFSetupHeader(cmdlineSize uint32) []byte {
	h := make([]byte, 0x26c-HeaderStart)
	le := binary.LittleEndian
	put16 := func(off int, v uint16) { le.PutUint16(h[off-HeaderStart:], v) }
	put32 := func(off int, v uint32) { le.PutUint32(h[off-HeaderStart:], v) }
	put16(offBootFlag, 0xaa55)
	h[offJump-HeaderStart] = 0xeb
	h[offJump+1-HeaderStart] = byte(0x26c - 0x202)
	copy(h[offHeaderMagic-HeaderStart:], "HdrS")
	put16(offVersion, 0x020f)
	h[offLoadflags-HeaderStart] = LoadedHigh
	put32(offCode32Start, DefaultLoadAddr)
	put32(offInitrdAddrMax, 0x7fffffff)
	put32(offKernelAlign, 16<<20)
	put16(offXLoadflags, XLFKernel64)
	put32(offCmdlineSize, cmdlineSize)
	return h
}
