package acpi_test

import (
	"fmt"
	"slices"
	"strings"

	"github.com/viovmm/vio/arch/x86/acpi"
)

// intText is how the test decoder prints an integer constant.
func intText(v uint64) string {
	switch v {
	case 0:
		return "Zero"
	case 1:
		return "One"
	}
	return fmt.Sprintf("%#x", v)
}

// checkHotplug checks the ACPI PCI hot-plug namespace against cfg: the
// register block (PHPR) with its reservation, region and fields at the
// offsets devices/pcihp serves; one slot device per device number 1-31
// whose _EJ0 writes its bit to B0EJ; PCNT notifying each slot from its
// bit in PCIU (device check) and PCID (eject request); and the
// configured GPE's edge-style method in \_GPE calling PCNT. There is no
// GED and no control-method power button any more.
func checkHotplug(ns amlNamespace, cfg acpi.Config) error {
	const phpr, pci = `\_SB_.PHPR`, `\_SB_.PCI0`
	for _, p := range []string{`\_SB_.GED_`, `\_SB_.PWRB`} {
		if _, ok := ns[p]; ok {
			return fmt.Errorf("%s declared: the full ACPI platform has neither", p)
		}
	}
	h := cfg.PCIHotplug
	if h == nil {
		for _, p := range []string{phpr, `\_GPE`, pci + ".S01_", pci + ".PCNT"} {
			if _, ok := ns[p]; ok {
				return fmt.Errorf("%s declared without PCIHotplug", p)
			}
		}
		return nil
	}
	if err := checkHID(ns, phpr, "PNP0C02"); err != nil {
		return err
	}
	if uid, err := get(ns, phpr+"._UID", amlInteger); err != nil || uid.i != 2 {
		return fmt.Errorf("PHPR._UID %v %+v: want 2, apart from ECAM's 1", err, uid)
	}
	rs, err := crs(ns, phpr)
	if err != nil {
		return err
	}
	if len(rs) != 1 || rs[0].kind != "io" || rs[0].min != uint64(h.Port) || rs[0].max != uint64(h.Port) || rs[0].length != acpi.HotplugSize {
		return fmt.Errorf("PHPR reserves %+v, want ports %#x+%d", rs, h.Port, acpi.HotplugSize)
	}
	region, err := get(ns, phpr+".PCST", amlRegion)
	if err != nil {
		return err
	}
	if region.space != 1 || region.offset != uint64(h.Port) || region.length != acpi.HotplugSize {
		return fmt.Errorf("PCST is space %d at %#x+%d, want SystemIO at %#x+%d", region.space, region.offset, region.length, h.Port, acpi.HotplugSize)
	}
	for i, f := range []string{"PCIU", "PCID", "B0EJ"} {
		o, err := get(ns, phpr+"."+f, amlField)
		if err != nil {
			return err
		}
		// DWordAcc, so each register is one 32-bit port access;
		// WriteAsZeros, so a write of B0EJ carries no stale bits.
		if o.bitOff != 32*i || o.bitWidth != 32 || o.fieldFlags != 0x23 || o.region != phpr+".PCST" {
			return fmt.Errorf("field %s: %+v, want 32 bits at bit %d of PCST, DWordAcc, WriteAsZeros", f, o, 32*i)
		}
	}
	pcej, err := get(ns, phpr+".PCEJ", amlMethod)
	if err != nil {
		return err
	}
	if want := []string{`ShiftLeft(One, Arg0, \_SB_.PHPR.B0EJ)`}; pcej.args != 1 || !slices.Equal(pcej.body, want) {
		return fmt.Errorf("PCEJ takes %d args and does %q, want 1 and %q", pcej.args, pcej.body, want)
	}

	scan := []string{`Store(\_SB_.PHPR.PCIU, Local0)`, `Store(\_SB_.PHPR.PCID, Local1)`}
	for d := 1; d <= 31; d++ {
		slot := fmt.Sprintf("%s.S%02X", pci, d)
		if len(slot) == len(pci)+4 {
			slot += "_"
		}
		adr, err := get(ns, slot+"._ADR", amlInteger)
		if err != nil || adr.i != uint64(d)<<16 {
			return fmt.Errorf("%s._ADR %v %+v, want %#x", slot, err, adr, d<<16)
		}
		sun, err := get(ns, slot+"._SUN", amlInteger)
		if err != nil || sun.i != uint64(d) {
			return fmt.Errorf("%s._SUN %v %+v, want %d", slot, err, sun, d)
		}
		ej0, err := get(ns, slot+"._EJ0", amlMethod)
		if err != nil {
			return err
		}
		if want := []string{`\_SB_.PHPR.PCEJ(` + intText(uint64(d)) + `)`}; ej0.args != 1 || !slices.Equal(ej0.body, want) {
			return fmt.Errorf("%s._EJ0 takes %d args and does %q, want 1 and %q", slot, ej0.args, ej0.body, want)
		}
		if _, ok := ns[slot+"._STA"]; ok {
			return fmt.Errorf("%s has a _STA: acpiphp should probe the slot", slot)
		}
		bit := intText(1 << d)
		scan = append(scan,
			`If(And(Local0, `+bit+`)) {Notify(`+slot+`, One)}`,
			`If(And(Local1, `+bit+`)) {Notify(`+slot+`, 0x3)}`)
	}
	pcnt, err := get(ns, pci+".PCNT", amlMethod)
	if err != nil {
		return err
	}
	if pcnt.args != 0 || pcnt.flags&8 == 0 || !slices.Equal(pcnt.body, scan) {
		return fmt.Errorf("PCNT (flags %#x) does\n%s\nwant Serialized and\n%s", pcnt.flags, strings.Join(pcnt.body, "\n"), strings.Join(scan, "\n"))
	}

	gpe := fmt.Sprintf(`\_GPE._E%02X`, h.GPE)
	m, err := get(ns, gpe, amlMethod)
	if err != nil {
		return err
	}
	if want := []string{`\_SB_.PCI0.PCNT()`}; m.args != 0 || !slices.Equal(m.body, want) {
		return fmt.Errorf("%s takes %d args and does %q, want 0 and %q", gpe, m.args, m.body, want)
	}
	for k, o := range ns {
		if strings.HasPrefix(k, `\_GPE.`) && k != gpe {
			return fmt.Errorf("\\_GPE has %s (%v) besides %s", k, o.kind, gpe)
		}
	}
	return nil
}
