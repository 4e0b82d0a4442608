// Package vfio is Linux's VFIO user API for PCI devices (linux/vfio.h),
// the legacy container and group interface with the type1v2 IOMMU: what a
// VMM needs to give a guest a host device (pass-through), and what a
// user-space driver needs to drive one (as DPDK and SPDK do).
//
// The flow is the kernel's: a Container is an IOMMU domain; a Group (an
// IOMMU group, /dev/vfio/N) joins it; the Container's DMA mappings then
// decide what memory the group's devices can reach; a Device is opened
// through its group and offers regions (configuration space, BARs, ROM)
// to read, write or mmap, and interrupts to bind to eventfds.
//
// Errors a user meets say what to do: a device not bound to vfio-pci
// names the commands that bind it, a group that is not viable names the
// devices of the group still bound to host drivers.
package vfio

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ioctl numbers: _IO(';', 100 + n).
const (
	ioctlGetAPIVersion     = 0x3b64
	ioctlCheckExtension    = 0x3b65
	ioctlSetIOMMU          = 0x3b66
	ioctlGroupGetStatus    = 0x3b67
	ioctlGroupSetContainer = 0x3b68
	ioctlGroupGetDeviceFD  = 0x3b6a
	ioctlDeviceGetInfo     = 0x3b6b
	ioctlDeviceGetRegion   = 0x3b6c
	ioctlDeviceGetIRQInfo  = 0x3b6d
	ioctlDeviceSetIRQs     = 0x3b6e
	ioctlDeviceReset       = 0x3b6f
	ioctlIOMMUMapDMA       = 0x3b71
	ioctlIOMMUUnmapDMA     = 0x3b72
)

const (
	apiVersion   = 0
	type1v2IOMMU = 3
)

// ioctl runs one ioctl on f with a pointer or integer argument.
func ioctl(f *os.File, req, arg uintptr) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), req, arg)
	if errno != 0 {
		return r, errno
	}
	return r, nil
}

// ErrNotBound means the device is not bound to vfio-pci.
var ErrNotBound = errors.New("vfio: the device is not bound to vfio-pci")

// ErrNotViable means a device of the group is bound to a host driver.
var ErrNotViable = errors.New("vfio: the IOMMU group is not viable")

// ErrNoIOMMU means the device has no IOMMU group: the host has no IOMMU,
// or it is off.
var ErrNoIOMMU = errors.New("vfio: the device has no IOMMU group")

// Where sysfs describes PCI devices and IOMMU groups; tests point these
// elsewhere.
var (
	sysfsRoot       = "/sys/bus/pci/devices"
	iommuGroupsRoot = "/sys/kernel/iommu_groups"
)

// CheckBound returns nil when the PCI device bdf (0000:00:05.0) is bound
// to vfio-pci, else an error saying how to bind it.
func CheckBound(bdf string) error {
	dev := filepath.Join(sysfsRoot, bdf)
	if _, err := os.Stat(dev); err != nil {
		return fmt.Errorf("vfio: no PCI device %s (see lspci -D)", bdf)
	}
	drv := driverOf(dev)
	if drv == "vfio-pci" {
		return nil
	}
	now := "no driver"
	unbind := ""
	if drv != "" {
		now = "driver " + drv
		unbind = fmt.Sprintf("echo %s > %s/driver/unbind; ", bdf, dev)
	}
	return fmt.Errorf("%w: %s has %s; bind it with: modprobe vfio-pci; echo vfio-pci > %s/driver_override; %secho %s > /sys/bus/pci/drivers_probe",
		ErrNotBound, bdf, now, dev, unbind, bdf)
}

// driverOf is the name of the driver bound to the device directory dev,
// "" for none.
func driverOf(dev string) string {
	l, err := os.Readlink(filepath.Join(dev, "driver"))
	if err != nil {
		return ""
	}
	return filepath.Base(l)
}

// GroupOf returns the IOMMU group number of PCI device bdf.
func GroupOf(bdf string) (string, error) { return GroupIn(sysfsRoot, bdf) }

// DriverOf is the name of the driver bound to the PCI device directory
// dev (a sysfs path), "" for none.
func DriverOf(dev string) string { return driverOf(dev) }

// GroupIn is GroupOf for the PCI devices under the directory devices
// (/sys/bus/pci/devices on a host; elsewhere for tests and tools).
func GroupIn(devices, bdf string) (string, error) {
	l, err := os.Readlink(filepath.Join(devices, bdf, "iommu_group"))
	if err != nil {
		return "", fmt.Errorf("%w: %s (is the IOMMU on? intel_iommu=on or amd_iommu=on on the kernel command line)", ErrNoIOMMU, bdf)
	}
	return filepath.Base(l), nil
}

// groupBlockers lists the devices of group that keep it from being
// viable: bound to a driver other than vfio-pci (and not a bridge's
// pcieport, which the kernel allows).
func groupBlockers(group string) []string {
	devs, _ := filepath.Glob(filepath.Join(iommuGroupsRoot, group, "devices", "*"))
	var out []string
	for _, d := range devs {
		switch drv := driverOf(d); drv {
		case "", "vfio-pci", "pcieport":
		default:
			out = append(out, filepath.Base(d)+" ("+drv+")")
		}
	}
	return out
}

func notViable(group string) error {
	b := groupBlockers(group)
	if len(b) == 0 {
		return fmt.Errorf("%w: group %s (a device of it is in use by the host)", ErrNotViable, group)
	}
	return fmt.Errorf("%w: group %s also holds %s: bind those to vfio-pci too, or unbind them", ErrNotViable, group, strings.Join(b, ", "))
}
