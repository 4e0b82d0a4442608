// Package vfiopcitest has a double of a host's pass-through devices, for
// testing a VMM's VFIO paths without an IOMMU or a device: Host opens
// fake PCI functions by address, as a VMM opens VFIO devices, and
// records what is done with each (opens, resets, closes, interrupts
// bound), so that a test can check that a device was reset and released
// when its guest let it go.
package vfiopcitest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/viovmm/vio/devices/vfiopci"
	"github.com/viovmm/vio/pci"
	"github.com/viovmm/vio/vfio"
)

// Class codes for Add.
const (
	ClassEthernet = 0x020000
	ClassNVMe     = 0x010802
)

// Host is a set of fake host devices. Its zero value has none; Add
// makes them.
type Host struct {
	mu      sync.Mutex
	devices map[string]*Device
	events  []string // "open BDF", "reset BDF", "close BDF", in order
}

// Add makes a device at bdf (0000:00:05.0) with the class code: a
// function with one 16 KiB memory BAR holding a 4-vector MSI-X table and
// its PBA. It can be opened once at a time.
func (h *Host) Add(bdf string, class uint32) *Device {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.devices == nil {
		h.devices = map[string]*Device{}
	}
	d := &Device{host: h, bdf: bdf}
	le := binary.LittleEndian
	le.PutUint16(d.cfg[0:], 0x8086)
	le.PutUint16(d.cfg[2:], 0x10d3)
	d.cfg[pci.RegClassCode], d.cfg[pci.RegClassCode+1], d.cfg[pci.RegClassCode+2] = byte(class), byte(class>>8), byte(class>>16)
	le.PutUint16(d.cfg[pci.RegStatus:], pci.StatusCapList)
	le.PutUint32(d.cfg[pci.RegBAR0:], 0) // 32-bit memory
	d.cfg[pci.RegCapabilitiesPtr] = 0x50
	d.cfg[0x50], d.cfg[0x51] = pci.CapMSIX, 0
	le.PutUint16(d.cfg[0x52:], 3) // 4 vectors
	le.PutUint32(d.cfg[0x54:], 0x2000)
	le.PutUint32(d.cfg[0x58:], 0x3000)
	h.devices[bdf] = d
	return d
}

// Fail makes opening bdf fail with err from now on (nil: open again).
func (h *Host) Fail(bdf string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if d := h.devices[bdf]; d != nil {
		d.failOpen = err
	}
}

// ErrNoDevice is opening an address Add did not make.
var ErrNoDevice = errors.New("vfiopcitest: no such device")

// ErrInUse is opening a device that is open.
var ErrInUse = errors.New("vfiopcitest: the device is open already")

// Open opens the device at bdf, as a VMM opens a VFIO device. own (a DMA
// space of its own, for a vIOMMU) makes no difference here.
func (h *Host) Open(bdf string, own bool) (vfiopci.HostDevice, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	d := h.devices[bdf]
	switch {
	case d == nil:
		return nil, fmt.Errorf("%w: %s", ErrNoDevice, bdf)
	case d.failOpen != nil:
		return nil, d.failOpen
	case d.open:
		return nil, fmt.Errorf("%w: %s", ErrInUse, bdf)
	}
	d.open = true
	d.opens++
	h.events = append(h.events, "open "+bdf)
	return &handle{d: d}, nil
}

// Events returns what happened to the devices, in order: "open BDF",
// "reset BDF", "close BDF".
func (h *Host) Events() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.events...)
}

// Device is one fake host device.
type Device struct {
	host *Host
	bdf  string

	// Guarded by host.mu.
	cfg      [256]byte
	bar0     [0x4000]byte
	open     bool
	opens    int
	resets   int
	irqs     int // vectors bound to eventfds now
	failOpen error
}

// Open reports whether the device is open now, and how often it was
// opened and reset in all.
func (d *Device) Open() (open bool, opens, resets int) {
	d.host.mu.Lock()
	defer d.host.mu.Unlock()
	return d.open, d.opens, d.resets
}

// handle is one opening of a Device; after Close it refuses everything.
type handle struct {
	d      *Device
	closed bool // guarded by d.host.mu
}

var _ vfiopci.HostDevice = (*handle)(nil)

var errClosed = errors.New("vfiopcitest: the device handle is closed")

func (h *handle) BDF() string { return h.d.bdf }

func (h *handle) Region(i int) vfio.Region {
	switch i {
	case vfio.RegionBAR0:
		return vfio.Region{Index: i, Size: uint64(len(h.d.bar0)), Flags: vfio.RegionRead | vfio.RegionWrite}
	case vfio.RegionConfig:
		return vfio.Region{Index: i, Size: uint64(len(h.d.cfg)), Flags: vfio.RegionRead | vfio.RegionWrite}
	}
	return vfio.Region{Index: i}
}

// span is n bytes at off of region i; host.mu is held.
func (h *handle) span(i int, off int64, n int) ([]byte, error) {
	if h.closed {
		return nil, errClosed
	}
	var m []byte
	switch i {
	case vfio.RegionBAR0:
		m = h.d.bar0[:]
	case vfio.RegionConfig:
		m = h.d.cfg[:]
	}
	if off < 0 || n < 0 || off+int64(n) > int64(len(m)) {
		return nil, fmt.Errorf("vfiopcitest: %d bytes at %#x are outside region %d", n, off, i)
	}
	return m[off : off+int64(n)], nil
}

func (h *handle) ReadRegion(i int, off int64, p []byte) error {
	h.d.host.mu.Lock()
	defer h.d.host.mu.Unlock()
	b, err := h.span(i, off, len(p))
	copy(p, b)
	return err
}

func (h *handle) WriteRegion(i int, off int64, p []byte) error {
	h.d.host.mu.Lock()
	defer h.d.host.mu.Unlock()
	b, err := h.span(i, off, len(p))
	copy(b, p)
	return err
}

func (h *handle) SetIRQEventFDs(index, start int, fds []int32) error {
	h.d.host.mu.Lock()
	defer h.d.host.mu.Unlock()
	if h.closed {
		return errClosed
	}
	h.d.irqs = len(fds)
	return nil
}

// Mmap refuses: the BAR stays trapped, which is enough for tests.
func (h *handle) Mmap(i int, off int64, size int) ([]byte, error) {
	return nil, errors.New("vfiopcitest: BARs are not mappable")
}

func (h *handle) Reset() error {
	h.d.host.mu.Lock()
	defer h.d.host.mu.Unlock()
	if h.closed {
		return errClosed
	}
	h.d.resets++
	clear(h.d.bar0[:])
	h.d.host.events = append(h.d.host.events, "reset "+h.d.bdf)
	return nil
}

func (h *handle) Close() error {
	h.d.host.mu.Lock()
	defer h.d.host.mu.Unlock()
	if h.closed {
		return errClosed
	}
	h.closed, h.d.open = true, false
	h.d.host.events = append(h.d.host.events, "close "+h.d.bdf)
	return nil
}
