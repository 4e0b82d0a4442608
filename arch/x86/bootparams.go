package x86

import (
	"encoding/binary"
	"fmt"

	"github.com/viovmm/vio/memory"
)

// Offsets in struct boot_params, the "zero page"
// (Documentation/arch/x86/zero-page.rst), and in the struct setup_header
// embedded in it at 0x1f1 (Documentation/arch/x86/boot.rst). Only the
// fields vio writes are named.
const (
	ZeroPageSize = 4096

	bpExtRamdiskImage = 0x0c0 // u32: high 32 bits of ramdisk_image
	bpExtRamdiskSize  = 0x0c4 // u32: high 32 bits of ramdisk_size
	bpExtCmdLinePtr   = 0x0c8 // u32: high 32 bits of cmd_line_ptr
	bpAltMemK         = 0x1e0 // u32: memory above 1 MiB in KiB (legacy)
	bpE820Entries     = 0x1e8 // u8: number of e820_table entries
	bpSentinel        = 0x1ef // u8: must stay 0, or the kernel wipes fields it thinks are stale
	bpSetupHeader     = 0x1f1 // struct setup_header, copied from the image
	bpE820Table       = 0x2d0 // struct boot_e820_entry[128], 20 bytes each
	e820EntrySize     = 20

	// setup_header fields, as zero-page offsets.
	hdrVidMode      = 0x1fa // u16
	hdrBootFlag     = 0x1fe // u16: 0xAA55
	hdrTypeOfLoader = 0x210 // u8
	hdrLoadflags    = 0x211 // u8
	hdrRamdiskImage = 0x218 // u32
	hdrRamdiskSize  = 0x21c // u32
	hdrHeapEndPtr   = 0x224 // u16
	hdrCmdLinePtr   = 0x228 // u32

	// maxSetupHeaderEnd: the setup header copy must not run into
	// edd_mbr_sig_buffer at 0x290.
	maxSetupHeaderEnd = 0x290
)

// TypeOfLoaderUndefined is type_of_loader 0xff: "undefined" boot loader,
// which is what a VMM that is not one of the registered loaders reports.
const TypeOfLoaderUndefined = 0xff

// BootParams are the inputs of the zero page.
type BootParams struct {
	// SetupHeader is the image's setup header starting at offset 0x1f1
	// (loader.Header.Raw). It is copied verbatim, then the fields below
	// are filled in, as boot.rst asks of a 64-bit boot loader.
	SetupHeader []byte
	CmdlineAddr uint64 // guest address of the NUL-terminated command line
	RamdiskAddr uint64 // 0 with RamdiskSize 0 when there is no initrd
	RamdiskSize uint64
	E820        []E820Entry
}

// ZeroPage builds the 4 KiB struct boot_params.
func ZeroPage(p BootParams) ([]byte, error) {
	zp := make([]byte, ZeroPageSize)
	if len(p.SetupHeader) < hdrCmdLinePtr+4-bpSetupHeader || bpSetupHeader+len(p.SetupHeader) > maxSetupHeaderEnd {
		return nil, fmt.Errorf("x86: setup header of %d bytes; want %d to %d", len(p.SetupHeader),
			hdrCmdLinePtr+4-bpSetupHeader, maxSetupHeaderEnd-bpSetupHeader)
	}
	if len(p.E820) > E820Max {
		return nil, fmt.Errorf("x86: %d e820 entries, room for %d", len(p.E820), E820Max)
	}
	le := binary.LittleEndian
	copy(zp[bpSetupHeader:], p.SetupHeader)
	le.PutUint16(zp[hdrBootFlag:], 0xaa55)
	le.PutUint16(zp[hdrVidMode:], 0xffff) // "normal" text mode: ask for nothing
	zp[hdrTypeOfLoader] = TypeOfLoaderUndefined
	// CAN_USE_HEAP with heap_end_ptr: the real-mode heap is not used on
	// a 64-bit entry, but the kernel reads the flag; keep LOADED_HIGH.
	zp[hdrLoadflags] |= 0x80 | 0x01
	le.PutUint16(zp[hdrHeapEndPtr:], 0xfe00)
	le.PutUint32(zp[hdrCmdLinePtr:], uint32(p.CmdlineAddr))
	le.PutUint32(zp[bpExtCmdLinePtr:], uint32(p.CmdlineAddr>>32))
	le.PutUint32(zp[hdrRamdiskImage:], uint32(p.RamdiskAddr))
	le.PutUint32(zp[hdrRamdiskSize:], uint32(p.RamdiskSize))
	le.PutUint32(zp[bpExtRamdiskImage:], uint32(p.RamdiskAddr>>32))
	le.PutUint32(zp[bpExtRamdiskSize:], uint32(p.RamdiskSize>>32))
	zp[bpSentinel] = 0

	var above1M uint64
	for i, e := range p.E820 {
		o := bpE820Table + i*e820EntrySize
		le.PutUint64(zp[o:], e.Addr)
		le.PutUint64(zp[o+8:], e.Size)
		le.PutUint32(zp[o+16:], e.Type)
		if e.Type == E820RAM && e.Addr >= HighMemStart && e.Addr < MMIOEnd {
			above1M += e.Size
		}
	}
	zp[bpE820Entries] = byte(len(p.E820))
	le.PutUint32(zp[bpAltMemK:], uint32(min(above1M>>10, 0xffffffff)))
	return zp, nil
}

// WriteZeroPage builds the zero page and stores it at ZeroPageAddr.
func WriteZeroPage(mem *memory.Memory, p BootParams) error {
	zp, err := ZeroPage(p)
	if err != nil {
		return err
	}
	if _, err := mem.WriteAt(zp, ZeroPageAddr); err != nil {
		return fmt.Errorf("x86: writing zero page: %w", err)
	}
	return nil
}
