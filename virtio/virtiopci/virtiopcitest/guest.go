// Package virtiopcitest plays a guest's virtio-pci driver in tests, the way
// Linux's virtio_pci_modern does it, but only through what a guest has:
// configuration space through the CF8/CFC ports, BAR 0 through the MMIO
// bus, and guest RAM. Tests of virtio device models use it to drive a
// device over the real transport: probe, negotiate, program MSI-X, set up
// queues (driven by queuetest), kick and acknowledge interrupts.
package virtiopcitest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/viovmm/vio/bus"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/pci"
	"github.com/viovmm/vio/pci/pcitest"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/queuetest"
	"github.com/viovmm/vio/virtio/virtiopci"
)

// Common configuration register offsets (virtio_pci_common_cfg).
const (
	DeviceFeatureSelect = 0x00
	DeviceFeature       = 0x04
	DriverFeatureSelect = 0x08
	DriverFeature       = 0x0c
	ConfigMSIXVector    = 0x10
	NumQueues           = 0x12
	DeviceStatus        = 0x14
	ConfigGeneration    = 0x15
	QueueSelect         = 0x16
	QueueSize           = 0x18
	QueueMSIXVector     = 0x1a
	QueueEnable         = 0x1c
	QueueNotifyOff      = 0x1e
	QueueDesc           = 0x20
	QueueDriver         = 0x28
	QueueDevice         = 0x30
)

// Cap is a parsed virtio vendor capability.
type Cap struct {
	ConfigOffset int // where it is in configuration space
	Type         uint8
	BAR          uint8
	Offset       uint32
	Length       uint32
}

// Guest is the driver side of one virtio-pci function.
type Guest struct {
	MMIO *bus.Bus
	Mem  *memory.Memory
	CF8  pcitest.CF8
	BDF  pci.BDF

	Caps       map[uint8]Cap
	BAR        uint64 // BAR 0's address
	NotifyMult uint32
	MSIXCap    int
	msixTable  uint64
	msixSize   int
}

// Errors.
var (
	ErrNotVirtio = errors.New("virtiopcitest: not a modern virtio function")
	ErrUnclaimed = errors.New("virtiopcitest: MMIO access not claimed by any device")
)

// Probe finds the function at a, checks its identity, parses its
// capabilities and enables memory decoding and bus mastering (as
// pci_enable_device and pci_set_master do).
func Probe(mmio, pio *bus.Bus, mem *memory.Memory, a pci.BDF) (*Guest, error) {
	g := &Guest{MMIO: mmio, Mem: mem, CF8: pcitest.CF8{PIO: pio}, BDF: a, Caps: make(map[uint8]Cap)}
	id := g.CF8.Read(a, 0, 4)
	if uint16(id) != virtiopci.VendorID || id>>16 < virtiopci.DeviceIDBase {
		return nil, fmt.Errorf("%w: id %#x", ErrNotVirtio, id)
	}
	for p, n := g.CF8.FindCapability(a, pci.CapVendor, 0), 0; p != 0 && n < 48; p, n = g.CF8.FindCapability(a, pci.CapVendor, p), n+1 {
		c := Cap{
			ConfigOffset: p,
			Type:         uint8(g.CF8.Read(a, p+3, 1)),
			BAR:          uint8(g.CF8.Read(a, p+4, 1)),
			Offset:       g.CF8.Read(a, p+8, 4),
			Length:       g.CF8.Read(a, p+12, 4),
		}
		if _, dup := g.Caps[c.Type]; !dup { // the first of each type is preferred
			g.Caps[c.Type] = c
		}
		if c.Type == virtiopci.CapNotifyCfg {
			g.NotifyMult = g.CF8.Read(a, p+16, 4)
		}
	}
	for _, typ := range []uint8{virtiopci.CapCommonCfg, virtiopci.CapNotifyCfg, virtiopci.CapISRCfg} {
		if _, ok := g.Caps[typ]; !ok {
			return nil, fmt.Errorf("%w: capability type %d missing", ErrNotVirtio, typ)
		}
	}
	lo := g.CF8.Read(a, pci.RegBAR0, 4)
	g.BAR = uint64(lo &^ 0xf)
	if lo&0x6 == 0x4 {
		g.BAR |= uint64(g.CF8.Read(a, pci.RegBAR0+4, 4)) << 32
	}
	cmd := g.CF8.Read(a, pci.RegCommand, 2)
	g.CF8.Write(a, pci.RegCommand, 2, cmd|pci.CommandMemory|pci.CommandBusMaster)
	if p := g.CF8.FindCapability(a, pci.CapMSIX, 0); p != 0 {
		g.MSIXCap = p
		g.msixSize = int(g.CF8.Read(a, p+2, 2)&0x7ff) + 1
		tbl := g.CF8.Read(a, p+4, 4)
		if tbl&7 != 0 {
			return nil, fmt.Errorf("%w: MSI-X table in BAR%d", ErrNotVirtio, tbl&7)
		}
		g.msixTable = g.BAR + uint64(tbl&^7)
	}
	return g, nil
}

func (g *Guest) addr(typ uint8, off uint64) uint64 {
	return g.BAR + uint64(g.Caps[typ].Offset) + off
}

func (g *Guest) write(gpa uint64, n int, v uint64) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	if !g.MMIO.Write(gpa, b[:n]) {
		panic(fmt.Errorf("%w: write %#x", ErrUnclaimed, gpa))
	}
}

func (g *Guest) read(gpa uint64, n int) uint64 {
	var b [8]byte
	if !g.MMIO.Read(gpa, b[:n]) {
		panic(fmt.Errorf("%w: read %#x", ErrUnclaimed, gpa))
	}
	return binary.LittleEndian.Uint64(b[:])
}

// ReadCommon and WriteCommon access the common configuration structure
// with n-byte (1, 2, 4) MMIO accesses. They panic if BAR 0 is not mapped:
// in a test that is a failure of the code under test.
func (g *Guest) ReadCommon(off uint64, n int) uint64 {
	return g.read(g.addr(virtiopci.CapCommonCfg, off), n)
}

// WriteCommon writes a common configuration register.
func (g *Guest) WriteCommon(off uint64, n int, v uint64) {
	g.write(g.addr(virtiopci.CapCommonCfg, off), n, v)
}

// Status reads device_status.
func (g *Guest) Status() uint8 { return uint8(g.ReadCommon(DeviceStatus, 1)) }

// SetStatus ORs bits into device_status, as the driver core does.
func (g *Guest) SetStatus(bits uint8) { g.WriteCommon(DeviceStatus, 1, uint64(g.Status()|bits)) }

// Remap puts BAR 0 back at the address Probe found and turns memory
// decoding and bus mastering on, as a driver re-enabling the device does.
// A restore loads configuration space, so a test that restored arbitrary
// state (a fuzz input) remaps before it touches the BAR again.
func (g *Guest) Remap() {
	g.CF8.Write(g.BDF, pci.RegBAR0, 4, uint32(g.BAR))
	if lo := g.CF8.Read(g.BDF, pci.RegBAR0, 4); lo&0x6 == 0x4 {
		g.CF8.Write(g.BDF, pci.RegBAR0+4, 4, uint32(g.BAR>>32))
	}
	cmd := g.CF8.Read(g.BDF, pci.RegCommand, 2)
	g.CF8.Write(g.BDF, pci.RegCommand, 2, cmd|pci.CommandMemory|pci.CommandBusMaster)
}

// Reset writes 0 to device_status and waits for it to read back 0, as
// the spec asks of a driver (Linux polls with msleep(1)): the transport
// resets an active device on a goroutine of its own.
func (g *Guest) Reset() error {
	g.WriteCommon(DeviceStatus, 1, 0)
	for deadline := time.Now().Add(time.Minute); ; {
		s := g.Status()
		if s == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("virtiopcitest: status %#x a minute after reset", s)
		}
		time.Sleep(100 * time.Microsecond) // the driver's poll interval
	}
}

// DeviceFeatures reads the 64 offered feature bits.
func (g *Guest) DeviceFeatures() uint64 {
	g.WriteCommon(DeviceFeatureSelect, 4, 0)
	lo := g.ReadCommon(DeviceFeature, 4)
	g.WriteCommon(DeviceFeatureSelect, 4, 1)
	return lo | g.ReadCommon(DeviceFeature, 4)<<32
}

// ErrFeaturesRefused is returned by Negotiate when FEATURES_OK does not
// stick.
var ErrFeaturesRefused = errors.New("virtiopcitest: device refused features")

// Negotiate resets the device, acknowledges it, accepts want (without
// masking it by what is offered, so tests can offer bad sets) and sets
// FEATURES_OK, checking that it sticks.
func (g *Guest) Negotiate(want uint64) error {
	if err := g.Reset(); err != nil {
		return err
	}
	g.SetStatus(virtio.StatusAcknowledge)
	g.SetStatus(virtio.StatusDriver)
	g.WriteCommon(DriverFeatureSelect, 4, 0)
	g.WriteCommon(DriverFeature, 4, want&0xffffffff)
	g.WriteCommon(DriverFeatureSelect, 4, 1)
	g.WriteCommon(DriverFeature, 4, want>>32)
	g.SetStatus(virtio.StatusFeaturesOK)
	if g.Status()&virtio.StatusFeaturesOK == 0 {
		return ErrFeaturesRefused
	}
	return nil
}

// MSIXVectors returns the MSI-X table size (0: no MSI-X).
func (g *Guest) MSIXVectors() int { return g.msixSize }

// ProgramMSIX writes table entry v (unmasked).
func (g *Guest) ProgramMSIX(v int, addr uint64, data uint32) {
	e := g.msixTable + 16*uint64(v)
	g.write(e, 4, uint64(uint32(addr)))
	g.write(e+4, 4, addr>>32)
	g.write(e+8, 4, uint64(data))
	g.write(e+12, 4, 0)
}

// MaskMSIX sets or clears entry v's mask bit.
func (g *Guest) MaskMSIX(v int, masked bool) {
	var c uint64
	if masked {
		c = 1
	}
	g.write(g.msixTable+16*uint64(v)+12, 4, c)
}

// EnableMSIX sets or clears the MSI-X enable bit in configuration space.
func (g *Guest) EnableMSIX(on bool) {
	ctl := g.CF8.Read(g.BDF, g.MSIXCap+2, 2) &^ pci.MSIXEnable
	if on {
		ctl |= pci.MSIXEnable
	}
	g.CF8.Write(g.BDF, g.MSIXCap+2, 2, ctl)
}

// SetConfigVector writes config_msix_vector and returns what reads back.
func (g *Guest) SetConfigVector(v uint16) uint16 {
	g.WriteCommon(ConfigMSIXVector, 2, uint64(v))
	return uint16(g.ReadCommon(ConfigMSIXVector, 2))
}

// QueueConfig is one queue's setup.
type QueueConfig struct {
	Index    int
	Size     uint16 // 0: the device's maximum
	Vector   uint16 // MSI-X vector, or virtiopci.NoVector
	Base     uint64 // where queuetest lays out the rings and data area
	DataSize uint64
	EventIdx bool
}

// SetupQueue selects and programs a queue, lays out its rings with
// queuetest and enables it. Addresses are written as two 32-bit halves,
// as Linux's vp_iowrite64_twopart does.
func (g *Guest) SetupQueue(c QueueConfig) (*queuetest.Driver, error) {
	g.WriteCommon(QueueSelect, 2, uint64(c.Index))
	max := uint16(g.ReadCommon(QueueSize, 2))
	if max == 0 {
		return nil, fmt.Errorf("virtiopcitest: queue %d not available", c.Index)
	}
	if g.ReadCommon(QueueEnable, 2) != 0 {
		return nil, fmt.Errorf("virtiopcitest: queue %d already enabled", c.Index)
	}
	size := c.Size
	if size == 0 {
		size = max
	}
	d, err := queuetest.New(g.Mem, c.Base, size, c.DataSize, c.EventIdx)
	if err != nil {
		return nil, err
	}
	g.WriteCommon(QueueSize, 2, uint64(size))
	g.WriteCommon(QueueMSIXVector, 2, uint64(c.Vector))
	if got := uint16(g.ReadCommon(QueueMSIXVector, 2)); got != c.Vector {
		return nil, fmt.Errorf("virtiopcitest: queue %d vector %#x reads back %#x", c.Index, c.Vector, got)
	}
	qc := d.Config()
	for _, r := range []struct {
		reg uint64
		v   uint64
	}{{QueueDesc, qc.DescTable}, {QueueDriver, qc.AvailRing}, {QueueDevice, qc.UsedRing}} {
		g.WriteCommon(r.reg, 4, r.v&0xffffffff)
		g.WriteCommon(r.reg+4, 4, r.v>>32)
	}
	g.WriteCommon(QueueEnable, 2, 1)
	return d, nil
}

// NotifyAddr returns queue i's notify address as the driver computes it:
// BAR + cap offset + queue_notify_off × multiplier.
func (g *Guest) NotifyAddr(i int) uint64 {
	g.WriteCommon(QueueSelect, 2, uint64(i))
	off := g.ReadCommon(QueueNotifyOff, 2)
	return g.addr(virtiopci.CapNotifyCfg, off*uint64(g.NotifyMult))
}

// Kick notifies queue i with a 16-bit write of its index (vp_notify).
func (g *Guest) Kick(i int) { g.write(g.NotifyAddr(i), 2, uint64(i)) }

// ReadISR reads (and thereby clears) the ISR status byte.
func (g *Guest) ReadISR() uint8 { return uint8(g.read(g.addr(virtiopci.CapISRCfg, 0), 1)) }

// ReadDeviceConfig reads n bytes of device-specific configuration.
func (g *Guest) ReadDeviceConfig(off uint64, n int) uint64 {
	return g.read(g.addr(virtiopci.CapDeviceCfg, off), n)
}

// WriteDeviceConfig writes n bytes of device-specific configuration.
func (g *Guest) WriteDeviceConfig(off uint64, n int, v uint64) {
	g.write(g.addr(virtiopci.CapDeviceCfg, off), n, v)
}
