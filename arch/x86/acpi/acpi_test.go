package acpi_test

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/viovmm/vio/arch/x86"
	"github.com/viovmm/vio/arch/x86/acpi"
	"github.com/viovmm/vio/memory"
)

func newMem(t testing.TB) *memory.Memory {
	t.Helper()
	layout, err := x86.RAMLayout(x86.MinRAM)
	if err != nil {
		t.Fatal(err)
	}
	mem, err := memory.New(layout)
	if err != nil {
		t.Fatal(err)
	}
	return mem
}

var pm = acpi.PMRegisters{PM1EventPort: 0x600, PM1ControlPort: 0x604, ResetPort: 0x606, GPE0Port: 0x608, ResetValue: 0x01, S5SleepType: 5}

func fullConfig() acpi.Config {
	return acpi.Config{
		NumCPUs:       x86.MaxCPUs,
		PM:            pm,
		PCIHole:       acpi.Window{Base: x86.PCIMMIOStart, Size: x86.PCIMMIOEnd - x86.PCIMMIOStart},
		PCIHole64:     acpi.Window{Base: 1 << 40, Size: 1 << 36},
		ECAM:          &acpi.ECAMWindow{Base: 0xe0000000, StartBus: 0, EndBus: 255},
		COM1:          true,
		PvPanicPort:   0x505,
		I8042:         true,
		RTC:           true,
		TimerOverride: true,
		PCIInterrupts: []x86.PCIInterrupt{{Device: 3, Pin: 0, IOAPICPin: 19}, {Device: 31, Pin: 3, IOAPICPin: 23}},
		PCIHotplug:    &acpi.PCIHotplug{Port: 0xae00, GPE: 1},
	}
}

var configs = map[string]acpi.Config{
	"minimal": {NumCPUs: 1, PM: pm},
	"legacy-pci": {NumCPUs: 2, PM: pm, COM1: true, RTC: true, I8042: true,
		PCIHole: acpi.Window{Base: x86.PCIMMIOStart, Size: x86.PCIMMIOEnd - x86.PCIMMIOStart}},
	"full": fullConfig(),
	"ecam-at-hole-start": {NumCPUs: 4, PM: pm,
		PCIHole: acpi.Window{Base: 0xc0000000, Size: 0x3ec00000},
		ECAM:    &acpi.ECAMWindow{Base: 0xc0000000, StartBus: 0, EndBus: 15}},
	"hotplug-legacy-pci": {NumCPUs: 1, PM: pm,
		PCIHole:    acpi.Window{Base: x86.PCIMMIOStart, Size: x86.PCIMMIOEnd - x86.PCIMMIOStart},
		PCIHotplug: &acpi.PCIHotplug{Port: 0xfff0, GPE: 7}},
	"ecam-outside-hole": {NumCPUs: 3, PM: pm, PvPanicPort: 0x505,
		PCIHole: acpi.Window{Base: 0xc0000000, Size: 0x20000000},
		ECAM:    &acpi.ECAMWindow{Base: 0xb0000000, StartBus: 1, EndBus: 8}},
	"extra-table": {NumCPUs: 1, PM: pm, Extra: [][]byte{acpi.Table("DMAR", 1, []byte{47, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})}},
}

// checkTables reads the tables from mem and checks them against cfg.
func checkTables(mem *memory.Memory, rsdp uint64, cfg acpi.Config) error {
	p, err := parse(mem, rsdp)
	if err != nil {
		return err
	}
	want := 2 + len(cfg.Extra)
	if cfg.ECAM != nil {
		want++
	}
	for _, x := range cfg.Extra {
		if got := p.byName[string(x[:4])]; !bytes.Equal(got.b, x) {
			return fmt.Errorf("extra table %q: XSDT points at %x, want %x", x[:4], got.b, x)
		}
	}
	if len(p.order) != want {
		return fmt.Errorf("XSDT lists %v, want %d tables", p.order, want)
	}
	if err := checkFADT(p, cfg); err != nil {
		return err
	}
	if err := checkMADT(p.byName["APIC"], cfg); err != nil {
		return err
	}
	if err := checkMCFG(p, cfg); err != nil {
		return err
	}
	return checkDSDT(p.dsdt, cfg)
}

func checkFADT(p *parsed, cfg acpi.Config) error {
	f := p.byName["FACP"].b
	if len(f) != 276 || f[8] != 6 {
		return fmt.Errorf("FADT length %d revision %d, want 276 and 6", len(f), f[8])
	}
	flags := le.Uint32(f[112:])
	const hwReduced, resetSup, noPowerButton, noSleepButton = 1 << 20, 1 << 10, 1 << 4, 1 << 5
	if flags&hwReduced != 0 || flags&resetSup == 0 {
		return fmt.Errorf("FADT flags %#x: want RESET_REG_SUP and not HW_REDUCED_ACPI", flags)
	}
	if flags&noPowerButton != 0 || flags&noSleepButton == 0 {
		return fmt.Errorf("FADT flags %#x: want the fixed power button and no sleep button", flags)
	}
	if err := checkFACS(p, f); err != nil {
		return err
	}
	if d32 := uint64(le.Uint32(f[40:])); d32 != 0 && d32 != p.dsdt.addr {
		return fmt.Errorf("DSDT %#x and X_DSDT %#x differ", d32, p.dsdt.addr)
	}
	if sci := le.Uint16(f[46:]); sci != 9 {
		return fmt.Errorf("SCI_INT %d, want 9", sci)
	}
	if smi := le.Uint32(f[48:]); smi != 0 {
		return fmt.Errorf("SMI_CMD %#x: there is no SMM to switch to ACPI mode through", smi)
	}
	// The blocks: each legacy 32-bit address and length agrees with its
	// X_ GAS, which is an I/O register of the whole block's width.
	blocks := []struct {
		what       string
		blk, lenAt int // legacy address and length fields
		x          int // X_ GAS
		port       uint16
		length     int // 0: absent
	}{
		{"PM1a_EVT_BLK", 56, 88, 148, cfg.PM.PM1EventPort, 4},
		{"PM1b_EVT_BLK", 60, 88, 160, 0, 0},
		{"PM1a_CNT_BLK", 64, 89, 172, cfg.PM.PM1ControlPort, 2},
		{"PM1b_CNT_BLK", 68, 89, 184, 0, 0},
		{"PM2_CNT_BLK", 72, 90, 196, 0, 0},
		{"PM_TMR_BLK", 76, 91, 208, 0, 0},
		{"GPE0_BLK", 80, 92, 220, cfg.PM.GPE0Port, acpi.GPE0Len},
		{"GPE1_BLK", 84, 93, 232, 0, 0},
	}
	for _, b := range blocks {
		g := parseGAS(f[b.x:])
		if b.length == 0 {
			if le.Uint32(f[b.blk:]) != 0 || g.addr != 0 || (b.lenAt != 88 && b.lenAt != 89 && f[b.lenAt] != 0) {
				return fmt.Errorf("%s is present: %#x, %+v", b.what, le.Uint32(f[b.blk:]), g)
			}
			continue
		}
		if le.Uint32(f[b.blk:]) != uint32(b.port) || int(f[b.lenAt]) != b.length {
			return fmt.Errorf("%s %#x length %d, want %#x length %d", b.what, le.Uint32(f[b.blk:]), f[b.lenAt], b.port, b.length)
		}
		if g.space != 1 || g.addr != uint64(b.port) || int(g.bitWidth) != 8*b.length || g.bitOffset != 0 {
			return fmt.Errorf("X_%s is %+v, want %d bits of I/O at %#x", b.what, g, 8*b.length, b.port)
		}
	}
	if f[94] != 0 {
		return fmt.Errorf("GPE1_BASE %d without a GPE1 block", f[94])
	}
	if c2, c3 := le.Uint16(f[96:]), le.Uint16(f[98:]); c2 <= 100 || c3 <= 1000 {
		return fmt.Errorf("P_LVL2_LAT %d, P_LVL3_LAT %d: want C2 and C3 marked unsupported", c2, c3)
	}
	// ACPI 6 moved hardware-reduced sleep to SLEEP_CONTROL/STATUS_REG;
	// a full machine uses PM1_CNT and leaves them empty.
	for i := 244; i < 268; i++ {
		if f[i] != 0 {
			return fmt.Errorf("FADT byte %d is %#x, want 0 (no sleep control/status register)", i, f[i])
		}
	}
	if g := parseGAS(f[116:]); g != (gas{space: 1, bitWidth: 8, bitOffset: 0, access: 1, addr: uint64(cfg.PM.ResetPort)}) {
		return fmt.Errorf("RESET_REG is %+v, want an 8-bit I/O register at %#x", g, cfg.PM.ResetPort)
	}
	if f[128] != cfg.PM.ResetValue {
		return fmt.Errorf("RESET_VALUE %#x, want %#x", f[128], cfg.PM.ResetValue)
	}
	if string(f[268:276]) != "VIOVMM\x00\x00" {
		return fmt.Errorf("hypervisor vendor %q", f[268:276])
	}
	arch := le.Uint16(f[109:])
	const kbd, noVGA, noMSI, noRTC = 1 << 1, 1 << 2, 1 << 3, 1 << 5
	if arch&noMSI != 0 || arch&noVGA == 0 || (arch&kbd != 0) != cfg.I8042 || (arch&noRTC == 0) != cfg.RTC {
		return fmt.Errorf("IAPC_BOOT_ARCH %#x for %+v", arch, cfg)
	}
	if cfg.RTC && f[108] != 0x32 {
		return fmt.Errorf("CENTURY %#x, want 0x32", f[108])
	}
	return nil
}

// checkFACS: FIRMWARE_CTRL and X_FIRMWARE_CTRL both name one FACS (they
// may not disagree), 64-byte aligned, with its signature, length and
// version, inside the tables' area and not overlapping another table.
func checkFACS(p *parsed, f []byte) error {
	a32, a64 := uint64(le.Uint32(f[36:])), le.Uint64(f[132:])
	if a32 == 0 || a32 != a64 {
		return fmt.Errorf("FIRMWARE_CTRL %#x, X_FIRMWARE_CTRL %#x: want one FACS in both", a32, a64)
	}
	if a32%64 != 0 {
		return fmt.Errorf("FACS at %#x is not 64-byte aligned", a32)
	}
	b := make([]byte, 64)
	if _, err := p.mem.ReadAt(b, int64(a32)); err != nil {
		return err
	}
	if string(b[:4]) != "FACS" || le.Uint32(b[4:]) != 64 || b[32] != 2 {
		return fmt.Errorf("FACS at %#x: % x", a32, b)
	}
	if a32 < acpi.TablesAddr || a32+64 > acpi.TablesEnd {
		return fmt.Errorf("FACS at %#x is outside the tables' area", a32)
	}
	for _, t := range append([]table{p.dsdt, p.xsdt}, func() (ts []table) {
		for _, s := range p.order {
			ts = append(ts, p.byName[s])
		}
		return
	}()...) {
		if t.addr < a32+64 && a32 < t.addr+uint64(len(t.b)) {
			return fmt.Errorf("FACS at %#x overlaps %s at %#x", a32, t.sig(), t.addr)
		}
	}
	return nil
}

func checkMADT(t table, cfg acpi.Config) error {
	if le.Uint32(t.b[36:]) != x86.LAPICAddr {
		return fmt.Errorf("local APIC address %#x", le.Uint32(t.b[36:]))
	}
	es, err := madtEntries(t)
	if err != nil {
		return err
	}
	ids := map[uint8]bool{}
	var ioapics, nmis int
	overrides := map[uint8][2]uint32{} // source IRQ → GSI, flags
	for _, e := range es {
		switch e.typ {
		case 0:
			if len(e.body) != 6 {
				return fmt.Errorf("local APIC entry of %d bytes", len(e.body)+2)
			}
			uid, id, flags := e.body[0], e.body[1], le.Uint32(e.body[2:])
			if flags&1 == 0 || ids[id] || uid != id {
				return fmt.Errorf("local APIC UID %d ID %d flags %#x (duplicate or disabled)", uid, id, flags)
			}
			ids[id] = true
		case 1:
			if len(e.body) != 10 {
				return fmt.Errorf("IOAPIC entry of %d bytes", len(e.body)+2)
			}
			ioapics++
			if e.body[0] != x86.IOAPICID(cfg.NumCPUs) || le.Uint32(e.body[2:]) != x86.IOAPICAddr || le.Uint32(e.body[6:]) != 0 {
				return fmt.Errorf("IOAPIC entry % x", e.body)
			}
		case 2:
			if len(e.body) != 8 || e.body[0] != 0 {
				return fmt.Errorf("interrupt source override % x", e.body)
			}
			if _, dup := overrides[e.body[1]]; dup {
				return fmt.Errorf("two overrides for IRQ %d", e.body[1])
			}
			overrides[e.body[1]] = [2]uint32{le.Uint32(e.body[2:]), uint32(le.Uint16(e.body[6:]))}
		case 4:
			if len(e.body) != 4 || e.body[0] != 0xff || le.Uint16(e.body[1:]) != 5 || e.body[3] != 1 {
				return fmt.Errorf("local APIC NMI % x, want all CPUs, edge/high, LINT1", e.body)
			}
			nmis++
		default:
			return fmt.Errorf("unexpected MADT entry type %d", e.typ)
		}
	}
	if len(ids) != cfg.NumCPUs {
		return fmt.Errorf("%d local APICs, want %d", len(ids), cfg.NumCPUs)
	}
	for i := 0; i < cfg.NumCPUs; i++ {
		if !ids[uint8(i)] {
			return fmt.Errorf("no local APIC with ID %d", i)
		}
	}
	if ioapics != 1 || nmis != 1 {
		return fmt.Errorf("%d IOAPICs and %d NMI entries, want one each", ioapics, nmis)
	}
	want := map[uint8][2]uint32{9: {9, 0xd}}
	if cfg.TimerOverride {
		want[0] = [2]uint32{2, 0}
	}
	if fmt.Sprint(overrides) != fmt.Sprint(want) {
		return fmt.Errorf("overrides %v, want %v", overrides, want)
	}
	return nil
}

func checkMCFG(p *parsed, cfg acpi.Config) error {
	t, ok := p.byName["MCFG"]
	if !ok {
		return nil
	}
	if len(t.b) != 44+16 {
		return fmt.Errorf("MCFG of %d bytes, want one allocation", len(t.b))
	}
	e := t.b[44:]
	if le.Uint64(e) != cfg.ECAM.Base || le.Uint16(e[8:]) != 0 || e[10] != cfg.ECAM.StartBus || e[11] != cfg.ECAM.EndBus {
		return fmt.Errorf("MCFG allocation % x for %+v", e, *cfg.ECAM)
	}
	return nil
}

func get(ns amlNamespace, path string, kind amlKind) (*amlObject, error) {
	o, ok := ns[path]
	if !ok {
		return nil, fmt.Errorf("no %s in the DSDT", path)
	}
	if o.kind != kind {
		return nil, fmt.Errorf("%s has kind %d, want %d", path, o.kind, kind)
	}
	return o, nil
}

func checkHID(ns amlNamespace, dev, want string) error {
	o, ok := ns[dev+"._HID"]
	if !ok {
		return fmt.Errorf("%s has no _HID", dev)
	}
	got := o.s
	if o.kind == amlInteger {
		got = decodeEISA(o.i)
	}
	if got != want {
		return fmt.Errorf("%s._HID is %q, want %q", dev, got, want)
	}
	return nil
}

func crs(ns amlNamespace, dev string) ([]resource, error) {
	o, err := get(ns, dev+"._CRS", amlBuffer)
	if err != nil {
		return nil, err
	}
	return decodeResources(o.buf)
}

func checkDSDT(t table, cfg acpi.Config) error {
	if t.revision() < 2 {
		return fmt.Errorf("DSDT revision %d: 32-bit integers", t.revision())
	}
	ns, err := decodeAML(t.b[36:])
	if err != nil {
		return err
	}
	s5, err := get(ns, `\_S5_`, amlPackage)
	if err != nil {
		return err
	}
	if len(s5.elems) < 1 || s5.elems[0].kind != amlInteger || s5.elems[0].i != uint64(cfg.PM.S5SleepType) {
		return fmt.Errorf(`\_S5_ is %+v, want SLP_TYPa %d first`, s5.elems, cfg.PM.S5SleepType)
	}
	const pci = `\_SB_.PCI0`
	if _, err := get(ns, pci, amlDevice); err != nil {
		return err
	}
	if cfg.ECAM != nil {
		if err := checkHID(ns, pci, "PNP0A08"); err != nil {
			return err
		}
		cid, err := get(ns, pci+"._CID", amlInteger)
		if err != nil || decodeEISA(cid.i) != "PNP0A03" {
			return fmt.Errorf("PCI0._CID: %v %+v", err, cid)
		}
		osc, err := get(ns, pci+"._OSC", amlMethod)
		if err != nil {
			return err
		}
		if osc.args != 4 || fmt.Sprint(osc.body) != "[Return(Arg3)]" {
			return fmt.Errorf("_OSC takes %d args and does %v", osc.args, osc.body)
		}
	} else if err := checkHID(ns, pci, "PNP0A03"); err != nil {
		return err
	}
	rs, err := crs(ns, pci)
	if err != nil {
		return fmt.Errorf("PCI0._CRS: %w", err)
	}
	if err := checkRootResources(rs, cfg); err != nil {
		return err
	}
	if cfg.ECAM != nil {
		if err := checkHID(ns, `\_SB_.ECAM`, "PNP0C02"); err != nil {
			return err
		}
		rs, err := crs(ns, `\_SB_.ECAM`)
		if err != nil {
			return err
		}
		start := cfg.ECAM.Base + uint64(cfg.ECAM.StartBus)<<20
		size := uint64(int(cfg.ECAM.EndBus)-int(cfg.ECAM.StartBus)+1) << 20
		if len(rs) != 1 || rs[0].kind != "mem32fixed" || rs[0].min != start || rs[0].length != size {
			return fmt.Errorf("ECAM reservation %+v, want %#x+%#x", rs, start, size)
		}
	} else if _, ok := ns[`\_SB_.ECAM`]; ok {
		return fmt.Errorf("ECAM reservation without an ECAM window")
	}
	if _, ok := ns[`\_SB_.COM1`]; ok != cfg.COM1 {
		return fmt.Errorf("COM1 declared: %v, want %v", ok, cfg.COM1)
	}
	if cfg.COM1 {
		if err := checkHID(ns, `\_SB_.COM1`, "PNP0501"); err != nil {
			return err
		}
		rs, err := crs(ns, `\_SB_.COM1`)
		if err != nil {
			return err
		}
		if len(rs) != 2 || rs[0].kind != "io" || rs[0].min != 0x3f8 || rs[0].max != 0x3f8 || rs[0].length != 8 ||
			rs[1].kind != "irq" || rs[1].irqMask != 1<<4 {
			return fmt.Errorf("COM1 resources %+v", rs)
		}
	}
	legacy := []struct {
		dev, hid string
		on       bool
		ports    [][2]uint64 // base, count
		irq      int
	}{
		{`\_SB_.KBD_`, "PNP0303", cfg.I8042, [][2]uint64{{0x60, 1}, {0x64, 1}}, 1},
		{`\_SB_.RTC_`, "PNP0B00", cfg.RTC, [][2]uint64{{0x70, 2}}, 8},
	}
	for _, l := range legacy {
		if _, ok := ns[l.dev]; ok != l.on {
			return fmt.Errorf("%s declared: %v, want %v", l.dev, ok, l.on)
		}
		if !l.on {
			continue
		}
		if err := checkHID(ns, l.dev, l.hid); err != nil {
			return err
		}
		rs, err := crs(ns, l.dev)
		if err != nil {
			return err
		}
		if len(rs) != len(l.ports)+1 {
			return fmt.Errorf("%s resources %+v", l.dev, rs)
		}
		for i, p := range l.ports {
			if r := rs[i]; r.kind != "io" || !r.decode16 || r.min != p[0] || r.max != p[0] || r.length != p[1] {
				return fmt.Errorf("%s resource %d is %+v, want ports %#x+%d", l.dev, i, r, p[0], p[1])
			}
		}
		if r := rs[len(l.ports)]; r.kind != "irq" || r.irqMask != 1<<l.irq {
			return fmt.Errorf("%s interrupt %+v, want IRQ %d", l.dev, r, l.irq)
		}
	}
	if _, ok := ns[`\_SB_.PEVT`]; ok != (cfg.PvPanicPort != 0) {
		return fmt.Errorf("pvpanic declared: %v, port %#x", ok, cfg.PvPanicPort)
	}
	if cfg.PvPanicPort != 0 {
		if err := checkHID(ns, `\_SB_.PEVT`, "QEMU0001"); err != nil {
			return err
		}
		rs, err := crs(ns, `\_SB_.PEVT`)
		if err != nil {
			return err
		}
		if len(rs) != 1 || rs[0].kind != "io" || rs[0].min != uint64(cfg.PvPanicPort) || rs[0].length != 1 {
			return fmt.Errorf("pvpanic resources %+v", rs)
		}
	}
	return checkHotplug(ns, cfg)
}

func overlap(a0, a1, b0, b1 uint64) uint64 { // [a0,a1) ∩ [b0,b1)
	lo, hi := max(a0, b0), min(a1, b1)
	if hi <= lo {
		return 0
	}
	return hi - lo
}

func checkRootResources(rs []resource, cfg acpi.Config) error {
	var bus, cfgPorts int
	var ioCovered, mmio32, mmio64 uint64
	var ecam0, ecam1 uint64
	if e := cfg.ECAM; e != nil {
		ecam0 = e.Base + uint64(e.StartBus)<<20
		ecam1 = e.Base + (uint64(e.EndBus)+1)<<20
	}
	for _, r := range rs {
		addr := r.kind == "word" || r.kind == "dword" || r.kind == "qword"
		if addr {
			// A bridge window: produced, fixed min and max, no
			// translation, and a length that matches the range.
			if r.gflags != 0x0c || r.tra != 0 || r.max < r.min || r.length != r.max-r.min+1 {
				return fmt.Errorf("window %+v is not a fixed producer range", r)
			}
		}
		switch {
		case r.kind == "word" && r.rtype == 2:
			bus++
			lo, hi := uint64(0), uint64(255)
			if cfg.ECAM != nil {
				lo, hi = uint64(cfg.ECAM.StartBus), uint64(cfg.ECAM.EndBus)
			}
			if r.min != lo || r.max != hi {
				return fmt.Errorf("bus range %d-%d, want %d-%d", r.min, r.max, lo, hi)
			}
		case r.kind == "io":
			if !r.decode16 || r.min != 0xcf8 || r.max != 0xcf8 || r.length != 8 {
				return fmt.Errorf("config port resource %+v", r)
			}
			cfgPorts++
		case r.kind == "word" && r.rtype == 1:
			if overlap(r.min, r.max+1, 0xcf8, 0xd00) != 0 {
				return fmt.Errorf("I/O window %#x-%#x covers the config ports", r.min, r.max)
			}
			ioCovered += r.length
		case r.kind == "dword" && r.rtype == 0:
			h := cfg.PCIHole
			if r.min < h.Base || r.max >= h.Base+h.Size || r.tfl&1 == 0 {
				return fmt.Errorf("32-bit window %#x-%#x outside the hole %+v or read-only", r.min, r.max, h)
			}
			if cfg.ECAM != nil && overlap(r.min, r.max+1, ecam0, ecam1) != 0 {
				return fmt.Errorf("32-bit window %#x-%#x overlaps ECAM", r.min, r.max)
			}
			mmio32 += r.length
		case r.kind == "qword" && r.rtype == 0:
			if r.min != cfg.PCIHole64.Base || r.length != cfg.PCIHole64.Size {
				return fmt.Errorf("64-bit window %+v, want %+v", r, cfg.PCIHole64)
			}
			mmio64 += r.length
		default:
			return fmt.Errorf("unexpected root bridge resource %+v", r)
		}
	}
	if bus != 1 || cfgPorts != 1 {
		return fmt.Errorf("%d bus ranges and %d config port entries, want one each", bus, cfgPorts)
	}
	if ioCovered != 0x10000-8 {
		return fmt.Errorf("I/O windows cover %#x ports, want all but the 8 config ports", ioCovered)
	}
	h := cfg.PCIHole
	wantMMIO := h.Size
	if cfg.ECAM != nil {
		wantMMIO -= overlap(h.Base, h.Base+h.Size, ecam0, ecam1)
	}
	if mmio32 != wantMMIO || mmio64 != cfg.PCIHole64.Size {
		return fmt.Errorf("MMIO windows cover %#x and %#x bytes, want %#x and %#x", mmio32, mmio64, wantMMIO, cfg.PCIHole64.Size)
	}
	return nil
}

func TestWriteParse(t *testing.T) {
	for name, cfg := range configs {
		t.Run(name, func(t *testing.T) {
			mem := newMem(t)
			rsdp, err := acpi.Write(mem, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if err := checkTables(mem, rsdp, cfg); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Linux finds the RSDP by scanning the BIOS area on 16-byte boundaries
// when the zero page does not give it; there must be exactly one, and
// it must be the one Write reports.
func TestRSDPScan(t *testing.T) {
	mem := newMem(t)
	if err := x86.WriteMPTable(mem, x86.MPConfig{NumCPUs: 4}); err != nil {
		t.Fatal(err)
	}
	rsdp, err := acpi.Write(mem, fullConfig())
	if err != nil {
		t.Fatal(err)
	}
	area := make([]byte, 0x20000)
	if _, err := mem.ReadAt(area, 0xe0000); err != nil {
		t.Fatal(err)
	}
	var found []uint64
	for off := 0; off+20 <= len(area); off += 16 {
		if string(area[off:off+8]) == "RSD PTR " && sum(area[off:off+20]) == 0 {
			found = append(found, 0xe0000+uint64(off))
		}
	}
	if len(found) != 1 || found[0] != rsdp {
		t.Fatalf("scan finds RSDPs at %#x, Write said %#x", found, rsdp)
	}
	// The MP table is still intact next to the tables.
	mp := make([]byte, 4)
	if _, err := mem.ReadAt(mp, x86.MPTableAddr); err != nil || string(mp) != "_MP_" {
		t.Fatalf("MP floating pointer clobbered: %q %v", mp, err)
	}
}

// The tables share the BIOS area with the MP table and SMBIOS: the largest
// MP table arch/x86 can build must end before SMBIOS's place, and the area
// must be reserved in the e820 map.
func TestLayout(t *testing.T) {
	var routes []x86.PCIInterrupt
	for dev := uint8(0); dev < 32; dev++ {
		for pin := uint8(0); pin < 4; pin++ {
			routes = append(routes, x86.PCIInterrupt{Device: dev, Pin: pin, IOAPICPin: 16 + (dev+pin)%8})
		}
	}
	mp, err := x86.MPTable(x86.MPConfig{NumCPUs: x86.MaxCPUs, PCIInterrupts: routes})
	if err != nil {
		t.Fatal(err)
	}
	if end := x86.MPTableAddr + uint64(len(mp)); end > x86.SMBIOSAddr {
		t.Fatalf("largest MP table ends at %#x, past SMBIOSAddr %#x", end, x86.SMBIOSAddr)
	}
	layout, _ := x86.RAMLayout(64 << 20)
	e820, err := x86.E820Map(layout)
	if err != nil {
		t.Fatal(err)
	}
	reserved := false
	for _, e := range e820 {
		if e.Type == x86.E820Reserved && e.Addr <= acpi.TablesAddr && e.Addr+e.Size >= acpi.ResetVectorAddr+16 {
			reserved = true
		}
	}
	if !reserved {
		t.Fatalf("e820 map %+v does not reserve %#x-%#x", e820, acpi.TablesAddr, acpi.ResetVectorAddr+16)
	}
}

// Writing again must not leave bytes of a bigger earlier set of tables.
func TestRewrite(t *testing.T) {
	mem := newMem(t)
	if _, err := acpi.Write(mem, fullConfig()); err != nil {
		t.Fatal(err)
	}
	small := configs["minimal"]
	rsdp, err := acpi.Write(mem, small)
	if err != nil {
		t.Fatal(err)
	}
	p, err := parse(mem, rsdp)
	if err != nil {
		t.Fatal(err)
	}
	end := p.dsdt.addr + uint64(len(p.dsdt.b))
	for _, s := range p.order {
		tb := p.byName[s]
		end = max(end, tb.addr+uint64(len(tb.b)))
	}
	rest := make([]byte, acpi.ResetVectorAddr-end)
	if _, err := mem.ReadAt(rest, int64(end)); err != nil {
		t.Fatal(err)
	}
	for i, c := range rest {
		if c != 0 {
			t.Fatalf("stale byte %#x at %#x", c, end+uint64(i))
		}
	}
}

func TestConfigErrors(t *testing.T) {
	bad := map[string]func(*acpi.Config){
		"no CPUs":        func(c *acpi.Config) { c.NumCPUs = 0 },
		"too many CPUs":  func(c *acpi.Config) { c.NumCPUs = x86.MaxCPUs + 1 },
		"no PM1 events":  func(c *acpi.Config) { c.PM.PM1EventPort = 0 },
		"no PM1 control": func(c *acpi.Config) { c.PM.PM1ControlPort = 0 },
		"no GPE0":        func(c *acpi.Config) { c.PM.GPE0Port = 0 },
		"PM1 at 0xffff":  func(c *acpi.Config) { c.PM.PM1EventPort = 0xfffd },
		"GPE 8":          func(c *acpi.Config) { c.PCIHotplug.GPE = 8 },
		"no reset port":  func(c *acpi.Config) { c.PM.ResetPort = 0 },
		"sleep type":     func(c *acpi.Config) { c.PM.S5SleepType = 8 },
		"hole above 4G":  func(c *acpi.Config) { c.PCIHole = acpi.Window{Base: 0xf0000000, Size: 0x20000000} },
		"hole64 wraps":   func(c *acpi.Config) { c.PCIHole64 = acpi.Window{Base: ^uint64(0) - 10, Size: 100} },
		"ECAM buses":     func(c *acpi.Config) { c.ECAM = &acpi.ECAMWindow{Base: 0xe0000000, StartBus: 5, EndBus: 4} },
		"ECAM unaligned": func(c *acpi.Config) { c.ECAM = &acpi.ECAMWindow{Base: 0xe0001000, EndBus: 4} },
		"ECAM above 4G":  func(c *acpi.Config) { c.ECAM = &acpi.ECAMWindow{Base: 0xf8000000, EndBus: 255} },
		"ECAM base wraps": func(c *acpi.Config) {
			c.ECAM = &acpi.ECAMWindow{Base: ^uint64(0) &^ (1<<20 - 1), StartBus: 1, EndBus: 255}
		},
		"ECAM at 4G":       func(c *acpi.Config) { c.ECAM = &acpi.ECAMWindow{Base: 1 << 32, EndBus: 0} },
		"hole over IOAPIC": func(c *acpi.Config) { c.PCIHole = acpi.Window{Base: 0xc0000000, Size: 0x3f000000} },
		"hole over LAPIC":  func(c *acpi.Config) { c.PCIHole64 = acpi.Window{Base: 0xfee00fff, Size: 2} },
		"ECAM over IOAPIC": func(c *acpi.Config) { c.ECAM = &acpi.ECAMWindow{Base: 0xfe000000, StartBus: 0, EndBus: 15} },
		"INTx pin 4":       func(c *acpi.Config) { c.PCIInterrupts = []x86.PCIInterrupt{{Device: 1, Pin: 4, IOAPICPin: 16}} },
		"INTx device 32":   func(c *acpi.Config) { c.PCIInterrupts = []x86.PCIInterrupt{{Device: 32, IOAPICPin: 16}} },
		"extra too short":  func(c *acpi.Config) { c.Extra = [][]byte{[]byte("DMAR")} },
		"extra length":     func(c *acpi.Config) { c.Extra = [][]byte{append(acpi.Table("DMAR", 1, nil), 0)} },
	}
	for name, f := range bad {
		t.Run(name, func(t *testing.T) {
			cfg := fullConfig()
			f(&cfg)
			mem := newMem(t)
			if _, err := acpi.Write(mem, cfg); !errors.Is(err, acpi.ErrConfig) {
				t.Fatalf("Write: %v, want ErrConfig", err)
			}
		})
	}
}

// Write into memory that does not reach the BIOS area fails cleanly.
func TestWriteNoMemory(t *testing.T) {
	mem, err := memory.New([]memory.Layout{{GPA: 0, Size: 0x10000}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := acpi.Write(mem, configs["minimal"]); !errors.Is(err, memory.ErrOutOfRange) {
		t.Fatalf("Write: %v, want ErrOutOfRange", err)
	}
}

// FuzzWrite builds tables from arbitrary configs: Write either rejects
// the config or produces tables that pass every check.
func FuzzWrite(f *testing.F) {
	f.Add(1, uint16(0x600), uint16(0x604), uint16(0x606), uint8(1), uint8(5), uint64(0xc0000000), uint64(0x3ec00000), uint64(0), uint64(0), true, uint64(0xe0000000), uint8(0), uint8(255), uint16(0x505), uint8(0xff))
	f.Add(254, uint16(1), uint16(1), uint16(1), uint8(0), uint8(7), uint64(0), uint64(0), uint64(1<<40), uint64(1<<30), false, uint64(0), uint8(0), uint8(0), uint16(0), uint8(0))
	f.Add(3, uint16(0xffff), uint16(0xfffe), uint16(0x1), uint8(0xff), uint8(0), uint64(0x80000000), uint64(0x80000000), uint64(0), uint64(0), true, uint64(0x80000000), uint8(3), uint8(9), uint16(0xffff), uint8(0x5))
	f.Fuzz(func(t *testing.T, n int, ctl, sts, rst uint16, rval, s5 uint8, hb, hs, h64b, h64s uint64, ecam bool, eb uint64, es, ee uint8, pvp uint16, bits uint8) {
		// Steer most inputs into the ranges a vmm uses, so that many
		// configs are valid and get their tables checked; bit 7 of bits
		// leaves the raw values alone to probe the validation.
		if bits&0x80 == 0 {
			n = n % 300
			hb, hs = hb&0xffffffff, hs&0xffffffff
			eb &^= 1<<20 - 1
			eb &= 0xffffffff
		}
		cfg := acpi.Config{
			NumCPUs: n,
			// The GPE0 block goes after the reset register (a vmm puts
			// the blocks side by side; overlaps are not checked).
			PM: acpi.PMRegisters{PM1EventPort: ctl, PM1ControlPort: sts, ResetPort: rst, GPE0Port: rst + 2,
				ResetValue: rval, S5SleepType: s5},
			PCIHole:       acpi.Window{Base: hb, Size: hs},
			PCIHole64:     acpi.Window{Base: h64b, Size: h64s},
			PvPanicPort:   pvp,
			COM1:          bits&1 != 0,
			I8042:         bits&2 != 0,
			RTC:           bits&4 != 0,
			TimerOverride: bits&8 != 0,
		}
		if ecam {
			cfg.ECAM = &acpi.ECAMWindow{Base: eb, StartBus: es, EndBus: ee}
		}
		if bits&16 != 0 {
			cfg.PCIHotplug = &acpi.PCIHotplug{Port: pvp ^ 0xae00, GPE: rval % 8}
			if bits&32 != 0 {
				cfg.PCIHotplug.GPE += uint8(n) // may leave GPE0
			}
		}
		mem := newMem(t)
		rsdp, err := acpi.Write(mem, cfg)
		if err != nil {
			if !errors.Is(err, acpi.ErrConfig) {
				t.Fatalf("Write: %v", err)
			}
			return
		}
		if err := checkTables(mem, rsdp, cfg); err != nil {
			t.Fatalf("%+v: %v", cfg, err)
		}
	})
}
