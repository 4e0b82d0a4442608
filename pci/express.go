package pci

import "encoding/binary"

// PCI Express device/port types (PCIe capability register bits 7:4).
const (
	ExpressEndpoint           = 0x0
	ExpressLegacyEndpoint     = 0x1
	ExpressRootPort           = 0x4
	ExpressIntegratedEndpoint = 0x9 // root complex integrated endpoint
)

// ExpressCapLength is the size of a version 2 PCI Express capability.
const ExpressCapLength = 0x3c

// AddExpressCapability adds a version 2 PCI Express capability of the
// given device type. A function on a Root's bus 0, which has no root port
// above it, is a root complex integrated endpoint (ExpressIntegratedEndpoint):
// it has no link, so the link registers read as zero. The function should
// have been created with Header.Express so that the extended configuration
// space exists.
//
// Device Control and Device Control 2 are writable (Linux programs max
// payload and read request sizes there); nothing else is.
func AddExpressCapability(c *Config, devType uint8) (int, error) {
	return addExpress(c, devType, nil)
}

// AddExpressCapabilityFLR is AddExpressCapability for a function that
// offers Function Level Reset (every SR-IOV VF must): Device Capabilities
// says so, and a guest write of Initiate Function Level Reset (Device
// Control bit 15, which always reads as zero) calls flr, which must put
// the function back in its power-on state without waiting on the guest.
func AddExpressCapabilityFLR(c *Config, devType uint8, flr func()) (int, error) {
	return addExpress(c, devType, flr)
}

func addExpress(c *Config, devType uint8, flr func()) (int, error) {
	body := make([]byte, ExpressCapLength-2)
	wmask := make([]byte, len(body))
	le := binary.LittleEndian
	// Offsets below are relative to the capability; body starts at +2.
	le.PutUint16(body[0x02-2:], 2|uint16(devType&0xf)<<4) // PCIe capabilities: version 2
	// Device capabilities: 128-byte max payload, role-based error reporting.
	devCap := uint32(1 << 15)
	if flr != nil {
		devCap |= 1 << 28 // Function Level Reset capability
	}
	le.PutUint32(body[0x04-2:], devCap)
	// Device control: bits 0-3 error reporting enables, 4 relaxed ordering,
	// 7:5 max payload, 11 no snoop, 14:12 max read request. Bit 15 (FLR)
	// is not offered.
	le.PutUint16(wmask[0x08-2:], 0x7fff)
	// Device capabilities 2: completion timeout ranges not supported;
	// device control 2 mostly writable for ARI/LTR/10-bit tag enables,
	// which the guest may try to set; they have no effect here.
	le.PutUint16(wmask[0x28-2:], 0x7fff)
	var hooks CapabilityHooks
	if flr != nil {
		hooks.Write = func(off int, data []byte) {
			// Byte 0x09 holds Device Control's bit 15 (as bit 7).
			if i := 0x09 - off; i >= 0 && i < len(data) && data[i]&0x80 != 0 {
				flr()
			}
		}
	}
	return c.AddCapability(CapExpress, body, wmask, hooks)
}
