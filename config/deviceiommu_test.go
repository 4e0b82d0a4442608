package config

import "testing"

// TestDeviceIOMMU: a pass-through device that asks for the IOMMU (Cloud
// Hypervisor's per-device iommu) is valid and puts the VM behind vio's
// emulated one; without it the VM has none.
func TestDeviceIOMMU(t *testing.T) {
	d := Device{Path: "/sys/bus/pci/devices/0000:00:04.0", IOMMU: true}
	if err := d.validate(0); err != nil {
		t.Fatalf("a device with iommu: %v", err)
	}
	if !(&VM{Devices: []Device{d}}).WantsIOMMU() {
		t.Fatal("a device asking for the IOMMU does not get one")
	}
	d.IOMMU = false
	if (&VM{Devices: []Device{d}}).WantsIOMMU() {
		t.Fatal("a device that does not ask gets the IOMMU")
	}
}
