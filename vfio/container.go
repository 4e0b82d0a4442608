package vfio

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Container is an IOMMU domain (/dev/vfio/vfio): the groups added to it
// share its DMA mappings.
type Container struct {
	f     *os.File
	iommu bool // the type1v2 IOMMU is set (after the first group joined)
}

// OpenContainer opens a new container and checks that the kernel speaks
// the VFIO API this package knows and offers the type1v2 IOMMU.
func OpenContainer() (*Container, error) {
	f, err := os.OpenFile("/dev/vfio/vfio", os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("vfio: %w (modprobe vfio-pci)", err)
	}
	c := &Container{f: f}
	if v, err := ioctl(f, ioctlGetAPIVersion, 0); err != nil || v != apiVersion {
		f.Close()
		return nil, fmt.Errorf("vfio: the kernel's VFIO API is version %d (%v); this vio speaks %d", v, err, apiVersion)
	}
	if ok, err := ioctl(f, ioctlCheckExtension, type1v2IOMMU); err != nil || ok != 1 {
		f.Close()
		return nil, fmt.Errorf("vfio: the kernel offers no type1v2 IOMMU (modprobe vfio_iommu_type1)")
	}
	return c, nil
}

// Close closes the container; its mappings go once its groups are closed
// too.
func (c *Container) Close() error { return c.f.Close() }

// setIOMMU picks the type1v2 IOMMU, which the kernel allows only once a
// group is in the container.
func (c *Container) setIOMMU() error {
	if c.iommu {
		return nil
	}
	if _, err := ioctl(c.f, ioctlSetIOMMU, type1v2IOMMU); err != nil {
		hint := ""
		if errors.Is(err, unix.EPERM) {
			hint = " (the IOMMU cannot remap interrupts, so a device could forge MSIs: vfio_iommu_type1 refuses unless you accept that with echo 1 > /sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts)"
		}
		return fmt.Errorf("vfio: setting the type1v2 IOMMU: %w%s", err, hint)
	}
	c.iommu = true
	return nil
}

// DMA access rights of a mapping.
const (
	DMARead  = 1 << 0
	DMAWrite = 1 << 1
)

// MapDMA lets the container's devices reach buf at device address iova
// with the given rights; the kernel pins buf's pages (they count against
// RLIMIT_MEMLOCK). buf must be page-aligned and stay mapped until
// UnmapDMA.
func (c *Container) MapDMA(buf []byte, iova uint64, rights uint32) error {
	if len(buf) == 0 {
		return fmt.Errorf("vfio: an empty DMA mapping at %#x", iova)
	}
	m := struct {
		argsz, flags      uint32
		vaddr, iova, size uint64
	}{flags: rights, vaddr: uint64(uintptr(unsafe.Pointer(&buf[0]))), iova: iova, size: uint64(len(buf))}
	m.argsz = uint32(unsafe.Sizeof(m))
	if _, err := ioctl(c.f, ioctlIOMMUMapDMA, uintptr(unsafe.Pointer(&m))); err != nil {
		return fmt.Errorf("vfio: mapping %#x bytes at %#x for DMA: %w%s", len(buf), iova, err, memlockHint(err, len(buf)))
	}
	return nil
}

// UnmapDMA removes the mappings in [iova, iova+size).
func (c *Container) UnmapDMA(iova, size uint64) error {
	u := struct {
		argsz, flags uint32
		iova, size   uint64
	}{iova: iova, size: size}
	u.argsz = uint32(unsafe.Sizeof(u))
	if _, err := ioctl(c.f, ioctlIOMMUUnmapDMA, uintptr(unsafe.Pointer(&u))); err != nil {
		return fmt.Errorf("vfio: unmapping %#x+%#x: %w", iova, size, err)
	}
	return nil
}
