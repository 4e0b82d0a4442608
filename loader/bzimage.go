// Package loader puts a Linux kernel, its initrd and its command line into
// guest memory, following the x86 boot protocol
// (Documentation/arch/x86/boot.rst). It only reads files and writes guest
// memory; building the zero page and the vCPU state is package arch/x86's job,
// and running the vCPU is the vmm's.
//
// The kernel image is untrusted input: every field of the setup header is
// checked before it is used to size or place anything, and a file that is not
// a bzImage is rejected with an error that says what it looks like instead.
package loader

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/viovmm/vio/memory"
)

// Errors a caller can match with errors.Is.
var (
	// ErrNotBzImage: the file lacks the "HdrS" setup header (an ELF
	// vmlinux, a compressed blob, a zImage, random bytes...).
	ErrNotBzImage = errors.New("loader: not a Linux bzImage")
	// ErrBootProtocol: the kernel's boot protocol or flags cannot be used
	// for a 64-bit entry.
	ErrBootProtocol = errors.New("loader: unsupported boot protocol")
	// ErrTooBig: the kernel, initrd or command line does not fit.
	ErrTooBig = errors.New("loader: does not fit")
)

// Offsets of setup header fields in the image (and, identically, in the
// zero page), from boot.rst's "The real-mode kernel header" table.
const (
	HeaderStart = 0x1f1 // first byte of struct setup_header

	offSetupSects     = 0x1f1 // u8: setup size in 512-byte sectors, minus the boot sector
	offSyssize        = 0x1f4 // u32: protected-mode code size in 16-byte paragraphs (2.04+)
	offBootFlag       = 0x1fe // u16: 0xAA55
	offJump           = 0x200 // u8 0xEB (short jmp), u8 offset: header end is 0x202+offset
	offHeaderMagic    = 0x202 // "HdrS"
	offVersion        = 0x206 // u16: boot protocol version
	offLoadflags      = 0x211 // u8
	offCode32Start    = 0x214 // u32
	offInitrdAddrMax  = 0x22c // u32: highest address the initrd's last byte may have (2.03+)
	offKernelAlign    = 0x230 // u32: physical alignment for a relocatable kernel (2.05+)
	offRelocatable    = 0x234 // u8 (2.05+)
	offMinAlignment   = 0x235 // u8: log2 of the minimum alignment (2.10+)
	offXLoadflags     = 0x236 // u16 (2.12+)
	offCmdlineSize    = 0x238 // u32: max command line length without the NUL (2.06+)
	offPayloadOffset  = 0x248 // u32 (2.08+)
	offPayloadLength  = 0x24c // u32 (2.08+)
	offPrefAddress    = 0x258 // u64 (2.10+)
	offInitSize       = 0x260 // u32: bytes needed from the load address to boot (2.10+)
	offKernelInfoOffs = 0x268 // u32 (2.15+)

	// minHeaderEnd is the end of the fields this package reads; a header
	// that says it ends earlier is too old anyway.
	minHeaderEnd = 0x264
	// maxHeaderEnd bounds the header copy: it must fit in the zero page
	// slot that runs from 0x1f1 up to edd_mbr_sig_buffer at 0x290.
	maxHeaderEnd = 0x290
)

// maxPrefAddress bounds pref_address so address arithmetic cannot wrap;
// real kernels ask for 16 MiB.
const maxPrefAddress = 1 << 40

// Load flag bits.
const (
	LoadedHigh  = 1 << 0 // loadflags: protected-mode code loaded at 1 MiB (bzImage)
	CanUseHeap  = 1 << 7 // loadflags: heap_end_ptr is valid
	XLFKernel64 = 1 << 0 // xloadflags: has the 64-bit entry at load address + 0x200
	XLFAbove4G  = 1 << 1 // xloadflags: kernel/boot_params/cmdline/initrd may live above 4 GiB
)

// MinProtocol is the oldest boot protocol accepted: 2.06 is the first that
// states cmdline_size, and the 64-bit entry point in practice needs 2.12's
// xloadflags to be advertised.
const MinProtocol = 0x0206

// Header is the parsed setup header of a bzImage. Raw keeps the header
// bytes as found, from offset 0x1f1, for copying into the zero page.
type Header struct {
	Raw []byte

	SetupSects      uint8  // real-mode setup sectors (0 means 4)
	Syssize         uint32 // protected-mode part in 16-byte units
	Version         uint16 // boot protocol, major<<8 | minor
	Loadflags       uint8
	Code32Start     uint32
	InitrdAddrMax   uint32
	KernelAlignment uint32
	Relocatable     bool
	MinAlignment    uint8
	XLoadflags      uint16
	CmdlineSize     uint32 // max command line length, NUL not included
	PayloadOffset   uint32
	PayloadLength   uint32
	PrefAddress     uint64
	InitSize        uint32
}

// SetupSize is the size in bytes of the real-mode part (boot sector plus
// setup sectors) that precedes the protected-mode kernel in the file.
func (h *Header) SetupSize() int64 {
	n := int64(h.SetupSects)
	if n == 0 {
		n = 4 // boot.rst: "if this field is 0, the real value is 4"
	}
	return (n + 1) * 512
}

// VersionString formats the boot protocol version as "2.15".
func (h *Header) VersionString() string {
	return fmt.Sprintf("%d.%02d", h.Version>>8, h.Version&0xff)
}

// Kernel is a validated bzImage ready to be loaded.
type Kernel struct {
	Header Header

	image      io.ReaderAt
	kernelOff  int64 // file offset of the protected-mode kernel
	kernelSize int64 // its length in the file
}

// KernelSize returns the size of the protected-mode kernel as stored in the
// image (what Load copies; the kernel needs InitSize bytes once running).
func (k *Kernel) KernelSize() int64 { return k.kernelSize }

// describe guesses what a non-bzImage file is, so the error can say so.
func describe(b []byte) string {
	switch {
	case len(b) == 0:
		return "an empty file"
	case bytes.HasPrefix(b, []byte("\x7fELF")):
		return "an ELF file (an uncompressed vmlinux? load it with ParseELF, or pass the bzImage: arch/x86/boot/bzImage, /boot/vmlinuz-*)"
	case bytes.HasPrefix(b, []byte{0x1f, 0x8b}):
		return "gzip-compressed data (decompress it, or pass the bzImage itself)"
	case bytes.HasPrefix(b, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return "zstd-compressed data"
	case bytes.HasPrefix(b, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		return "xz-compressed data"
	case bytes.HasPrefix(b, []byte("070701")), bytes.HasPrefix(b, []byte("070702")):
		return "a cpio archive (an initramfs? pass it as the initrd)"
	case bytes.HasPrefix(b, []byte("MZ")):
		return "a PE/EFI executable without a Linux setup header"
	case bytes.HasPrefix(b, []byte("QFI\xfb")):
		return "a qcow2 disk image"
	}
	if len(b) > 0x1fe+2 && b[0x1fe] == 0x55 && b[0x1ff] == 0xaa {
		return "a boot sector without a Linux setup header (a zImage older than boot protocol 2.00, or a disk image)"
	}
	return "neither a bzImage nor a format vio recognises"
}

// Parse reads and validates the setup header of the bzImage in r, whose
// length is size. It checks what the 64-bit boot path relies on and nothing
// more, so kernels built with unusual options still load.
func Parse(r io.ReaderAt, size int64) (*Kernel, error) {
	if size < 0 {
		return nil, fmt.Errorf("%w: negative size", ErrNotBzImage)
	}
	head := make([]byte, min(size, 1024))
	if m, err := r.ReadAt(head, 0); m < len(head) {
		return nil, fmt.Errorf("loader: reading kernel header: %w", err)
	}
	if len(head) < offHeaderMagic+4 || string(head[offHeaderMagic:offHeaderMagic+4]) != "HdrS" {
		return nil, fmt.Errorf("%w: the file is %s", ErrNotBzImage, describe(head))
	}
	le := binary.LittleEndian
	var h Header
	if len(head) < minHeaderEnd {
		return nil, fmt.Errorf("%w: %d-byte file ends inside the setup header", ErrNotBzImage, len(head))
	}
	h.Version = le.Uint16(head[offVersion:])
	if h.Version < MinProtocol {
		return nil, fmt.Errorf("%w: boot protocol %d.%02d, need 2.06 or later for a 64-bit boot",
			ErrBootProtocol, h.Version>>8, h.Version&0xff)
	}
	if head[offJump] != 0xeb {
		return nil, fmt.Errorf("%w: no short jump at 0x200 to delimit the setup header", ErrNotBzImage)
	}
	end := offJump + 2 + int(head[offJump+1])
	if end < minHeaderEnd || end > maxHeaderEnd || end > len(head) {
		return nil, fmt.Errorf("%w: setup header claims to end at %#x (want %#x..%#x)",
			ErrNotBzImage, end, minHeaderEnd, maxHeaderEnd)
	}
	h.Raw = append([]byte(nil), head[HeaderStart:end]...)
	h.SetupSects = head[offSetupSects]
	h.Syssize = le.Uint32(head[offSyssize:])
	h.Loadflags = head[offLoadflags]
	h.Code32Start = le.Uint32(head[offCode32Start:])
	h.InitrdAddrMax = le.Uint32(head[offInitrdAddrMax:])
	h.KernelAlignment = le.Uint32(head[offKernelAlign:])
	h.Relocatable = head[offRelocatable] != 0
	h.MinAlignment = head[offMinAlignment]
	h.XLoadflags = le.Uint16(head[offXLoadflags:])
	h.CmdlineSize = le.Uint32(head[offCmdlineSize:])
	h.PayloadOffset = le.Uint32(head[offPayloadOffset:])
	h.PayloadLength = le.Uint32(head[offPayloadLength:])
	h.PrefAddress = le.Uint64(head[offPrefAddress:])
	h.InitSize = le.Uint32(head[offInitSize:])

	if h.Loadflags&LoadedHigh == 0 {
		return nil, fmt.Errorf("%w: a zImage (loaded low); only bzImages are supported", ErrBootProtocol)
	}
	if h.XLoadflags&XLFKernel64 == 0 {
		return nil, fmt.Errorf("%w: boot protocol %s kernel without a 64-bit entry point (XLF_KERNEL_64); is it a 32-bit kernel?",
			ErrBootProtocol, h.VersionString())
	}
	if h.Relocatable {
		a := h.KernelAlignment
		if a == 0 || a&(a-1) != 0 {
			return nil, fmt.Errorf("%w: kernel_alignment %#x is not a power of two", ErrNotBzImage, a)
		}
	}
	if h.PrefAddress%4096 != 0 {
		return nil, fmt.Errorf("%w: pref_address %#x is not page aligned", ErrNotBzImage, h.PrefAddress)
	}
	if h.PrefAddress >= maxPrefAddress {
		return nil, fmt.Errorf("%w: pref_address %#x is absurdly high", ErrNotBzImage, h.PrefAddress)
	}
	if h.InitSize == 0 {
		return nil, fmt.Errorf("%w: init_size is zero", ErrNotBzImage)
	}

	k := &Kernel{Header: h, image: r, kernelOff: h.SetupSize()}
	if k.kernelOff >= size {
		return nil, fmt.Errorf("%w: setup (%d bytes) covers the whole %d-byte file", ErrNotBzImage, k.kernelOff, size)
	}
	k.kernelSize = size - k.kernelOff
	// syssize is authoritative when present; signed kernels carry a
	// trailer after it that must not be loaded as code.
	if s := int64(h.Syssize) * 16; s != 0 {
		if s > k.kernelSize {
			return nil, fmt.Errorf("%w: syssize says %d bytes of kernel, the file holds %d (truncated?)",
				ErrNotBzImage, s, k.kernelSize)
		}
		k.kernelSize = s
	}
	if uint64(h.InitSize) < uint64(k.kernelSize) {
		return nil, fmt.Errorf("%w: init_size %#x smaller than the kernel itself (%#x)", ErrNotBzImage, h.InitSize, k.kernelSize)
	}
	return k, nil
}

// DefaultLoadAddr is where Load puts the protected-mode kernel when the
// caller has no reason to choose: 1 MiB, the boot protocol's traditional
// code32_start, below everything the kernel relocates itself to.
const DefaultLoadAddr = 0x100000

// LoadInfo says where the kernel went.
type LoadInfo struct {
	LoadAddr uint64 // first byte of the protected-mode kernel in guest memory
	Entry64  uint64 // 64-bit entry point: LoadAddr + 0x200
	// RunAddr is where the kernel will decompress itself to; it needs
	// init_size bytes from there. End is the first address past both the
	// loaded image and that area: nothing else (initrd, command line,
	// boot tables) may live in [min(LoadAddr, RunAddr), End).
	RunAddr uint64
	End     uint64
}

func alignUp(v, a uint64) uint64 { return (v + a - 1) &^ (a - 1) }

// runAddr mirrors what the 64-bit entry code (arch/x86/boot/compressed/
// head_64.S) does with the load address: a relocatable kernel runs at the
// load address rounded up to kernel_alignment, but never below its
// LOAD_PHYSICAL_ADDR (pref_address); a fixed one runs at pref_address.
func (h *Header) runAddr(load uint64) uint64 {
	if !h.Relocatable {
		return h.PrefAddress
	}
	r := alignUp(load, uint64(h.KernelAlignment))
	return max(r, h.PrefAddress)
}

// Load copies the protected-mode kernel to addr in guest memory (use
// DefaultLoadAddr) once Place has checked that it and the memory the
// kernel will claim while booting exist. It does not touch anything else.
func (k *Kernel) Load(mem *memory.Memory, addr uint64) (LoadInfo, error) {
	info, err := k.Place(Layout(mem), addr)
	if err != nil {
		return LoadInfo{}, err
	}
	// Written through Slice, which dirty tracking does not see: loading
	// runs before the VM starts, and tracking (a migration) only after.
	dst, _ := mem.Slice(addr, uint64(k.kernelSize))
	// io.ReaderAt may return io.EOF with a full read at the end of the
	// file; only a short read is an error.
	if m, err := k.image.ReadAt(dst, k.kernelOff); m < len(dst) {
		return LoadInfo{}, fmt.Errorf("loader: reading kernel (%d of %d bytes): %w", m, len(dst), err)
	}
	return info, nil
}

// PayloadMagic returns the first bytes of the compressed payload (the
// decompressor's input), when the header locates it. It is only used for
// diagnostics and tests.
func (k *Kernel) PayloadMagic(n int) ([]byte, error) {
	h := &k.Header
	if h.PayloadLength == 0 || int64(h.PayloadOffset)+int64(n) > k.kernelSize {
		return nil, fmt.Errorf("%w: no payload in header", ErrNotBzImage)
	}
	b := make([]byte, n)
	if m, err := k.image.ReadAt(b, k.kernelOff+int64(h.PayloadOffset)); m < n {
		return nil, fmt.Errorf("loader: reading payload: %w", err)
	}
	return b, nil
}
