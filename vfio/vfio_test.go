package vfio

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeSysfs lays out PCI devices and IOMMU groups as sysfs does: a
// device directory with driver and iommu_group links.
func fakeSysfs(t *testing.T) (devs, groups string) {
	t.Helper()
	root := t.TempDir()
	devs, groups = filepath.Join(root, "devices"), filepath.Join(root, "iommu_groups")
	drivers := filepath.Join(root, "drivers")
	dev := func(bdf, driver, group string) {
		d := filepath.Join(devs, bdf)
		must(t, os.MkdirAll(d, 0o755))
		if driver != "" {
			must(t, os.MkdirAll(filepath.Join(drivers, driver), 0o755))
			must(t, os.Symlink(filepath.Join(drivers, driver), filepath.Join(d, "driver")))
		}
		if group != "" {
			g := filepath.Join(groups, group)
			must(t, os.MkdirAll(filepath.Join(g, "devices"), 0o755))
			must(t, os.Symlink(g, filepath.Join(d, "iommu_group")))
			must(t, os.Symlink(d, filepath.Join(g, "devices", bdf)))
		}
	}
	dev("0000:00:03.0", "vfio-pci", "7")
	dev("0000:00:03.1", "nvme", "7")
	dev("0000:00:04.0", "virtio-pci", "8")
	dev("0000:00:05.0", "", "")
	old, oldG := sysfsRoot, iommuGroupsRoot
	sysfsRoot, iommuGroupsRoot = devs, groups
	t.Cleanup(func() { sysfsRoot, iommuGroupsRoot = old, oldG })
	return devs, groups
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestUserErrors: each mistake a user makes is one sentence saying what
// to do.
func TestUserErrors(t *testing.T) {
	fakeSysfs(t)
	if err := CheckBound("0000:00:03.0"); err != nil {
		t.Errorf("a device bound to vfio-pci: %v", err)
	}
	err := CheckBound("0000:00:04.0")
	if !errors.Is(err, ErrNotBound) || !strings.Contains(err.Error(), "has driver virtio-pci") ||
		!strings.Contains(err.Error(), "echo vfio-pci > ") || !strings.Contains(err.Error(), "/driver/unbind") {
		t.Errorf("a device on another driver: %v", err)
	}
	if err := CheckBound("0000:00:05.0"); !errors.Is(err, ErrNotBound) || strings.Contains(err.Error(), "unbind") {
		t.Errorf("a device with no driver: %v", err)
	}
	if err := CheckBound("0000:00:09.0"); err == nil || !strings.Contains(err.Error(), "no PCI device 0000:00:09.0") {
		t.Errorf("no such device: %v", err)
	}
	if g, err := GroupOf("0000:00:03.0"); err != nil || g != "7" {
		t.Errorf("GroupOf = %q, %v", g, err)
	}
	if _, err := GroupOf("0000:00:05.0"); !errors.Is(err, ErrNoIOMMU) || !strings.Contains(err.Error(), "intel_iommu=on") {
		t.Errorf("no IOMMU: %v", err)
	}
	if err := notViable("7"); !errors.Is(err, ErrNotViable) || !strings.Contains(err.Error(), "0000:00:03.1 (nvme)") {
		t.Errorf("a group shared with a host driver: %v", err)
	}
}

// TestIRQSet: struct vfio_irq_set as the kernel reads it.
func TestIRQSet(t *testing.T) {
	b := irqSet(IRQMSIX, 2, []int32{10, -1, 12})
	le := binary.LittleEndian
	if got := []uint32{le.Uint32(b), le.Uint32(b[4:]), le.Uint32(b[8:]), le.Uint32(b[12:]), le.Uint32(b[16:])}; got[0] != 32 || got[1] != 1<<5|1<<2 || got[2] != 2 || got[3] != 2 || got[4] != 3 {
		t.Errorf("header %v", got)
	}
	if int32(le.Uint32(b[24:])) != -1 || le.Uint32(b[28:]) != 12 {
		t.Errorf("fds % x", b[20:])
	}
	if b := irqSet(IRQMSIX, 0, nil); len(b) != 20 || le.Uint32(b[4:]) != 1<<5|1 {
		t.Errorf("disable: % x", b)
	}
}

// TestRegionBounds: an access outside a region is refused before it
// reaches the kernel.
func TestRegionBounds(t *testing.T) {
	d := &Device{bdf: "0000:00:03.0", regions: []Region{{Index: 0, Size: 0x1000, Flags: RegionRead | RegionWrite}}}
	for _, c := range []struct {
		i   int
		off int64
		n   int
	}{{0, 0x1000, 1}, {0, 0xffe, 4}, {0, -1, 1}, {3, 0, 1}} {
		if _, err := d.span(c.i, c.off, c.n); err == nil {
			t.Errorf("region %d, %d bytes at %#x: accepted", c.i, c.n, c.off)
		}
	}
	if _, err := d.span(0, 0xffc, 4); err != nil {
		t.Error(err)
	}
	if _, err := d.Mmap(0, 0, 0x1000); err == nil || !strings.Contains(err.Error(), "cannot be mapped") {
		t.Errorf("mmap of a region without the flag: %v", err)
	}
}
