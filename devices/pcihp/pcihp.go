// Package pcihp is the register block of ACPI PCI hot plug (see
// arch/x86/acpi.PCIHotplug for the AML that drives it): three 32-bit
// registers in I/O space through which the VMM tells the guest which
// slots of bus 0 gained a device or should give one up, and the guest
// tells the VMM which slots it has released.
//
//	+0 PCIU  read: slots that came up since the last read (read clears)
//	+4 PCID  read: slots the host asks the guest to eject (read clears)
//	+8 B0EJ  write: bit n set = the guest released slot n (its _EJ0 ran)
//
// Each change the guest should look at raises the notification (a GPE, and
// through it the SCI); the guest's handler reads both bitmaps and notifies the
// slots. A bit set between the guest's read and the next notification is
// seen by the next one, so no event is lost.
//
// The package knows nothing about PCI devices or KVM: Plug and
// RequestEject take slot numbers, and the release comes back through the
// Eject callback.
package pcihp

import (
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/viovmm/vio/bus"
)

// Register offsets and the block's size (acpi.HotplugSize).
const (
	RegUp    = 0
	RegDown  = 4
	RegEject = 8
	Size     = 12
)

// Slots 1-31 can be hot-plugged; 0 is the host bridge's.
const (
	FirstSlot = 1
	LastSlot  = 31
)

// Config wires a Device.
type Config struct {
	// Notify raises the guest's hot-plug interrupt. It is called with no
	// lock of the Device held.
	Notify func()
	// Eject is called with each slot the guest wrote to B0EJ, on the
	// vCPU thread of the write and with no lock of the Device held: it
	// should hand the teardown to another goroutine rather than block
	// the vCPU.
	Eject func(slot int)
}

// Device is the register block.
type Device struct {
	cfg Config

	mu       sync.Mutex
	up, down uint32 // pending bits, cleared when the guest reads them
	stats    Stats
}

// Stats counts what happened.
type Stats struct {
	Plugs, EjectRequests, Ejects, Notifies uint64
	BadAccesses                            uint64 // wrong width or offset
}

var _ bus.Device = (*Device)(nil)

// New returns a Device with nothing pending.
func New(cfg Config) *Device {
	if cfg.Notify == nil {
		cfg.Notify = func() {}
	}
	if cfg.Eject == nil {
		cfg.Eject = func(int) {}
	}
	return &Device{cfg: cfg}
}

func checkSlot(slot int) error {
	if slot < FirstSlot || slot > LastSlot {
		return fmt.Errorf("pcihp: slot %d is not hot-pluggable (want %d-%d)", slot, FirstSlot, LastSlot)
	}
	return nil
}

// Plug tells the guest that slot has a new device. A pending eject
// request for the slot is withdrawn.
func (d *Device) Plug(slot int) error {
	if err := checkSlot(slot); err != nil {
		return err
	}
	d.mu.Lock()
	d.up |= 1 << slot
	d.down &^= 1 << slot
	d.stats.Plugs++
	d.stats.Notifies++
	d.mu.Unlock()
	d.cfg.Notify()
	return nil
}

// RequestEject asks the guest to release the device in slot; the guest
// answers, if it does, with a write to B0EJ (Config.Eject).
func (d *Device) RequestEject(slot int) error {
	if err := checkSlot(slot); err != nil {
		return err
	}
	d.mu.Lock()
	d.down |= 1 << slot
	d.up &^= 1 << slot
	d.stats.EjectRequests++
	d.stats.Notifies++
	d.mu.Unlock()
	d.cfg.Notify()
	return nil
}

// Stats returns the counters.
func (d *Device) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stats
}

// Read serves the guest's 32-bit reads of PCIU and PCID; anything else
// reads as zeros and changes nothing.
func (d *Device) Read(offset uint64, data []byte) {
	clear(data)
	if len(data) != 4 {
		d.bad()
		return
	}
	d.mu.Lock()
	var v uint32
	switch offset {
	case RegUp:
		v, d.up = d.up, 0
	case RegDown:
		v, d.down = d.down, 0
	case RegEject:
		// Write-only: reads as zero.
	default:
		d.stats.BadAccesses++
	}
	d.mu.Unlock()
	binary.LittleEndian.PutUint32(data, v)
}

// Write serves the guest's 32-bit writes of B0EJ; anything else is
// ignored. Bits outside slots 1-31 are ignored.
func (d *Device) Write(offset uint64, data []byte) {
	if len(data) != 4 || offset != RegEject {
		d.bad()
		return
	}
	v := binary.LittleEndian.Uint32(data) &^ 1 // slot 0 is the host bridge
	if v == 0 {
		return
	}
	d.mu.Lock()
	for s := FirstSlot; s <= LastSlot; s++ {
		if v&(1<<s) != 0 {
			d.stats.Ejects++
		}
	}
	d.mu.Unlock()
	for s := FirstSlot; s <= LastSlot; s++ {
		if v&(1<<s) != 0 {
			d.cfg.Eject(s)
		}
	}
}

func (d *Device) bad() {
	d.mu.Lock()
	d.stats.BadAccesses++
	d.mu.Unlock()
}
