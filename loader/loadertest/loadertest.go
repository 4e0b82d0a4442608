// Package loadertest builds synthetic bzImages for tests: just enough
// setup header for package loader, plus a protected-mode part whose 64-bit
// entry point (offset 0x200) holds whatever code the test supplies. A tiny
// guest test can thus boot "a kernel" through the real loader path without
// shipping a Linux image.
package loadertest

import "encoding/binary"

// Options describes the image. Start from Default and change fields.
type Options struct {
	Version         uint16 // boot protocol, e.g. 0x020f for 2.15
	SetupSects      uint8
	Loadflags       uint8
	XLoadflags      uint16
	Relocatable     bool
	KernelAlignment uint32
	PrefAddress     uint64
	InitSize        uint32 // 0: four times the protected-mode size, page rounded
	CmdlineSize     uint32
	InitrdAddrMax   uint32
	// ProtectedMode is the protected-mode kernel; nil means 64 KiB of a
	// recognisable pattern (byte i is i*7+3). Entry64 is copied over it
	// at offset 0x200, the 64-bit entry point.
	ProtectedMode []byte
	Entry64       []byte
}

// Default returns the options of a modern x86-64 kernel (protocol 2.15,
// relocatable, 2 MiB alignment, runs at 16 MiB).
func Default() Options {
	return Options{
		Version:         0x020f,
		SetupSects:      4,
		Loadflags:       0x01, // LOADED_HIGH
		XLoadflags:      0x03, // XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G
		Relocatable:     true,
		KernelAlignment: 2 << 20,
		PrefAddress:     16 << 20,
		CmdlineSize:     2047,
		InitrdAddrMax:   0x7fffffff,
	}
}

// Pattern is the default protected-mode content's byte at offset i.
func Pattern(i int) byte { return byte(i*7 + 3) }

// BzImage returns the image bytes.
func BzImage(o Options) []byte {
	pm := o.ProtectedMode
	if pm == nil {
		pm = make([]byte, 64<<10)
		for i := range pm {
			pm[i] = Pattern(i)
		}
	} else {
		pm = append([]byte(nil), pm...)
	}
	if len(o.Entry64) > 0 {
		if len(pm) < 0x200+len(o.Entry64) {
			pm = append(pm, make([]byte, 0x200+len(o.Entry64)-len(pm))...)
		}
		copy(pm[0x200:], o.Entry64)
	}
	// syssize counts 16-byte paragraphs: pad to a multiple of 16.
	for len(pm)%16 != 0 {
		pm = append(pm, 0)
	}
	sects := int(o.SetupSects)
	if sects == 0 {
		sects = 4
	}
	setup := make([]byte, (sects+1)*512)
	le := binary.LittleEndian
	setup[0x1f1] = o.SetupSects
	le.PutUint32(setup[0x1f4:], uint32(len(pm)/16))
	le.PutUint16(setup[0x1fe:], 0xaa55)
	setup[0x200] = 0xeb
	setup[0x201] = 0x26c - 0x202 // header ends after kernel_info_offset
	copy(setup[0x202:], "HdrS")
	le.PutUint16(setup[0x206:], o.Version)
	setup[0x211] = o.Loadflags
	le.PutUint32(setup[0x214:], 0x100000)
	le.PutUint32(setup[0x22c:], o.InitrdAddrMax)
	le.PutUint32(setup[0x230:], o.KernelAlignment)
	if o.Relocatable {
		setup[0x234] = 1
	}
	setup[0x235] = 21
	le.PutUint16(setup[0x236:], o.XLoadflags)
	le.PutUint32(setup[0x238:], o.CmdlineSize)
	le.PutUint64(setup[0x258:], o.PrefAddress)
	init := o.InitSize
	if init == 0 {
		init = uint32((4*len(pm) + 4095) &^ 4095)
	}
	le.PutUint32(setup[0x260:], init)
	return append(setup, pm...)
}

// ELF returns a minimal x86-64 ELF executable with one PT_LOAD segment
// holding code at physical address paddr (the entry point), followed by
// bss bytes of zeroed memory.
func ELF(code []byte, paddr, bss uint64) []byte {
	const ehsize, phsize = 64, 56
	le := binary.LittleEndian
	b := make([]byte, ehsize+phsize)
	copy(b, "\x7fELF")
	b[4], b[5], b[6] = 2, 1, 1   // 64-bit, little-endian, version 1
	le.PutUint16(b[16:], 2)      // ET_EXEC
	le.PutUint16(b[18:], 62)     // EM_X86_64
	le.PutUint32(b[20:], 1)      // version
	le.PutUint64(b[24:], paddr)  // entry
	le.PutUint64(b[32:], ehsize) // phoff
	le.PutUint16(b[52:], ehsize) // ehsize
	le.PutUint16(b[54:], phsize) // phentsize
	le.PutUint16(b[56:], 1)      // phnum
	le.PutUint16(b[58:], 64)     // shentsize
	p := b[ehsize:]
	le.PutUint32(p[0:], 1)                         // PT_LOAD
	le.PutUint32(p[4:], 5)                         // R+X
	le.PutUint64(p[8:], ehsize+phsize)             // offset
	le.PutUint64(p[16:], 0xffffffff80000000+paddr) // vaddr
	le.PutUint64(p[24:], paddr)                    // paddr
	le.PutUint64(p[32:], uint64(len(code)))        // filesz
	le.PutUint64(p[40:], uint64(len(code))+bss)    // memsz
	le.PutUint64(p[48:], 0x1000)                   // align
	return append(b, code...)
}
