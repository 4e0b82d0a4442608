package vfio

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Group is an IOMMU group (/dev/vfio/N), the unit the IOMMU isolates.
type Group struct {
	f  *os.File
	id string
}

// OpenGroup opens the group of PCI device bdf after checking that the
// device is bound to vfio-pci and the group is viable, and adds it to c.
func OpenGroup(c *Container, bdf string) (*Group, error) {
	if err := CheckBound(bdf); err != nil {
		return nil, err
	}
	id, err := GroupOf(bdf)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile("/dev/vfio/"+id, os.O_RDWR, 0)
	if errors.Is(err, unix.EBUSY) {
		// VFIO gives a group to one process at a time: name the VM.
		return nil, inUse(bdf, id, err)
	}
	if err != nil {
		return nil, fmt.Errorf("vfio: opening IOMMU group %s of %s: %w", id, bdf, err)
	}
	g := &Group{f: f, id: id}
	var status [2]uint32 // argsz, flags
	status[0] = uint32(unsafe.Sizeof(status))
	if _, err := ioctl(f, ioctlGroupGetStatus, uintptr(unsafe.Pointer(&status))); err != nil {
		f.Close()
		return nil, fmt.Errorf("vfio: status of group %s: %w", id, err)
	}
	if status[1]&1 == 0 { // VFIO_GROUP_FLAGS_VIABLE
		f.Close()
		return nil, notViable(id)
	}
	cfd := int32(c.f.Fd())
	if _, err := ioctl(f, ioctlGroupSetContainer, uintptr(unsafe.Pointer(&cfd))); err != nil {
		f.Close()
		return nil, fmt.Errorf("vfio: adding group %s to the container: %w", id, err)
	}
	if err := c.setIOMMU(); err != nil {
		f.Close()
		return nil, err
	}
	return g, nil
}

// ID is the group's number.
func (g *Group) ID() string { return g.id }

// Close closes the group; it leaves its container when its devices are
// closed too.
func (g *Group) Close() error { return g.f.Close() }

// Device opens PCI device bdf of the group.
func (g *Group) Device(bdf string) (*Device, error) {
	name, err := unix.BytePtrFromString(bdf)
	if err != nil {
		return nil, err
	}
	fd, err := ioctl(g.f, ioctlGroupGetDeviceFD, uintptr(unsafe.Pointer(name)))
	if err != nil {
		return nil, fmt.Errorf("vfio: opening %s in group %s: %w", bdf, g.id, err)
	}
	d := &Device{f: os.NewFile(fd, "vfio "+bdf), bdf: bdf}
	if err := d.load(); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}
