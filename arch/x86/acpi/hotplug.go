package acpi

import "fmt"

// PCIHotplug describes ACPI PCI hot plug of bus 0's slots, signalled as a
// full ACPI PC does: a general-purpose event (a bit of the FADT's GPE0
// block, devices/acpipm) whose \_GPE._Exx method the OS runs on the SCI;
// the method reads a small I/O register block (devices/pcihp) and
// notifies the slot devices that changed. Linux's acpiphp
// (CONFIG_HOTPLUG_PCI_ACPI) then scans a slot that got a device-check
// notification, and releases a slot that got an eject request, calling
// its _EJ0, which tells the VMM through the same register block.
type PCIHotplug struct {
	// Port is the base of the register block: PCIU (slots that came up,
	// read clears) at +0, PCID (slots the host asks to eject, read
	// clears) at +4, B0EJ (write: bit n, the guest released slot n) at
	// +8, each 32 bits wide.
	Port uint16
	// GPE is the general-purpose event (0-7, a bit of GPE0) that
	// signals a change.
	GPE uint8
}

// HotplugSize is the size of the register block at PCIHotplug.Port.
const HotplugSize = 12

// Hot-plug slots are device numbers 1-31 of bus 0 (00.0 is the host
// bridge).
const (
	firstHotplugSlot = 1
	lastHotplugSlot  = 31
)

// hotplugController is the device that owns the register block:
//
//	Device (PHPR) {
//	    Name (_HID, EISAID ("PNP0C02"))  // reserves the ports
//	    Name (_UID, 2)
//	    Name (_CRS, ResourceTemplate () { IO (Decode16, Port, Port, 1, 12) })
//	    OperationRegion (PCST, SystemIO, Port, 12)
//	    Field (PCST, DWordAcc, NoLock, WriteAsZeros) { PCIU, 32, PCID, 32, B0EJ, 32 }
//	    Method (PCEJ, 1) { ShiftLeft (One, Arg0, B0EJ) }
//	}
func hotplugController(h *PCIHotplug) []byte {
	return device("PHPR",
		name("_HID", integer(uint64(eisaID("PNP0C02")))),
		name("_UID", integer(2)),
		name("_CRS", resourceTemplate(ioPort(h.Port, h.Port, 1, HotplugSize))),
		opRegionIO("PCST", h.Port, HotplugSize),
		field32("PCST", "PCIU", "PCID", "B0EJ"),
		methodFlags("PCEJ", 1, false, shiftLeftTo(integer(1), arg(0), "B0EJ")),
	)
}

// hotplugSlots are the slot devices and the scan method inside PCI0:
//
//	Device (S01) { Name (_ADR, 0x00010000)  Name (_SUN, 1)
//	               Method (_EJ0, 1) { \_SB.PHPR.PCEJ (1) } }
//	... up to S1F
//	Method (PCNT, 0, Serialized) {
//	    Store (\_SB.PHPR.PCIU, Local0)
//	    Store (\_SB.PHPR.PCID, Local1)
//	    If (And (Local0, 0x2)) { Notify (S01, 1) }   // one per slot
//	    If (And (Local1, 0x2)) { Notify (S01, 3) }
//	}
//
// The slots have no _STA: acpiphp then reads the vendor ID to see
// whether a device is there, so one namespace serves every population.
func hotplugSlots() [][]byte {
	var out [][]byte
	scan := [][]byte{
		store(namePath(`\_SB_.PHPR.PCIU`), local(0)),
		store(namePath(`\_SB_.PHPR.PCID`), local(1)),
	}
	for d := firstHotplugSlot; d <= lastHotplugSlot; d++ {
		s := slotName(d)
		out = append(out, device(s,
			name("_ADR", integer(uint64(d)<<16)),
			name("_SUN", integer(uint64(d))),
			method("_EJ0", 1, call(`\_SB_.PHPR.PCEJ`, integer(uint64(d)))),
		))
		scan = append(scan,
			ifThen(and(local(0), integer(1<<d)), notify(s, notifyDeviceCheck)),
			ifThen(and(local(1), integer(1<<d)), notify(s, notifyEjectRequest)))
	}
	return append(out, methodFlags("PCNT", 0, true, scan...))
}

// gpeScope is the hot-plug GPE's handler:
//
//	Scope (\_GPE) {
//	    Method (_Exx, 0) { \_SB.PCI0.PCNT () }   // xx: the GPE number in hex
//	}
//
// _E: the GPE is edge-style; ACPICA clears its status bit before running
// the method (and disables the GPE while it runs), so an event the device
// signals while the method runs sets the bit again and runs it once more.
// The registers' read-clear bitmaps then hold whatever the earlier run did
// not see, so no change is lost and none is seen twice.
func gpeScope(h *PCIHotplug) []byte {
	return scope(`\_GPE`, method(fmt.Sprintf("_E%02X", h.GPE), 0, call(`\_SB_.PCI0.PCNT`)))
}
