package x86_test

import (
	"testing"

	"github.com/viovmm/vio/arch/x86"
)

func sum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return s
}

type mpParsed struct {
	cpus      []uint8 // APIC IDs
	bsp       []uint8
	buses     map[uint8]string
	ioapicID  uint8
	ioapicAdr uint32
	isa       map[uint8]uint8 // ISA IRQ -> IOAPIC pin
	pci       map[uint8]uint8 // PCI (dev<<2|pin) -> IOAPIC pin
	lint      map[uint8]uint8 // LINT pin -> type
}

// parseMP finds and checks the MP table the way Linux's smp_scan_config
// and smp_check_mpc do, from the bytes in guest memory.
func parseMP(t *testing.T, mem interface {
	ReadAt([]byte, int64) (int, error)
}) mpParsed {
	t.Helper()
	area := make([]byte, x86.HighMemStart-x86.BIOSStart)
	if _, err := mem.ReadAt(area, x86.BIOSStart); err != nil {
		t.Fatal(err)
	}
	var fp []byte
	for off := 0; off+16 <= len(area); off += 16 {
		if string(area[off:off+4]) == "_MP_" && area[off+8] == 1 && sum(area[off:off+16]) == 0 {
			fp = area[off : off+16]
			break
		}
	}
	if fp == nil {
		t.Fatal("no valid MP floating pointer in the BIOS area")
	}
	if fp[9] != 1 && fp[9] != 4 || fp[11] != 0 {
		t.Fatalf("floating pointer spec %d feature1 %d", fp[9], fp[11])
	}
	phys := le.Uint32(fp[4:])
	hdr := make([]byte, 44)
	mem.ReadAt(hdr, int64(phys))
	if string(hdr[:4]) != "PCMP" {
		t.Fatalf("no PCMP at %#x", phys)
	}
	n := le.Uint16(hdr[4:])
	tab := make([]byte, n)
	mem.ReadAt(tab, int64(phys))
	if sum(tab) != 0 {
		t.Fatal("config table checksum")
	}
	if le.Uint32(hdr[36:]) != x86.LAPICAddr {
		t.Errorf("LAPIC at %#x", le.Uint32(hdr[36:]))
	}
	p := mpParsed{buses: map[uint8]string{}, isa: map[uint8]uint8{}, pci: map[uint8]uint8{}, lint: map[uint8]uint8{}}
	off := 44
	count := int(le.Uint16(hdr[34:]))
	for i := 0; i < count; i++ {
		if off >= len(tab) {
			t.Fatalf("entry %d of %d past the table end", i, count)
		}
		e := tab[off:]
		switch e[0] {
		case 0:
			if e[3]&1 != 0 {
				p.cpus = append(p.cpus, e[1])
			}
			if e[3]&2 != 0 {
				p.bsp = append(p.bsp, e[1])
			}
			off += 20
			continue
		case 1:
			p.buses[e[1]] = string(e[2:8])
		case 2:
			p.ioapicID, p.ioapicAdr = e[1], le.Uint32(e[4:])
		case 3:
			if e[6] != p.ioapicID {
				t.Errorf("interrupt to IOAPIC %d", e[6])
			}
			switch p.buses[e[4]] {
			case "ISA   ":
				p.isa[e[5]] = e[7]
			case "PCI   ":
				p.pci[e[5]] = e[7]
				if le.Uint16(e[2:]) != 0xf {
					t.Errorf("PCI interrupt flags %#x, want level/active low", le.Uint16(e[2:]))
				}
			default:
				t.Errorf("interrupt from unknown bus %d", e[4])
			}
		case 4:
			p.lint[e[7]] = e[1]
		default:
			t.Fatalf("unknown entry type %d", e[0])
		}
		off += 8
	}
	if off != len(tab) {
		t.Errorf("entries end at %d, table length %d", off, len(tab))
	}
	return p
}

func TestMPTable(t *testing.T) {
	for _, n := range []int{1, 4, x86.MaxCPUs} {
		mem := newMem(t, 64<<20)
		if err := x86.WriteMPTable(mem, x86.MPConfig{NumCPUs: n}); err != nil {
			t.Fatal(err)
		}
		p := parseMP(t, mem)
		if len(p.cpus) != n {
			t.Errorf("%d CPUs listed, want %d", len(p.cpus), n)
		}
		ids := map[uint8]bool{p.ioapicID: true}
		for _, id := range p.cpus {
			if ids[id] {
				t.Errorf("APIC ID %d used twice", id)
			}
			ids[id] = true
		}
		if len(p.bsp) != 1 || p.bsp[0] != 0 {
			t.Errorf("bootstrap CPUs %v", p.bsp)
		}
		if p.ioapicAdr != x86.IOAPICAddr {
			t.Errorf("IOAPIC at %#x", p.ioapicAdr)
		}
		if len(p.isa) != 16 {
			t.Errorf("%d ISA interrupts", len(p.isa))
		}
		for irq, pin := range p.isa {
			if irq != pin {
				t.Errorf("ISA IRQ %d -> pin %d", irq, pin)
			}
		}
		if p.lint[0] != 3 || p.lint[1] != 1 {
			t.Errorf("local interrupts %v: want ExtINT on LINT0, NMI on LINT1", p.lint)
		}
	}
}

func TestMPTablePCI(t *testing.T) {
	mem := newMem(t, 64<<20)
	routes := []x86.PCIInterrupt{{Device: 3, Pin: 0, IOAPICPin: 16}, {Device: 4, Pin: 1, IOAPICPin: 17}}
	if err := x86.WriteMPTable(mem, x86.MPConfig{NumCPUs: 2, PCIInterrupts: routes}); err != nil {
		t.Fatal(err)
	}
	p := parseMP(t, mem)
	if p.buses[0] != "PCI   " || len(p.isa) != 16 || len(p.pci) != 2 || p.pci[3<<2] != 16 || p.pci[4<<2|1] != 17 {
		t.Errorf("buses %v isa %d pci %v", p.buses, len(p.isa), p.pci)
	}
	if _, err := x86.MPTable(x86.MPConfig{NumCPUs: 1, PCIInterrupts: []x86.PCIInterrupt{{Device: 32}}}); err == nil {
		t.Error("accepted PCI device 32")
	}
	if _, err := x86.MPTable(x86.MPConfig{NumCPUs: x86.MaxCPUs + 1}); err == nil {
		t.Error("accepted too many CPUs")
	}
}
