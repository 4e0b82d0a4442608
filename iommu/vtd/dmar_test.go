package vtd_test

import (
	"encoding/binary"
	"testing"

	"github.com/viovmm/vio/arch/x86/acpi"
	"github.com/viovmm/vio/iommu/vtd"
)

func TestDMARTable(t *testing.T) {
	const base = 0xfed9_0000
	b := vtd.DMARTable(base)
	le := binary.LittleEndian
	if string(b[:4]) != "DMAR" || int(le.Uint32(b[4:])) != len(b) || len(b) != 48+16 {
		t.Fatalf("header: %q, length %d of %d bytes", b[:4], le.Uint32(b[4:]), len(b))
	}
	var sum byte
	for _, c := range b {
		sum += c
	}
	if sum != 0 {
		t.Fatalf("checksum: bytes sum to %#x", sum)
	}
	if string(b[10:16]) != acpi.OEMID {
		t.Errorf("OEM id %q", b[10:16])
	}
	if b[36] != 47 || b[37] != 0 {
		t.Errorf("host address width %d, flags %#x", b[36]+1, b[37])
	}
	d := b[48:]
	if le.Uint16(d) != 0 || le.Uint16(d[2:]) != 16 || d[4] != 1 || le.Uint16(d[6:]) != 0 || le.Uint64(d[8:]) != base {
		t.Errorf("DRHD: % x", d)
	}
}
