package config

import (
	"errors"
	"fmt"
)

// Cloud Hypervisor's VmConfig has more fields than vio implements. API
// clients generated from its OpenAPI description (Kata Containers' among
// them) fill in every field that has a default, and add a few of their own
// (a vsock, virtio-fs, memory hotplug, a CPU topology), so refusing them
// would make vio unusable from those clients. Each such field is decided
// here, one of three ways:
//
//   - honoured: vio does what the value asks (a topology that matches the
//     one vio presents; nested=true, since vio passes the host's
//     virtualization extensions through; memory.shared, which backs guest
//     RAM with a memfd that other processes can map);
//   - ignored with a warning (Unimplemented): the guest runs correctly
//     without it, it merely lacks a feature it could have had (hotplug
//     headroom, huge pages, a virtio-fs device not yet built);
//   - refused (Validate): ignoring it would be a lie about what the guest
//     gets in isolation or correctness (firmware boot, TDX/SEV-SNP, a
//     vhost_mode=server).
//
// Fields of VmConfig that are not modelled at all (numa, pmem, devices,
// ...) are unknown fields and refused by Decode.

// FS is a virtio-fs device (vhost-user-fs back-end at Socket).
type FS struct {
	Tag        string `json:"tag"`
	Socket     string `json:"socket"`
	NumQueues  int    `json:"num_queues"`
	QueueSize  int    `json:"queue_size"`
	PCISegment int    `json:"pci_segment,omitempty"`
	ID         string `json:"id,omitempty"`
}

// Vsock is a virtio-vsock device: guest context id CID, host side on the
// UNIX socket Socket (Firecracker's and Cloud Hypervisor's hybrid vsock).
type Vsock struct {
	CID        int64  `json:"cid"`
	Socket     string `json:"socket"`
	IOMMU      bool   `json:"iommu,omitempty"`
	PCISegment int    `json:"pci_segment,omitempty"`
	ID         string `json:"id,omitempty"`
}

// Platform describes the machine as a whole. The system_* fields and the
// chassis asset tag go into the SMBIOS tables the guest reads (dmidecode,
// /sys/class/dmi/id); serial_number and uuid are Cloud Hypervisor's
// deprecated spellings of system_serial_number and system_uuid.
type Platform struct {
	NumPCISegments     int      `json:"num_pci_segments,omitempty"`
	IOMMUSegments      []int    `json:"iommu_segments,omitempty"`
	SystemSerialNumber string   `json:"system_serial_number,omitempty"`
	SerialNumber       string   `json:"serial_number,omitempty"`
	SystemUUID         string   `json:"system_uuid,omitempty"`
	UUID               string   `json:"uuid,omitempty"`
	OEMStrings         []string `json:"oem_strings,omitempty"`
	SystemManufacturer string   `json:"system_manufacturer,omitempty"`
	SystemProductName  string   `json:"system_product_name,omitempty"`
	SystemVersion      string   `json:"system_version,omitempty"`
	SystemFamily       string   `json:"system_family,omitempty"`
	SystemSKUNumber    string   `json:"system_sku_number,omitempty"`
	ChassisAssetTag    string   `json:"chassis_asset_tag,omitempty"`
	TDX                bool     `json:"tdx,omitempty"`
	SEVSNP             bool     `json:"sev_snp,omitempty"`
	IOMMUFD            bool     `json:"iommufd,omitempty"`
	VFIOP2PDMA         *bool    `json:"vfio_p2p_dma,omitempty"`
}

// Unimplemented lists, one sentence each, the values in c that vio accepts
// but ignores for now. Callers log them as warnings.
func (c *VM) Unimplemented() []string {
	var w []string
	add := func(format string, a ...any) { w = append(w, fmt.Sprintf(format, a...)) }
	if c.CPUs.MaxVCPUs > c.CPUs.BootVCPUs {
		add("cpus.max_vcpus %d is ignored: vCPU hotplug is not implemented yet, the guest gets its %d boot vCPUs", c.CPUs.MaxVCPUs, c.CPUs.BootVCPUs)
	}
	if t := c.CPUs.Topology; t != nil && !flatTopology(*t, c.CPUs.BootVCPUs) {
		add("cpus.topology %d threads x %d cores x %d dies x %d packages is ignored: vio presents %d single-thread cores in one package",
			t.ThreadsPerCore, t.CoresPerDie, t.DiesPerPackage, t.Packages, c.CPUs.BootVCPUs)
	}
	if c.CPUs.Nested != nil && !*c.CPUs.Nested {
		add("cpus.nested=false is ignored: vio passes on whatever nested virtualization the host's KVM offers")
	}
	if c.CPUs.KVMHyperV {
		add("cpus.kvm_hyperv is ignored: vio offers no Hyper-V enlightenments")
	}
	if c.CPUs.MaxPhysBits != 0 {
		add("cpus.max_phys_bits is ignored: the guest sees the host's physical address width")
	}
	if f := c.CPUs.Features; f != nil && f.AMX {
		add("cpus.features.amx is ignored: vio does not enable AMX for guests yet")
	}
	m := c.Memory
	if m.HotplugSize != 0 || m.HotpluggedSize != 0 {
		add("memory.hotplug_size is ignored: memory hotplug is not implemented yet, the guest gets its %s", FormatSize(m.Size))
	}
	if m.HotplugMethod != "" && m.HotplugMethod != "Acpi" && m.HotplugMethod != "acpi" {
		add("memory.hotplug_method %q is ignored: memory hotplug is not implemented yet", m.HotplugMethod)
	}
	if m.Hugepages || m.HugepageSize != 0 {
		add("memory.hugepages is ignored: guest RAM uses normal pages for now")
	}
	if m.Mergeable {
		add("memory.mergeable is ignored: vio does not mark guest RAM for KSM yet")
	}
	if m.Prefault || m.Reserve {
		add("memory.prefault and memory.reserve are ignored: guest RAM is faulted in on demand")
	}
	if m.THP != nil && !*m.THP {
		add("memory.thp=false is ignored: the host's transparent huge page policy applies")
	}
	for _, d := range c.Disks {
		if d.Sparse != nil && !*d.Sparse {
			add("disk %s: sparse=false is ignored: vio does not preallocate images", d.Path)
		}
		if d.BackingFiles {
			add("disk %s: backing_files is ignored: vio opens qcow2 backing files as the image says", d.Path)
		}
	}
	for i, n := range c.Net {
		if n.IP != "" || n.Mask != "" || n.HostMAC != "" || n.MTU != 0 {
			add("net %d: ip, mask, host_mac and mtu are ignored: vio uses the TAP as it finds it and configures nothing on the host", i)
		}
		for _, o := range []struct {
			name string
			v    *bool
		}{{"offload_tso", n.OffloadTSO}, {"offload_ufo", n.OffloadUFO}, {"offload_csum", n.OffloadCsum}} {
			if o.v != nil && !*o.v {
				add("net %d: %s=false is ignored: vio offers the offloads the TAP supports", i, o.name)
			}
		}
	}
	for _, f := range c.FS {
		add("fs %q is ignored: virtio-fs is not implemented yet, the guest will not see it", f.Tag)
	}
	if p := c.Platform; p != nil {
		if p.NumPCISegments > 1 {
			add("platform.num_pci_segments %d is ignored: vio has one PCI segment", p.NumPCISegments)
		}
	}
	if c.Watchdog {
		add("watchdog is ignored: vio has no watchdog device yet")
	}
	if c.Landlock {
		add("landlock_enable is ignored: vio does not sandbox itself with Landlock yet")
	}
	// pvpanic is always there (vio declares it in the DSDT), so it is
	// honoured whatever the value.
	return w
}

// flatTopology reports whether t describes what vio presents anyway: n
// single-thread cores on one die in one package. Zero fields mean "any".
func flatTopology(t CPUTopology, n int) bool {
	one := func(v int) bool { return v == 0 || v == 1 }
	return one(t.ThreadsPerCore) && one(t.DiesPerPackage) && one(t.Packages) && (t.CoresPerDie == 0 || t.CoresPerDie == n)
}

// validateCompat refuses the accepted-but-unimplemented values that could
// not be ignored without misleading the user.
func (c *VM) validateCompat() error {
	if c.Payload.Firmware != "" {
		return errors.New("payload.firmware is not supported: vio boots a Linux kernel directly; give payload.kernel instead")
	}
	if p := c.Platform; p != nil {
		if p.TDX || p.SEVSNP {
			return errors.New("platform.tdx and platform.sev_snp are not supported: vio cannot run confidential guests")
		}
		if p.IOMMUFD {
			return errors.New("platform.iommufd is not supported: vio passes no host device through yet")
		}
		for _, seg := range p.IOMMUSegments {
			if seg != 0 {
				return fmt.Errorf("platform.iommu_segments: segment %d: vio has only segment 0", seg)
			}
		}
		if p.NumPCISegments < 0 || p.NumPCISegments > 16 {
			return fmt.Errorf("platform.num_pci_segments %d: want 1 to 16", p.NumPCISegments)
		}
		if err := p.validateSMBIOS(); err != nil {
			return err
		}
	}
	for _, d := range c.Disks {
		if d.PCISegment != 0 {
			return fmt.Errorf("disk %s: pci_segment %d: vio has only segment 0", d.Path, d.PCISegment)
		}
	}
	for i, n := range c.Net {
		if n.PCISegment != 0 {
			return fmt.Errorf("net %d: pci_segment %d: vio has only segment 0", i, n.PCISegment)
		}
	}
	for _, f := range c.FS {
		if f.Tag == "" || f.Socket == "" {
			return errors.New("an fs entry needs a tag and a socket")
		}
	}
	if v := c.Vsock; v != nil {
		if err := v.validate(); err != nil {
			return err
		}
		if v.PCISegment != 0 {
			return fmt.Errorf("vsock: pci_segment %d: vio has only segment 0", v.PCISegment)
		}
	}
	return nil
}

// WantsIOMMU reports whether the guest gets vio's emulated IOMMU (Intel
// VT-d, docs/iommu.md): asked for by the VM (iommu, or platform.
// iommu_segments naming segment 0) or by any device (Cloud Hypervisor's
// per-device iommu=true). The unit covers every PCI device of segment 0,
// so one device asking puts them all behind it: the DMAR table has one
// unit for the whole segment, as most PC firmware does.
func (c *VM) WantsIOMMU() bool {
	if c.IOMMU || c.Console.IOMMU || c.RNG != nil && c.RNG.IOMMU || c.Vsock != nil && c.Vsock.IOMMU ||
		c.Balloon != nil && c.Balloon.IOMMU || c.Platform != nil && len(c.Platform.IOMMUSegments) > 0 {
		return true
	}
	for _, d := range c.Disks {
		if d.IOMMU {
			return true
		}
	}
	for _, n := range c.Net {
		if n.IOMMU {
			return true
		}
	}
	for _, d := range c.Devices {
		if d.IOMMU {
			return true
		}
	}
	return false
}
