package acpi

// PCI configuration mechanism #1 ports, which the host bridge decodes.
const (
	pciConfigPort = 0xcf8
	pciConfigSize = 8
)

// Legacy devices where the PC has them (devices/uart16550 COM1Addr and
// COM1IRQ, devices/i8042, devices/cmos).
const (
	com1Port   = 0x3f8
	com1Size   = 8
	com1IRQ    = 4
	kbdData    = 0x60
	kbdCommand = 0x64
	kbdIRQ     = 1
	rtcPort    = 0x70
	rtcSize    = 2
	rtcIRQ     = 8
)

// dsdt returns the DSDT body (the AML after the header):
//
//	Name (_S5, Package () { S5SleepType, 0 })       // names at the root scope
//	Scope (_SB) {
//	    Device (PHPR) { hot-plug registers }            if cfg.PCIHotplug
//	    Device (PCI0) { _HID, [_CID], _UID, _BBN, _CRS, [_PRT], [_OSC], [S01..S1F, PCNT] }
//	    Device (ECAM) { _HID PNP0C02, _UID, _CRS }     if cfg.ECAM
//	    Device (COM1) { _HID PNP0501, _UID, _CRS }     if cfg.COM1
//	    Device (KBD)  { _HID PNP0303, _CRS }           if cfg.I8042
//	    Device (RTC)  { _HID PNP0B00, _CRS }           if cfg.RTC
//	    Device (PEVT) { _HID QEMU0001, _CRS }          if cfg.PvPanicPort
//	}
//	Scope (_GPE) { Method (_Exx) { \_SB.PCI0.PCNT () } } if cfg.PCIHotplug
//
// PHPR comes before PCI0 and PCI0 before \_GPE so that every method call
// names a method already defined (see hotplug.go). The power button is
// the FADT's fixed-feature one and needs no object here.
func dsdtAML(cfg *Config) []byte {
	var sb [][]byte
	if h := cfg.PCIHotplug; h != nil {
		sb = append(sb, hotplugController(h))
	}
	sb = append(sb, pciRoot(cfg))
	if e := cfg.ECAM; e != nil {
		// Linux uses an MCFG window only if it finds the range reserved,
		// in the e820 map (early) or in a motherboard resource device
		// (PNP0C01/PNP0C02, checked once the namespace exists). The
		// hole is not in e820, so this device is what makes Linux keep
		// ECAM instead of falling back to port 0xCF8 accesses.
		start, size := e.reserved()
		sb = append(sb, device("ECAM",
			name("_HID", integer(uint64(eisaID("PNP0C02")))),
			name("_UID", integer(1)),
			name("_CRS", resourceTemplate(memory32Fixed(uint32(start), uint32(size)))),
		))
	}
	if cfg.COM1 {
		sb = append(sb, device("COM1",
			name("_HID", integer(uint64(eisaID("PNP0501")))),
			name("_UID", integer(1)),
			name("_CRS", resourceTemplate(
				ioPort(com1Port, com1Port, 1, com1Size),
				irqNoFlags(com1IRQ),
			)),
		))
	}
	// Declaring the legacy devices makes 8250_pnp, i8042 and rtc_cmos
	// bind through PNP with these resources (and keeps their ports
	// reserved). ISA IRQ i is IOAPIC input i, as in the MADT (which
	// overrides only 9, the SCI, and 0 with TimerOverride) and the MP
	// table. vio's i8042 has no aux port (its self-test of the port
	// fails, devices/i8042), so there is no PNP0F13 mouse on IRQ 12.
	if cfg.I8042 {
		sb = append(sb, device("KBD",
			name("_HID", integer(uint64(eisaID("PNP0303")))),
			name("_CRS", resourceTemplate(
				ioPort(kbdData, kbdData, 1, 1),
				ioPort(kbdCommand, kbdCommand, 1, 1),
				irqNoFlags(kbdIRQ),
			)),
		))
	}
	if cfg.RTC {
		sb = append(sb, device("RTC",
			name("_HID", integer(uint64(eisaID("PNP0B00")))),
			name("_CRS", resourceTemplate(
				ioPort(rtcPort, rtcPort, 1, rtcSize),
				irqNoFlags(rtcIRQ),
			)),
		))
	}
	if p := cfg.PvPanicPort; p != 0 {
		// QEMU's pvpanic ISA device; Linux's pvpanic-mmio driver binds
		// to this _HID and takes the port from _CRS.
		sb = append(sb, device("PEVT",
			name("_HID", str("QEMU0001")),
			name("_CRS", resourceTemplate(ioPort(p, p, 1, 1))),
		))
	}
	out := concat(
		name("_S5", pkg(integer(uint64(cfg.PM.S5SleepType)), integer(0))),
		scope("_SB", sb...),
	)
	if h := cfg.PCIHotplug; h != nil {
		out = append(out, gpeScope(h)...)
	}
	return out
}

// pciRoot describes host bridge 0. With an ECAM window it is a PCI
// Express root (PNP0A08, compatible with PNP0A03) with an _OSC that grants
// the OS every control it asks for: there is no firmware to keep any.
// Without one it is a conventional PCI root reached through port 0xCF8.
func pciRoot(cfg *Config) []byte {
	busStart, busEnd := uint16(0), uint16(0xff)
	if e := cfg.ECAM; e != nil {
		busStart, busEnd = uint16(e.StartBus), uint16(e.EndBus)
	}
	crs := [][]byte{
		wordAddress(rtBus, 0, busStart, busEnd),
		ioPort(pciConfigPort, pciConfigPort, 1, pciConfigSize),
		// The port ranges the bridge forwards, around its own config
		// ports: the whole 16-bit I/O space, so legacy devices and
		// any I/O BAR the vmm assigned are inside a window.
		wordAddress(rtIO, tfIOEntireRange, 0, pciConfigPort-1),
		wordAddress(rtIO, tfIOEntireRange, pciConfigPort+pciConfigSize, 0xffff),
	}
	for _, w := range cfg.mmioWindows() {
		crs = append(crs, dwordMemory(tfMemRW|tfMemNonCacheable, uint32(w.Base), uint32(w.Base+w.Size-1)))
	}
	if w := cfg.PCIHole64; w.Size != 0 {
		crs = append(crs, qwordMemory(tfMemRW|tfMemCacheable, w.Base, w.Base+w.Size-1))
	}
	body := [][]byte{}
	if cfg.ECAM != nil {
		body = append(body,
			name("_HID", integer(uint64(eisaID("PNP0A08")))),
			name("_CID", integer(uint64(eisaID("PNP0A03")))),
		)
	} else {
		body = append(body, name("_HID", integer(uint64(eisaID("PNP0A03")))))
	}
	body = append(body,
		name("_UID", integer(0)),
		name("_BBN", integer(uint64(busStart))),
		name("_CRS", resourceTemplate(crs...)),
	)
	if len(cfg.PCIInterrupts) > 0 {
		// Name (_PRT, Package () { Package () { 0xDDDDFFFF, pin, Zero,
		// GSI }, ... }): source Zero means the last field is a global
		// system interrupt, level-triggered and active-low.
		var prt [][]byte
		for _, r := range cfg.PCIInterrupts {
			prt = append(prt, pkg(integer(uint64(r.Device)<<16|0xffff), integer(uint64(r.Pin)),
				integer(0), integer(uint64(r.IOAPICPin))))
		}
		body = append(body, name("_PRT", pkg(prt...)))
	}
	if cfg.ECAM != nil {
		// Method (_OSC, 4) { Return (Arg3) }: the capabilities buffer
		// comes back unchanged, so no error bits and every requested
		// control bit granted.
		body = append(body, method("_OSC", 4, returnArg(3)))
	}
	if cfg.PCIHotplug != nil {
		body = append(body, hotplugSlots()...)
	}
	return device("PCI0", body...)
}
