package pci

import "fmt"

// Function is one PCI function as the root bus sees it.
//
// ReadConfig and WriteConfig serve guest configuration accesses of 1, 2 or 4
// bytes at offsets below 4096 (an access never crosses a 4-byte boundary
// when it comes from the CF8/CFC mechanism; ECAM accesses may be 8 bytes).
// Offsets beyond the function's configuration space read as zeros and
// ignore writes.
//
// Regions reports the BAR ranges the function decodes at this moment (see
// Config.Regions). The root bus calls it after every configuration write and
// makes the bus registrations match, so a function never registers its own
// ranges.
//
// BARMapped is the hook called after the root bus registered (mapped=true)
// or unregistered a range on the MMIO or PIO bus. When a BAR moves, the
// old range is unmapped before the new one is mapped. A virtio-pci function
// uses it to move its ioeventfds; a VFIO function to move its mmap'ed BARs.
// It is called with the root bus's configuration lock held: it must not
// make configuration accesses through the Root.
//
// *Config implements everything but BARMapped, so a device model usually
// embeds a *Config and adds BARMapped.
type Function interface {
	ReadConfig(offset int, data []byte)
	WriteConfig(offset int, data []byte)
	Regions() []Region
	BARMapped(r Region, mapped bool)
}

// BDF names a function on bus 0..255: device 0..31, function 0..7.
type BDF struct {
	Bus, Device, Function uint8
}

func (a BDF) String() string {
	return fmt.Sprintf("%02x:%02x.%x", a.Bus, a.Device, a.Function)
}

// valid reports whether the device and function numbers are in range.
func (a BDF) valid() bool { return a.Device < 32 && a.Function < 8 }
