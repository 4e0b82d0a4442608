// Package smbios builds the SMBIOS (DMI) tables a PC's firmware leaves in
// memory: who made the machine, its serial number and UUID, its processors
// and memory. Linux reads them at boot (/sys/class/dmi/id, dmidecode) and
// so does what keys on them: cloud-init's platform detection and NoCloud's
// serial-number convention, licence checks, inventory tools.
//
// vio writes an SMBIOS 3.0 entry point (the 64-bit "_SM3_" anchor Linux
// looks for first in the BIOS area) and the structure table right after it.
// The layouts follow the DMTF's SMBIOS Reference Specification (DSP0134).
package smbios

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// Info is what the guest learns about the machine. Empty strings are
// left out of the tables (the spec's "no string"), except where defaults
// fill them.
type Info struct {
	Manufacturer string // system, board and chassis maker
	Product      string
	Version      string
	Serial       string // system serial number; cloud-init NoCloud reads "ds=nocloud;..." here
	SKU          string
	Family       string
	AssetTag     string   // chassis asset tag
	UUID         [16]byte // system UUID, RFC 4122 byte order
	OEMStrings   []string // a type 11 structure when given

	BIOSVendor, BIOSVersion, BIOSDate string

	NumCPUs  int
	MemBytes uint64 // guest RAM
}

// Limits on what Info may carry: every string goes into a structure's
// string set, which has at most 255 entries, and the table must fit the
// room the platform gives it.
const (
	MaxString     = 256
	MaxOEMStrings = 32
)

// Defaults for Info fields left empty.
const (
	DefaultManufacturer = "vio"
	DefaultProduct      = "vio virtual machine"
	DefaultBIOSVendor   = "vio"
	DefaultBIOSDate     = "12/01/2026" // mm/dd/yyyy, as the spec asks
)

// Structure types written.
const (
	typeBIOS          = 0
	typeSystem        = 1
	typeBaseboard     = 2
	typeChassis       = 3
	typeProcessor     = 4
	typeOEMStrings    = 11
	typeMemoryArray   = 16
	typeMemoryDevice  = 17
	typeSystemBoot    = 32
	typeEndOfTable    = 127
	entryPointSize    = 0x18
	entryPointAnchor  = "_SM3_"
	specMajor         = 3
	specMinor         = 0
	handleNone        = 0xffff
	handleNoError     = 0xfffe
	biosStartSegment  = 0xe800 // where a 96 KiB BIOS image would start
	biosROMSize64KiB  = 0      // (n+1)*64 KiB: 64 KiB
	processorCentral  = 3
	processorOther    = 1
	processorEnabled  = 0x41 // socket populated, CPU enabled
	memoryUseSystem   = 3
	memoryLocationOth = 1
	memoryECCNone     = 3
	formFactorDIMM    = 9
	memoryTypeRAM     = 7
	chassisOther      = 1
	stateSafe         = 3
)

// Table returns the entry point followed by the structure table, for
// placing at guest physical address addr (the entry point holds the
// table's address). Linux finds the entry point by scanning 0xF0000 to
// 0xFFFFF on 16-byte boundaries, so addr must be such an address.
func Table(info Info, addr uint64) ([]byte, error) {
	if addr%16 != 0 {
		return nil, fmt.Errorf("smbios: entry point at %#x is not 16-byte aligned", addr)
	}
	if err := info.check(); err != nil {
		return nil, err
	}
	info.defaults()
	var t builder
	t.bios(info)
	t.system(info)
	t.baseboard(info)
	t.chassis(info)
	for i := range info.NumCPUs {
		t.processor(i)
	}
	if len(info.OEMStrings) > 0 {
		t.oem(info.OEMStrings)
	}
	t.memory(info.MemBytes)
	t.boot()
	t.add(typeEndOfTable, nil)
	if t.err != nil {
		return nil, t.err
	}

	ep := make([]byte, entryPointSize)
	copy(ep, entryPointAnchor)
	ep[6] = entryPointSize
	ep[7], ep[8] = specMajor, specMinor
	ep[9] = 0  // docrev
	ep[10] = 1 // entry point revision: 3.0
	binary.LittleEndian.PutUint32(ep[12:], uint32(len(t.buf)))
	binary.LittleEndian.PutUint64(ep[16:], addr+entryPointSize)
	ep[5] = checksum(ep)
	return append(ep, t.buf...), nil
}

// check refuses what cannot be written faithfully: a string the guest
// would read cut or garbled.
func (i *Info) check() error {
	strs := map[string]string{
		"manufacturer": i.Manufacturer, "product": i.Product, "version": i.Version,
		"serial number": i.Serial, "SKU": i.SKU, "family": i.Family, "asset tag": i.AssetTag,
		"BIOS vendor": i.BIOSVendor, "BIOS version": i.BIOSVersion, "BIOS date": i.BIOSDate,
	}
	for k, v := range i.OEMStrings {
		strs[fmt.Sprintf("OEM string %d", k+1)] = v
	}
	for name, s := range strs {
		if err := checkString(s); err != nil {
			return fmt.Errorf("smbios: the %s %w", name, err)
		}
	}
	if len(i.OEMStrings) > MaxOEMStrings {
		return fmt.Errorf("smbios: %d OEM strings, at most %d fit", len(i.OEMStrings), MaxOEMStrings)
	}
	if i.NumCPUs < 1 || i.NumCPUs > 255 {
		return fmt.Errorf("smbios: %d CPUs, want 1 to 255", i.NumCPUs)
	}
	return nil
}

func checkString(s string) error {
	if len(s) > MaxString {
		return fmt.Errorf("is %d bytes long, at most %d fit", len(s), MaxString)
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return errors.New("holds a control character; use printable text")
		}
	}
	return nil
}

func (i *Info) defaults() {
	if i.Manufacturer == "" {
		i.Manufacturer = DefaultManufacturer
	}
	if i.Product == "" {
		i.Product = DefaultProduct
	}
	if i.BIOSVendor == "" {
		i.BIOSVendor = DefaultBIOSVendor
	}
	if i.BIOSDate == "" {
		i.BIOSDate = DefaultBIOSDate
	}
}

// builder appends structures with consecutive handles.
type builder struct {
	buf    []byte
	handle uint16
	err    error
}

// structure is one structure being built: its formatted area, then its
// strings.
type structure struct {
	b       []byte
	strings []string
}

// str adds s to the string set and returns its number (0: no string).
func (s *structure) str(v string) byte {
	if v == "" {
		return 0
	}
	s.strings = append(s.strings, v)
	return byte(len(s.strings))
}

func (s *structure) u8(v byte)    { s.b = append(s.b, v) }
func (s *structure) u16(v uint16) { s.b = binary.LittleEndian.AppendUint16(s.b, v) }
func (s *structure) u32(v uint32) { s.b = binary.LittleEndian.AppendUint32(s.b, v) }
func (s *structure) u64(v uint64) { s.b = binary.LittleEndian.AppendUint64(s.b, v) }

// add appends a structure of type typ whose fields fill builds, and
// returns its handle.
func (t *builder) add(typ byte, fill func(s *structure)) uint16 {
	h := t.handle
	t.handle++
	s := &structure{b: []byte{typ, 0, 0, 0}}
	binary.LittleEndian.PutUint16(s.b[2:], h)
	if fill != nil {
		fill(s)
	}
	if len(s.b) > 255 || len(s.strings) > 255 {
		t.err = fmt.Errorf("smbios: type %d structure too large", typ)
		return h
	}
	s.b[1] = byte(len(s.b))
	t.buf = append(t.buf, s.b...)
	if len(s.strings) == 0 {
		t.buf = append(t.buf, 0, 0)
		return h
	}
	for _, v := range s.strings {
		t.buf = append(t.buf, v...)
		t.buf = append(t.buf, 0)
	}
	t.buf = append(t.buf, 0)
	return h
}

func (t *builder) bios(i Info) {
	t.add(typeBIOS, func(s *structure) {
		s.u8(s.str(i.BIOSVendor))
		s.u8(s.str(i.BIOSVersion))
		s.u16(biosStartSegment)
		s.u8(s.str(i.BIOSDate))
		s.u8(biosROMSize64KiB)
		s.u64(1 << 3) // characteristics: "not supported" (no BIOS services)
		s.u8(0)       // extension byte 1
		s.u8(1 << 4)  // extension byte 2: the system is a virtual machine
		s.u8(0)       // BIOS major release
		s.u8(0)       // minor
		s.u8(0xff)    // embedded controller: none
		s.u8(0xff)
	})
}

func (t *builder) system(i Info) {
	t.add(typeSystem, func(s *structure) {
		s.u8(s.str(i.Manufacturer))
		s.u8(s.str(i.Product))
		s.u8(s.str(i.Version))
		s.u8(s.str(i.Serial))
		s.b = append(s.b, smbiosUUID(i.UUID)...)
		s.u8(6) // wake-up type: power switch
		s.u8(s.str(i.SKU))
		s.u8(s.str(i.Family))
	})
}

// smbiosUUID stores u as SMBIOS 2.6 and later do: the first three fields
// little-endian, so that dmidecode and Linux print the UUID as written.
func smbiosUUID(u [16]byte) []byte {
	b := u
	b[0], b[1], b[2], b[3] = u[3], u[2], u[1], u[0]
	b[4], b[5] = u[5], u[4]
	b[6], b[7] = u[7], u[6]
	return b[:]
}

func (t *builder) baseboard(i Info) {
	t.add(typeBaseboard, func(s *structure) {
		s.u8(s.str(i.Manufacturer))
		s.u8(s.str(i.Product))
		s.u8(s.str(i.Version))
		s.u8(0) // serial: the system's is in type 1 only
		s.u8(s.str(i.AssetTag))
		s.u8(1)         // features: a hosting board
		s.u8(0)         // location in chassis: no string
		s.u16(t.handle) // the chassis, added next
		s.u8(0x0a)      // board type: motherboard
		s.u8(0)         // no contained objects
	})
}

func (t *builder) chassis(i Info) {
	t.add(typeChassis, func(s *structure) {
		s.u8(s.str(i.Manufacturer))
		s.u8(chassisOther)
		s.u8(s.str(i.Version))
		s.u8(0) // serial: the system's is in type 1 only
		s.u8(s.str(i.AssetTag))
		s.u8(stateSafe) // boot-up state
		s.u8(stateSafe) // power supply
		s.u8(stateSafe) // thermal
		s.u8(3)         // security: none
		s.u32(0)        // OEM defined
		s.u8(0)         // height: unspecified
		s.u8(0)         // power cords: unspecified
		s.u8(0)         // contained elements
		s.u8(3)         // element record length
		s.u8(s.str(i.SKU))
	})
}

func (t *builder) processor(n int) {
	t.add(typeProcessor, func(s *structure) {
		s.u8(s.str(fmt.Sprintf("CPU %d", n)))
		s.u8(processorCentral)
		s.u8(0xfe) // family: see family 2
		s.u8(s.str(DefaultManufacturer))
		s.u64(0) // processor ID: the guest asks CPUID itself
		s.u8(0)  // version: no string
		s.u8(0)  // voltage: unknown
		s.u16(0) // external clock: unknown
		s.u16(0) // max speed: unknown
		s.u16(0) // current speed: unknown
		s.u8(processorEnabled)
		s.u8(processorOther) // upgrade
		s.u16(handleNone)    // L1, L2, L3 caches: not described
		s.u16(handleNone)
		s.u16(handleNone)
		s.u8(0) // serial, asset tag, part number: no strings
		s.u8(0)
		s.u8(0)
		s.u8(1)  // core count
		s.u8(1)  // cores enabled
		s.u8(1)  // thread count
		s.u16(4) // characteristics: 64-bit capable
		s.u16(1) // family 2: other
		s.u16(1) // core count 2
		s.u16(1) // cores enabled 2
		s.u16(1) // thread count 2
	})
}

func (t *builder) oem(strs []string) {
	t.add(typeOEMStrings, func(s *structure) {
		s.u8(byte(len(strs)))
		for _, v := range strs {
			if v == "" {
				v = " " // a string set entry cannot be empty
			}
			s.strings = append(s.strings, v)
		}
	})
}

// memory describes guest RAM as one array holding one device. (Type 19,
// the array's address ranges, is left out: guest RAM is split around the
// MMIO hole, and Linux takes the map from e820, not from here.)
func (t *builder) memory(bytes uint64) {
	kib := bytes >> 10
	array := t.add(typeMemoryArray, func(s *structure) {
		s.u8(memoryLocationOth)
		s.u8(memoryUseSystem)
		s.u8(memoryECCNone)
		if kib < 0x80000000 {
			s.u32(uint32(kib))
		} else {
			s.u32(0x80000000) // see extended capacity
		}
		s.u16(handleNoError)
		s.u16(1) // devices
		s.u64(bytes)
	})
	mib := bytes >> 20
	t.add(typeMemoryDevice, func(s *structure) {
		s.u16(array)
		s.u16(handleNoError)
		s.u16(0xffff) // total width: unknown
		s.u16(0xffff) // data width: unknown
		if mib < 0x7fff {
			s.u16(uint16(mib)) // MiB (bit 15 clear)
		} else {
			s.u16(0x7fff) // see extended size
		}
		s.u8(formFactorDIMM)
		s.u8(0) // not in a set
		s.u8(s.str("DIMM 0"))
		s.u8(0) // bank locator: no string
		s.u8(memoryTypeRAM)
		s.u16(2) // type detail: other
		s.u16(0) // speed: unknown
		s.u8(s.str(DefaultManufacturer))
		s.u8(0) // serial, asset tag, part number: no strings
		s.u8(0)
		s.u8(0)
		s.u8(0) // attributes: rank unknown
		s.u32(uint32(min(mib, 0x7fffffff)))
		s.u16(0) // configured speed: unknown
		s.u16(0) // minimum, maximum, configured voltage: unknown
		s.u16(0)
		s.u16(0)
	})
}

func (t *builder) boot() {
	t.add(typeSystemBoot, func(s *structure) {
		s.b = append(s.b, make([]byte, 6)...) // reserved
		s.u8(0)                               // no errors detected
	})
}

func checksum(b []byte) byte {
	var sum byte
	for _, c := range b {
		sum += c
	}
	return -sum
}

// ParseUUID reads a UUID in its usual text form
// (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx).
func ParseUUID(s string) ([16]byte, error) {
	var u [16]byte
	bad := fmt.Errorf("UUID %q: want the form 01234567-89ab-cdef-0123-456789abcdef", s)
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return u, bad
	}
	b, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(b) != len(u) {
		return u, bad
	}
	copy(u[:], b)
	return u, nil
}
