package acpi_test

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/viovmm/vio/memory"
)

// This file reads the tables back out of guest memory the way an OS
// does, starting from the RSDP, and checks every structural rule a
// loader checks. It knows the layouts from the ACPI specification, not
// from the package's code.

var le = binary.LittleEndian

type table struct {
	addr uint64
	b    []byte // whole table, header included
}

func (t table) sig() string   { return string(t.b[0:4]) }
func (t table) revision() int { return int(t.b[8]) }

type parsed struct {
	rsdp   []byte
	xsdt   table
	byName map[string]table
	dsdt   table
	order  []string // signatures in XSDT order
	mem    *memory.Memory
}

func sum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return s
}

func readTable(mem *memory.Memory, addr uint64) (table, error) {
	h := make([]byte, 36)
	if _, err := mem.ReadAt(h, int64(addr)); err != nil {
		return table{}, fmt.Errorf("table header at %#x: %w", addr, err)
	}
	n := le.Uint32(h[4:])
	if n < 36 || n > 1<<20 {
		return table{}, fmt.Errorf("table %q at %#x: length %d", h[:4], addr, n)
	}
	b := make([]byte, n)
	if _, err := mem.ReadAt(b, int64(addr)); err != nil {
		return table{}, fmt.Errorf("table %q at %#x: %w", h[:4], addr, err)
	}
	if s := sum(b); s != 0 {
		return table{}, fmt.Errorf("table %q at %#x: checksum off by %#x", h[:4], addr, s)
	}
	if string(b[10:16]) != "VIOVMM" {
		return table{}, fmt.Errorf("table %q: OEM ID %q", h[:4], b[10:16])
	}
	return table{addr, b}, nil
}

// parse follows RSDP → XSDT → tables → X_DSDT.
func parse(mem *memory.Memory, rsdpAddr uint64) (*parsed, error) {
	p := &parsed{byName: map[string]table{}, mem: mem}
	if rsdpAddr%16 != 0 || rsdpAddr < 0xe0000 || rsdpAddr+36 > 0x100000 {
		return nil, fmt.Errorf("RSDP at %#x is outside the BIOS scan area or unaligned", rsdpAddr)
	}
	r := make([]byte, 36)
	if _, err := mem.ReadAt(r, int64(rsdpAddr)); err != nil {
		return nil, err
	}
	p.rsdp = r
	switch {
	case string(r[:8]) != "RSD PTR ":
		return nil, fmt.Errorf("RSDP signature %q", r[:8])
	case sum(r[:20]) != 0:
		return nil, fmt.Errorf("RSDP checksum")
	case r[15] != 2:
		return nil, fmt.Errorf("RSDP revision %d", r[15])
	case le.Uint32(r[20:]) != 36:
		return nil, fmt.Errorf("RSDP length %d", le.Uint32(r[20:]))
	case sum(r) != 0:
		return nil, fmt.Errorf("RSDP extended checksum")
	}
	x, err := readTable(mem, le.Uint64(r[24:]))
	if err != nil {
		return nil, err
	}
	if x.sig() != "XSDT" || (len(x.b)-36)%8 != 0 {
		return nil, fmt.Errorf("XSDT %q of %d bytes", x.sig(), len(x.b))
	}
	p.xsdt = x
	for off := 36; off < len(x.b); off += 8 {
		t, err := readTable(mem, le.Uint64(x.b[off:]))
		if err != nil {
			return nil, err
		}
		if _, dup := p.byName[t.sig()]; dup {
			return nil, fmt.Errorf("two %s tables", t.sig())
		}
		p.byName[t.sig()] = t
		p.order = append(p.order, t.sig())
	}
	f, ok := p.byName["FACP"]
	if !ok {
		return nil, fmt.Errorf("no FADT in the XSDT")
	}
	if len(f.b) < 148 {
		return nil, fmt.Errorf("FADT too short for X_DSDT")
	}
	d, err := readTable(mem, le.Uint64(f.b[140:]))
	if err != nil {
		return nil, err
	}
	if d.sig() != "DSDT" {
		return nil, fmt.Errorf("X_DSDT points at %q", d.sig())
	}
	p.dsdt = d
	// No two tables may overlap, nor the RSDP.
	all := []table{{rsdpAddr, r}, x, d}
	for _, s := range p.order {
		all = append(all, p.byName[s])
	}
	for i, a := range all {
		for _, b := range all[i+1:] {
			if a.addr < b.addr+uint64(len(b.b)) && b.addr < a.addr+uint64(len(a.b)) {
				return nil, fmt.Errorf("tables %q and %q overlap", a.b[:4], b.b[:4])
			}
		}
	}
	return p, nil
}

// gas is a Generic Address Structure.
type gas struct {
	space, bitWidth, bitOffset, access uint8
	addr                               uint64
}

func parseGAS(b []byte) gas {
	return gas{b[0], b[1], b[2], b[3], le.Uint64(b[4:])}
}

// madtEntry is one interrupt controller structure.
type madtEntry struct {
	typ  uint8
	body []byte // after type and length
}

func madtEntries(t table) ([]madtEntry, error) {
	var out []madtEntry
	b := t.b[44:]
	for len(b) > 0 {
		if len(b) < 2 || b[1] < 2 || int(b[1]) > len(b) {
			return nil, fmt.Errorf("MADT entry runs past the table: % x", b[:min(len(b), 4)])
		}
		out = append(out, madtEntry{b[0], b[2:b[1]]})
		b = b[b[1]:]
	}
	return out, nil
}

var _ = bytes.Equal
