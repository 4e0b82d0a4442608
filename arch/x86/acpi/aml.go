package acpi

import (
	"encoding/binary"
	"fmt"
)

// A tiny AML encoder: just the opcodes the DSDT needs (ACPI 6.5, chapter
// 20 "ACPI Machine Language Specification"). Every function returns the
// encoded bytes of one term, so a namespace is written as nested calls
// that read like the ASL they stand for. Names and strings come from this
// package, not from a guest or a user, so a malformed one is a bug here
// and panics.

// AML opcodes.
const (
	opZero        = 0x00
	opOne         = 0x01
	opName        = 0x08
	opBytePrefix  = 0x0a
	opWordPrefix  = 0x0b
	opDWordPrefix = 0x0c
	opString      = 0x0d
	opQWordPrefix = 0x0e
	opScope       = 0x10
	opBuffer      = 0x11
	opPackage     = 0x12
	opMethod      = 0x14
	opDualName    = 0x2e
	opExtPrefix   = 0x5b
	opDevice      = 0x82 // after opExtPrefix
	opRootChar    = '\\'
	opArg0        = 0x68
	opReturn      = 0xa4
)

// nameSeg encodes one 4-character name segment, padding a shorter name
// with underscores as ASL does.
func nameSeg(s string) []byte {
	if len(s) == 0 || len(s) > 4 {
		panic(fmt.Sprintf("acpi: bad AML name segment %q", s))
	}
	b := []byte(s + "___")[:4]
	for i, c := range b {
		ok := c == '_' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9'
		if !ok {
			panic(fmt.Sprintf("acpi: bad AML name segment %q", s))
		}
	}
	return b
}

// namePath encodes a NameString: an optional leading '\' and one or more
// dot-separated segments ("\_SB_", "PCI0", "\_SB_.PCI0", "\_SB_.PCI0.PCNT").
func namePath(p string) []byte {
	var out []byte
	if len(p) > 0 && p[0] == opRootChar {
		out = append(out, opRootChar)
		p = p[1:]
	}
	var segs []string
	for start, i := 0, 0; i <= len(p); i++ {
		if i == len(p) || p[i] == '.' {
			segs = append(segs, p[start:i])
			start = i + 1
		}
	}
	switch {
	case len(segs) == 1:
		return append(out, nameSeg(segs[0])...)
	case len(segs) == 2:
		out = append(out, opDualName)
	case len(segs) <= 255:
		out = append(out, opMultiName, byte(len(segs)))
	default:
		panic(fmt.Sprintf("acpi: unsupported AML name path %q", p))
	}
	for _, s := range segs {
		out = append(out, nameSeg(s)...)
	}
	return out
}

// pkgLength prefixes body with its PkgLength, which counts itself: one
// byte up to 63, otherwise 2-4 bytes whose first byte holds the count of
// the bytes that follow in bits 7:6 and the low nibble of the length.
func pkgLength(body []byte) []byte {
	n := len(body)
	var hdr []byte
	switch {
	case n+1 < 1<<6:
		hdr = []byte{byte(n + 1)}
	case n+2 < 1<<12:
		l := n + 2
		hdr = []byte{1<<6 | byte(l&0xf), byte(l >> 4)}
	case n+3 < 1<<20:
		l := n + 3
		hdr = []byte{2<<6 | byte(l&0xf), byte(l >> 4), byte(l >> 12)}
	case n+4 < 1<<28:
		l := n + 4
		hdr = []byte{3<<6 | byte(l&0xf), byte(l >> 4), byte(l >> 12), byte(l >> 20)}
	default:
		panic("acpi: AML package too long")
	}
	return append(hdr, body...)
}

// integer encodes v in the shortest form.
func integer(v uint64) []byte {
	switch {
	case v == 0:
		return []byte{opZero}
	case v == 1:
		return []byte{opOne}
	case v <= 0xff:
		return []byte{opBytePrefix, byte(v)}
	case v <= 0xffff:
		return binary.LittleEndian.AppendUint16([]byte{opWordPrefix}, uint16(v))
	case v <= 0xffffffff:
		return binary.LittleEndian.AppendUint32([]byte{opDWordPrefix}, uint32(v))
	}
	return binary.LittleEndian.AppendUint64([]byte{opQWordPrefix}, v)
}

// str encodes an ASCII string constant.
func str(s string) []byte {
	out := []byte{opString}
	for i := 0; i < len(s); i++ {
		if s[i] == 0 || s[i] > 0x7f {
			panic(fmt.Sprintf("acpi: AML string %q is not ASCII", s))
		}
	}
	out = append(out, s...)
	return append(out, 0)
}

func concat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// name is Name(n, obj).
func name(n string, obj []byte) []byte {
	return concat([]byte{opName}, namePath(n), obj)
}

// pkg is Package() {elems...}.
func pkg(elems ...[]byte) []byte {
	if len(elems) > 255 {
		panic("acpi: AML package with more than 255 elements")
	}
	return append([]byte{opPackage}, pkgLength(concat(append([][]byte{{byte(len(elems))}}, elems...)...))...)
}

// scope is Scope(n) {body...}.
func scope(n string, body ...[]byte) []byte {
	return append([]byte{opScope}, pkgLength(concat(append([][]byte{namePath(n)}, body...)...))...)
}

// device is Device(n) {body...}.
func device(n string, body ...[]byte) []byte {
	return append([]byte{opExtPrefix, opDevice}, pkgLength(concat(append([][]byte{namePath(n)}, body...)...))...)
}

// method is Method(n, args, NotSerialized) {body...}.
func method(n string, args int, body ...[]byte) []byte {
	if args < 0 || args > 7 {
		panic("acpi: AML method with bad argument count")
	}
	return append([]byte{opMethod}, pkgLength(concat(append([][]byte{namePath(n), {byte(args)}}, body...)...))...)
}

// returnArg is Return(ArgN).
func returnArg(n int) []byte {
	if n < 0 || n > 6 {
		panic("acpi: bad AML argument number")
	}
	return []byte{opReturn, opArg0 + byte(n)}
}

// buffer is Buffer() {data...}.
func buffer(data []byte) []byte {
	return append([]byte{opBuffer}, pkgLength(concat(integer(uint64(len(data))), data))...)
}

// eisaID compresses a PNP ID such as "PNP0A03" the way ASL's EISAID()
// does: three letters in five bits each and four hex digits, stored so
// that the bytes in memory read in that order (big-endian).
func eisaID(id string) uint32 {
	if len(id) != 7 {
		panic(fmt.Sprintf("acpi: bad EISA id %q", id))
	}
	var v uint32
	for i := 0; i < 3; i++ {
		c := id[i]
		if c < 'A' || c > 'Z' {
			panic(fmt.Sprintf("acpi: bad EISA id %q", id))
		}
		v = v<<5 | uint32(c-'@')
	}
	for i := 3; i < 7; i++ {
		var d byte
		switch c := id[i]; {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			panic(fmt.Sprintf("acpi: bad EISA id %q", id))
		}
		v = v<<4 | uint32(d)
	}
	// v holds the 31-bit big-endian value; AML stores the integer
	// little-endian, so swap to keep the byte order.
	return v>>24 | v>>8&0xff00 | v<<8&0xff0000 | v<<24
}

// Resource descriptors (ACPI 6.5, 6.4 "Resource Data Types for ACPI").
const (
	rdIRQ          = 0x22 // small item 0x04, length 2
	rdIO           = 0x47 // small item 0x08, length 7
	rdEndTag       = 0x79
	rdMemory32Fix  = 0x86
	rdDWordAddress = 0x87
	rdWordAddress  = 0x88
	rdQWordAddress = 0x8a

	// Address space resource types.
	rtMemory = 0
	rtIO     = 1
	rtBus    = 2

	// General flags of a bridge's windows: a producer, positive decode,
	// with fixed minimum and maximum addresses.
	gfProducerFixed = 1<<2 | 1<<3

	// Type-specific flags.
	tfIOEntireRange   = 3      // ISA and non-ISA ranges
	tfMemRW           = 1 << 0 // read-write
	tfMemCacheable    = 1 << 1 // bits 2:1 = 1
	tfMemNonCacheable = 0
)

// resourceTemplate is ResourceTemplate() {descs...}: a Buffer ending in
// an end tag whose checksum byte is 0 ("treat as valid").
func resourceTemplate(descs ...[]byte) []byte {
	return buffer(concat(append(descs, []byte{rdEndTag, 0})...))
}

// ioPort is IO(Decode16, min, max, align, length).
func ioPort(min, max uint16, align, length uint8) []byte {
	b := []byte{rdIO, 1}
	b = binary.LittleEndian.AppendUint16(b, min)
	b = binary.LittleEndian.AppendUint16(b, max)
	return append(b, align, length)
}

// irqNoFlags is IRQNoFlags() {irq}: an ISA-style edge-triggered,
// active-high interrupt.
func irqNoFlags(irq uint8) []byte {
	if irq > 15 {
		panic("acpi: IRQNoFlags takes an ISA IRQ")
	}
	return binary.LittleEndian.AppendUint16([]byte{rdIRQ}, 1<<irq)
}

// memory32Fixed is Memory32Fixed(ReadWrite, base, length).
func memory32Fixed(base, length uint32) []byte {
	b := []byte{rdMemory32Fix, 9, 0, 1}
	b = binary.LittleEndian.AppendUint32(b, base)
	return binary.LittleEndian.AppendUint32(b, length)
}

// wordAddress is a Word Address Space descriptor (WordIO, WordBusNumber).
func wordAddress(typ, typeFlags byte, min, max uint16) []byte {
	b := []byte{rdWordAddress, 13, 0, typ, gfProducerFixed, typeFlags}
	for _, v := range []uint16{0, min, max, 0, max - min + 1} {
		b = binary.LittleEndian.AppendUint16(b, v)
	}
	return b
}

// dwordMemory is DWordMemory(ResourceProducer, PosDecode, MinFixed,
// MaxFixed, caching, ReadWrite, 0, min, max, 0, max-min+1).
func dwordMemory(typeFlags byte, min, max uint32) []byte {
	b := []byte{rdDWordAddress, 23, 0, rtMemory, gfProducerFixed, typeFlags}
	for _, v := range []uint32{0, min, max, 0, max - min + 1} {
		b = binary.LittleEndian.AppendUint32(b, v)
	}
	return b
}

// qwordMemory is the 64-bit counterpart of dwordMemory.
func qwordMemory(typeFlags byte, min, max uint64) []byte {
	b := []byte{rdQWordAddress, 43, 0, rtMemory, gfProducerFixed, typeFlags}
	for _, v := range []uint64{0, min, max, 0, max - min + 1} {
		b = binary.LittleEndian.AppendUint64(b, v)
	}
	return b
}
