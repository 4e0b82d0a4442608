package vfio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Region indices of a PCI device.
const (
	RegionBAR0   = 0 // BARs are 0..5
	RegionROM    = 6
	RegionConfig = 7
	RegionVGA    = 8
)

// IRQ indices of a PCI device.
const (
	IRQINTx = 0
	IRQMSI  = 1
	IRQMSIX = 2
)

// Region flags.
const (
	RegionRead  = 1 << 0
	RegionWrite = 1 << 1
	RegionMmap  = 1 << 2
)

// Region is one of the device's regions as the kernel describes it.
type Region struct {
	Index  int
	Flags  uint32
	Size   uint64
	Offset int64 // where it is in the device file
}

// Device is a device opened through its group.
type Device struct {
	f       *os.File
	bdf     string
	flags   uint32
	regions []Region
	numIRQs uint32
}

// load reads the device's description and its regions.
func (d *Device) load() error {
	var info struct{ argsz, flags, numRegions, numIRQs, capOffset, pad uint32 }
	info.argsz = uint32(unsafe.Sizeof(info))
	if _, err := ioctl(d.f, ioctlDeviceGetInfo, uintptr(unsafe.Pointer(&info))); err != nil {
		return fmt.Errorf("vfio: describing %s: %w", d.bdf, err)
	}
	d.flags, d.numIRQs = info.flags, info.numIRQs
	if info.numRegions > 64 {
		return fmt.Errorf("vfio: %s reports %d regions", d.bdf, info.numRegions)
	}
	for i := uint32(0); i < info.numRegions; i++ {
		var r struct {
			argsz, flags, index, capOffset uint32
			size, offset                   uint64
		}
		r.argsz = uint32(unsafe.Sizeof(r))
		r.index = i
		if _, err := ioctl(d.f, ioctlDeviceGetRegion, uintptr(unsafe.Pointer(&r))); err != nil {
			if errors.Is(err, unix.EINVAL) {
				// vfio-pci counts the VGA region in every device and
				// refuses to describe it for those that are not VGA.
				d.regions = append(d.regions, Region{Index: int(i)})
				continue
			}
			return fmt.Errorf("vfio: region %d of %s: %w", i, d.bdf, err)
		}
		d.regions = append(d.regions, Region{Index: int(i), Flags: r.flags, Size: r.size, Offset: int64(r.offset)})
	}
	return nil
}

// Close closes the device.
func (d *Device) Close() error { return d.f.Close() }

// BDF is the device's PCI address.
func (d *Device) BDF() string { return d.bdf }

// Region returns region i ({} with Size 0 when the device has none).
func (d *Device) Region(i int) Region {
	if i < 0 || i >= len(d.regions) {
		return Region{Index: i}
	}
	return d.regions[i]
}

// ReadRegion reads len(p) bytes at off in region i.
func (d *Device) ReadRegion(i int, off int64, p []byte) error {
	r, err := d.span(i, off, len(p))
	if err != nil {
		return err
	}
	if _, err := d.f.ReadAt(p, r.Offset+off); err != nil {
		return fmt.Errorf("vfio: reading %s region %d at %#x: %w", d.bdf, i, off, err)
	}
	return nil
}

// WriteRegion writes p at off in region i.
func (d *Device) WriteRegion(i int, off int64, p []byte) error {
	r, err := d.span(i, off, len(p))
	if err != nil {
		return err
	}
	if _, err := d.f.WriteAt(p, r.Offset+off); err != nil {
		return fmt.Errorf("vfio: writing %s region %d at %#x: %w", d.bdf, i, off, err)
	}
	return nil
}

func (d *Device) span(i int, off int64, n int) (Region, error) {
	r := d.Region(i)
	if off < 0 || n < 0 || uint64(off)+uint64(n) > r.Size {
		return r, fmt.Errorf("vfio: %s region %d: %d bytes at %#x are outside its %#x bytes", d.bdf, i, n, off, r.Size)
	}
	return r, nil
}

// Read reads a little-endian value of n bytes (1, 2, 4 or 8) at off in
// region i.
func (d *Device) Read(i int, off int64, n int) (uint64, error) {
	var b [8]byte
	if err := d.ReadRegion(i, off, b[:n]); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// Write writes v as a little-endian value of n bytes at off in region i.
func (d *Device) Write(i int, off int64, n int, v uint64) error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	return d.WriteRegion(i, off, b[:n])
}

// Mmap maps size bytes at off of region i, which must offer mmap.
func (d *Device) Mmap(i int, off int64, size int) ([]byte, error) {
	r, err := d.span(i, off, size)
	if err != nil {
		return nil, err
	}
	if r.Flags&RegionMmap == 0 {
		return nil, fmt.Errorf("vfio: %s region %d cannot be mapped", d.bdf, i)
	}
	b, err := unix.Mmap(int(d.f.Fd()), r.Offset+off, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("vfio: mapping %s region %d: %w", d.bdf, i, err)
	}
	return b, nil
}

// SetIRQEventFDs binds interrupts start.. of kind index (IRQMSIX ...) to
// the eventfds fds (-1 leaves one unbound); no fds disables them all.
func (d *Device) SetIRQEventFDs(index, start int, fds []int32) error {
	buf := irqSet(index, start, fds)
	if _, err := ioctl(d.f, ioctlDeviceSetIRQs, uintptr(unsafe.Pointer(&buf[0]))); err != nil {
		return fmt.Errorf("vfio: binding %s's interrupts %d+%d of kind %d: %w", d.bdf, start, len(fds), index, err)
	}
	return nil
}

// Reset resets the device (FLR or the best reset the kernel has for it).
func (d *Device) Reset() error {
	if _, err := ioctl(d.f, ioctlDeviceReset, 0); err != nil {
		return fmt.Errorf("vfio: resetting %s: %w", d.bdf, err)
	}
	return nil
}

// irqSet encodes struct vfio_irq_set binding fds as triggers, or
// disabling every interrupt of the kind for no fds.
func irqSet(index, start int, fds []int32) []byte {
	const (
		dataNone      = 1 << 0
		dataEventFD   = 1 << 2
		actionTrigger = 1 << 5
	)
	hdr := 20 // argsz, flags, index, start, count
	buf := make([]byte, hdr+4*len(fds))
	le := binary.LittleEndian
	le.PutUint32(buf[0:], uint32(len(buf)))
	flags := uint32(actionTrigger | dataEventFD)
	if len(fds) == 0 {
		flags = actionTrigger | dataNone
	}
	le.PutUint32(buf[4:], flags)
	le.PutUint32(buf[8:], uint32(index))
	le.PutUint32(buf[12:], uint32(start))
	le.PutUint32(buf[16:], uint32(len(fds)))
	for i, fd := range fds {
		le.PutUint32(buf[hdr+4*i:], uint32(fd))
	}
	return buf
}
