package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The VFIO ioctls this driver uses (linux/vfio.h: type ';', base 100),
// and the type1 IOMMU the container is set to.
const (
	vfioGetAPIVersion     = 0x3b64
	vfioCheckExtension    = 0x3b65
	vfioSetIOMMU          = 0x3b66
	vfioGroupGetStatus    = 0x3b67
	vfioGroupSetContainer = 0x3b68
	vfioGroupGetDeviceFD  = 0x3b6a
	vfioDeviceGetRegion   = 0x3b6c
	vfioIOMMUMapDMA       = 0x3b71
	vfioIOMMUUnmapDMA     = 0x3b72

	vfioAPIVersion   = 0
	vfioType1v2IOMMU = 3

	groupViable = 1 << 0

	dmaRead  = 1 << 0
	dmaWrite = 1 << 1

	configRegion = 7 // VFIO_PCI_CONFIG_REGION_INDEX; BARs are 0..5
)

// device is one PCI function opened through VFIO: its container (the
// IOMMU domain its DMA goes through), its group and the device file,
// whose regions (config space, BARs) are read and written with pread and
// pwrite at each region's offset.
type device struct {
	container, group, fd *os.File
	regionOff            [8]int64
}

func ioctl(f *os.File, req uintptr, arg uintptr) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), req, arg)
	if errno != 0 {
		return r, errno
	}
	return r, nil
}

// openDevice opens the PCI function bdf (already bound to vfio-pci)
// through a fresh type1 container.
func openDevice(bdf string) (*device, error) {
	link, err := os.Readlink(filepath.Join("/sys/bus/pci/devices", bdf, "iommu_group"))
	if err != nil {
		return nil, fmt.Errorf("%s has no IOMMU group: %w", bdf, err)
	}
	group := filepath.Base(link)
	if _, err := strconv.Atoi(group); err != nil {
		return nil, fmt.Errorf("odd IOMMU group %q", link)
	}
	d := &device{}
	if d.container, err = os.OpenFile("/dev/vfio/vfio", os.O_RDWR, 0); err != nil {
		return nil, err
	}
	if v, err := ioctl(d.container, vfioGetAPIVersion, 0); err != nil || v != vfioAPIVersion {
		return nil, fmt.Errorf("VFIO API version %d (%v), want %d", v, err, vfioAPIVersion)
	}
	if ok, err := ioctl(d.container, vfioCheckExtension, vfioType1v2IOMMU); err != nil || ok != 1 {
		return nil, fmt.Errorf("the container has no type1v2 IOMMU (%v)", err)
	}
	if d.group, err = os.OpenFile("/dev/vfio/"+group, os.O_RDWR, 0); err != nil {
		return nil, err
	}
	var status [2]uint32 // argsz, flags
	status[0] = uint32(unsafe.Sizeof(status))
	if _, err := ioctl(d.group, vfioGroupGetStatus, uintptr(unsafe.Pointer(&status))); err != nil {
		return nil, fmt.Errorf("group status: %w", err)
	}
	if status[1]&groupViable == 0 {
		return nil, fmt.Errorf("IOMMU group %s is not viable (a device of it is bound to a host driver)", group)
	}
	cfd := int32(d.container.Fd())
	if _, err := ioctl(d.group, vfioGroupSetContainer, uintptr(unsafe.Pointer(&cfd))); err != nil {
		return nil, fmt.Errorf("adding group %s to the container: %w", group, err)
	}
	if _, err := ioctl(d.container, vfioSetIOMMU, vfioType1v2IOMMU); err != nil {
		return nil, fmt.Errorf("setting the type1v2 IOMMU: %w", err)
	}
	name, err := unix.BytePtrFromString(bdf)
	if err != nil {
		return nil, err
	}
	fd, err := ioctl(d.group, vfioGroupGetDeviceFD, uintptr(unsafe.Pointer(name)))
	if err != nil {
		return nil, fmt.Errorf("opening %s in its group: %w", bdf, err)
	}
	d.fd = os.NewFile(fd, bdf)
	for i := range d.regionOff {
		// argsz, flags, index, cap_offset, size, offset
		var info struct {
			argsz, flags, index, capOffset uint32
			size, offset                   uint64
		}
		info.argsz = uint32(unsafe.Sizeof(info))
		info.index = uint32(i)
		if _, err := ioctl(d.fd, vfioDeviceGetRegion, uintptr(unsafe.Pointer(&info))); err != nil {
			return nil, fmt.Errorf("region %d: %w", i, err)
		}
		d.regionOff[i] = int64(info.offset)
	}
	return d, nil
}

// mapDMA makes buf visible to the device at iova, for reads and writes.
func (d *device) mapDMA(buf []byte, iova uint64) error {
	m := struct {
		argsz, flags      uint32
		vaddr, iova, size uint64
	}{flags: dmaRead | dmaWrite, vaddr: uint64(uintptr(unsafe.Pointer(&buf[0]))), iova: iova, size: uint64(len(buf))}
	m.argsz = uint32(unsafe.Sizeof(m))
	_, err := ioctl(d.container, vfioIOMMUMapDMA, uintptr(unsafe.Pointer(&m)))
	return err
}

// unmapDMA removes the mapping at iova.
func (d *device) unmapDMA(iova, size uint64) error {
	u := struct {
		argsz, flags uint32
		iova, size   uint64
	}{iova: iova, size: size}
	u.argsz = uint32(unsafe.Sizeof(u))
	_, err := ioctl(d.container, vfioIOMMUUnmapDMA, uintptr(unsafe.Pointer(&u)))
	return err
}

// read and write access region r at off, n bytes wide (1, 2 or 4), as
// the device sees them: little-endian.
func (d *device) read(r int, off int64, n int) (uint32, error) {
	var b [4]byte
	if _, err := d.fd.ReadAt(b[:n], d.regionOff[r]+off); err != nil {
		return 0, fmt.Errorf("reading region %d at %#x: %w", r, off, err)
	}
	return binary.LittleEndian.Uint32(b[:]), nil
}

func (d *device) write(r int, off int64, n int, v uint32) error {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	if _, err := d.fd.WriteAt(b[:n], d.regionOff[r]+off); err != nil {
		return fmt.Errorf("writing region %d at %#x: %w", r, off, err)
	}
	return nil
}

func (d *device) close() {
	for _, f := range []*os.File{d.fd, d.group, d.container} {
		if f != nil {
			f.Close()
		}
	}
}
