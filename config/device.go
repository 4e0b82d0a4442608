package config

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
)

// Device is a host PCI device passed through to the guest with VFIO
// (Cloud Hypervisor's DeviceConfig): Path is its sysfs directory,
// /sys/bus/pci/devices/DDDD:BB:DD.F.
type Device struct {
	Path       string `json:"path"`
	IOMMU      bool   `json:"iommu,omitempty"`
	PCISegment int    `json:"pci_segment,omitempty"`
	ID         string `json:"id,omitempty"`
	// Failover makes the device (a NIC) the primary of the standby
	// virtio-net NIC with this id (a vio extension, QEMU's
	// failover_pair_id): a migration unplugs it first and the
	// destination plugs a device in again (docs/failover.md).
	Failover string `json:"failover,omitempty"`
}

var bdfPattern = regexp.MustCompile(`^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$`)

// BDF is the device's PCI address, the last element of its sysfs path.
func (d Device) BDF() string { return filepath.Base(d.Path) }

func (d Device) validate(i int) error {
	if d.Path == "" {
		return fmt.Errorf("device %d has no path: give path=/sys/bus/pci/devices/DDDD:BB:DD.F", i)
	}
	if !bdfPattern.MatchString(d.BDF()) {
		return fmt.Errorf("device %d: path %q does not end in a PCI address such as 0000:00:04.0 (see lspci -D)", i, d.Path)
	}
	if d.PCISegment != 0 {
		return fmt.Errorf("device %s: pci_segment %d: vio has only segment 0", d.BDF(), d.PCISegment)
	}
	return nil
}

// ParseDevice parses the --device flag: path=SYSFS_PATH[,id=ID][,failover=NETID].
func ParseDevice(spec string) (Device, error) {
	var d Device
	kv, err := splitSpec("device", spec)
	if err != nil {
		return d, err
	}
	for k, v := range inOrder(spec, kv) {
		switch k {
		case "path":
			d.Path = v
		case "id":
			d.ID = v
		case "failover":
			if v == "" {
				return d, fmt.Errorf("--device %q: failover= needs the id of the standby NIC, such as failover=net0", spec)
			}
			d.Failover = v
		default:
			return d, fmt.Errorf("--device %q: unknown key %q (want path, id, failover)", spec, k)
		}
	}
	if d.Path == "" {
		return d, fmt.Errorf("--device %q: path= is missing; write it like path=/sys/bus/pci/devices/0000:00:04.0", spec)
	}
	d.Path = strings.TrimSuffix(d.Path, "/")
	return d, nil
}
