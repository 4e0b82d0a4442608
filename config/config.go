// Package config is the one description of a VM that the command line, the
// config file and (later) the REST API all produce. Its JSON shape follows
// Cloud Hypervisor's VmConfig (payload, cpus, memory, disks, net, rng,
// serial, console) so that the Cloud-Hypervisor-compatible API subset Kata
// Containers drives maps onto it directly; fields vio adds are marked.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/viovmm/vio/block/graph"
	"github.com/viovmm/vio/irq/coalesce"
	"github.com/viovmm/vio/virtio/ringpoll"
)

// VM is a whole virtual machine.
type VM struct {
	Payload Payload `json:"payload"`
	CPUs    CPUs    `json:"cpus"`
	Memory  Memory  `json:"memory"`
	Disks   []Disk  `json:"disks,omitempty"`
	// Devices are host PCI devices passed through (VFIO, docs/vfio.md).
	Devices []Device `json:"devices,omitempty"`
	Net     []Net    `json:"net,omitempty"`
	RNG     *RNG     `json:"rng,omitempty"`
	Balloon *Balloon `json:"balloon,omitempty"`
	Serial  Console  `json:"serial"`
	Console Console  `json:"console"`
	// RateLimitGroups are buckets shared by several disks (Cloud
	// Hypervisor's rate_limit_groups; see docs/disks.md).
	RateLimitGroups []RateLimitGroup `json:"rate_limit_groups,omitempty"`
	// OnReboot says what a guest reboot does: "restart" the guest (the
	// default) or "exit" vio. (vio extension)
	OnReboot string `json:"on_reboot,omitempty"`
	// CloudInit attaches a cloud-init NoCloud seed disk. (vio extension)
	CloudInit *CloudInit `json:"cloud_init,omitempty"`

	// Fields of Cloud Hypervisor's VmConfig that vio accepts but does not
	// implement yet (see compat.go): API clients such as Kata Containers
	// send them, and Unimplemented says which values are ignored.
	FS       []FS      `json:"fs,omitempty"`
	Vsock    *Vsock    `json:"vsock,omitempty"`
	Platform *Platform `json:"platform,omitempty"`
	IOMMU    bool      `json:"iommu,omitempty"`
	Watchdog bool      `json:"watchdog,omitempty"`
	PvPanic  bool      `json:"pvpanic,omitempty"`
	Landlock bool      `json:"landlock_enable,omitempty"`
}

// Payload is what the VM boots.
type Payload struct {
	// Firmware is accepted so that its use gets a clear refusal: vio
	// boots kernels directly.
	Firmware  string `json:"firmware,omitempty"`
	Kernel    string `json:"kernel"`
	Initramfs string `json:"initramfs,omitempty"`
	Cmdline   string `json:"cmdline,omitempty"`
}

// CPUs sizes the vCPU set.
type CPUs struct {
	BootVCPUs int `json:"boot_vcpus"`
	MaxVCPUs  int `json:"max_vcpus,omitempty"`

	// Accepted, not implemented yet (see Unimplemented).
	Topology    *CPUTopology `json:"topology,omitempty"`
	KVMHyperV   bool         `json:"kvm_hyperv,omitempty"`
	MaxPhysBits int          `json:"max_phys_bits,omitempty"`
	Nested      *bool        `json:"nested,omitempty"`
	Features    *CPUFeatures `json:"features,omitempty"`
}

// CPUTopology is how the vCPUs are arranged into threads, cores, dies and
// packages. vio presents one thread per core, all cores in one package.
type CPUTopology struct {
	ThreadsPerCore int `json:"threads_per_core,omitempty"`
	CoresPerDie    int `json:"cores_per_die,omitempty"`
	DiesPerPackage int `json:"dies_per_package,omitempty"`
	Packages       int `json:"packages,omitempty"`
}

// CPUFeatures are optional CPU features a guest may be given.
type CPUFeatures struct {
	AMX bool `json:"amx,omitempty"`
}

// Memory sizes guest RAM; Size is in bytes.
type Memory struct {
	Size int64 `json:"size"`
	// Shared backs guest RAM with a memfd mapped MAP_SHARED, which another
	// process (a vhost-user back-end, a same-host migration peer) can map
	// too. Off by default: without shmem transparent huge pages on the host
	// a memfd is faulted in 4 KiB pages, and first touch of guest RAM was
	// about 100 times slower than anonymous memory on the build machine
	// (docs/architecture.md).
	Shared bool `json:"shared,omitempty"`

	// Accepted, not implemented yet (see Unimplemented).
	HotplugSize    int64  `json:"hotplug_size,omitempty"`
	HotpluggedSize int64  `json:"hotplugged_size,omitempty"`
	HotplugMethod  string `json:"hotplug_method,omitempty"`
	Mergeable      bool   `json:"mergeable,omitempty"`
	Hugepages      bool   `json:"hugepages,omitempty"`
	HugepageSize   int64  `json:"hugepage_size,omitempty"`
	Prefault       bool   `json:"prefault,omitempty"`
	Reserve        bool   `json:"reserve,omitempty"`
	THP            *bool  `json:"thp,omitempty"`
}

// Disk is one disk: virtio-blk, or an emulated IDE disk or ATAPI CD-ROM.
type Disk struct {
	Path string `json:"path"`
	// Iface is "virtio" (the default), "ide" or "cdrom"; a vio extension
	// to Cloud Hypervisor's DiskConfig. A cdrom is read-only and may have
	// no path (an empty drive).
	Iface    string `json:"iface,omitempty"`
	Readonly bool   `json:"readonly,omitempty"`
	Direct   bool   `json:"direct,omitempty"`
	// Cache is writeback (default), writethrough, none, directsync or
	// unsafe. (vio extension; Direct=true means "none")
	Cache     string `json:"cache,omitempty"`
	Serial    string `json:"serial,omitempty"`
	NumQueues int    `json:"num_queues,omitempty"`
	QueueSize int    `json:"queue_size,omitempty"`
	ID        string `json:"id,omitempty"`
	// Coalesce is the completion interrupt policy of a virtio disk:
	// off (default), adaptive, or completions per interrupt, each with
	// an optional ":DELAY" bound (irq/coalesce). A vio extension.
	Coalesce string `json:"coalesce,omitempty"`
	// Poll is how long each queue of a virtio disk polls its available
	// ring after a batch before it sleeps: off (default), adaptive
	// (optionally ":MAX"), or a time in microseconds (virtio/ringpoll).
	// A vio extension.
	Poll string `json:"poll,omitempty"`

	// VhostUser makes the disk a virtio-blk device whose requests the
	// vhost-user back-end listening at VhostSocket serves (vio as the
	// front-end, docs/vhost-user.md); Path is then empty. Guest RAM must
	// be shared (memory.shared).
	VhostUser   bool   `json:"vhost_user,omitempty"`
	VhostSocket string `json:"vhost_socket,omitempty"`

	// Accepted, not implemented yet (see Unimplemented).
	IOMMU        bool  `json:"iommu,omitempty"`
	PCISegment   int   `json:"pci_segment,omitempty"`
	BackingFiles bool  `json:"backing_files,omitempty"`
	Sparse       *bool `json:"sparse,omitempty"`

	// ImageType is the image format, with Cloud Hypervisor's names:
	// ImageRaw or ImageQcow2. Empty (or "Unknown") leaves it to vio: a
	// read-only disk is probed; a writable one is probed once, and what
	// was found is written here so that a reboot never probes again
	// (see docs/disks.md).
	ImageType string `json:"image_type,omitempty"`
	// AllowBacking lets a qcow2 image name backing files by absolute
	// path, with "..", or as NBD URIs; by default only relative names
	// below the image's directory are followed. (vio extension)
	AllowBacking bool `json:"allow_backing,omitempty"`
	// Graph describes the disk as a tree of nodes (image leaves under
	// interposers such as throttle and faults) instead of Path. (vio
	// extension; see docs/disks.md)
	Graph *graph.Node `json:"graph,omitempty"`
	// RateLimiterConfig and RateLimitGroup throttle the disk as Cloud
	// Hypervisor does: buckets of its own, or a group's.
	RateLimiterConfig *graph.RateLimiterConfig `json:"rate_limiter_config,omitempty"`
	RateLimitGroup    string                   `json:"rate_limit_group,omitempty"`
	// VirtualFunctions makes a virtio disk an SR-IOV physical function
	// whose virtual functions, up to 7, are these disks: the guest
	// enables them with sriov_numvfs and each VF is a virtio-blk device of
	// its own (docs/sriov.md). Only path, format, readonly, cache and
	// serial apply to a VF. A vio extension.
	VirtualFunctions []Disk `json:"virtual_functions,omitempty"`
	// ImageTypeProbed is set by vio when it pinned ImageType from a probe
	// of a writable raw disk: such a disk keeps refusing guest writes that
	// would make it probe as another format. Never read from JSON.
	ImageTypeProbed bool `json:"-"`
}

// validateVhostUser checks disk i served by a vhost-user back-end: a
// socket, shared guest RAM (as Cloud Hypervisor requires too; turning it
// on silently would change the cost of every guest page fault), and none
// of the keys that describe an image vio opens itself.
func (d *Disk) validateVhostUser(i int, sharedRAM bool) error {
	switch {
	case d.VhostSocket == "":
		return fmt.Errorf("disk %d: vhost_user=on needs the back-end's socket: add socket=PATH", i)
	case !sharedRAM:
		return fmt.Errorf("disk %d: a vhost-user disk needs guest RAM the back-end can map: add shared=on to --memory (e.g. --memory size=1G,shared=on)", i)
	case d.Path != "" || d.Graph != nil:
		return fmt.Errorf("disk %d: a vhost-user disk is the back-end's image: drop path= (give it to the back-end)", i)
	case d.Iface != "" && d.Iface != DiskVirtio:
		return fmt.Errorf("disk %d: a vhost-user disk is virtio-blk: drop iface=%s", i, d.Iface)
	case d.Readonly || d.Direct || d.Cache != "" || d.Serial != "" || d.ImageType != "" || d.Coalesce != "" || d.Poll != "" ||
		d.RateLimiterConfig != nil || d.RateLimitGroup != "" || d.AllowBacking || d.IOMMU:
		return fmt.Errorf("disk %d: readonly, direct, cache, serial, format, coalesce, poll, rate limits and iommu of a vhost-user disk are the back-end's: set them there (only socket, num_queues, queue_size and id apply here)", i)
	}
	if d.QueueSize != 0 && (d.QueueSize&(d.QueueSize-1) != 0 || d.QueueSize > 32768) {
		return fmt.Errorf("disk %d: queue_size=%d: give a power of two up to 32768", i, d.QueueSize)
	}
	return d.validateVFs(i)
}

// validateVhostUser checks NIC i served by a vhost-user back-end.
func (n *Net) validateVhostUser(i int, sharedRAM bool) error {
	switch {
	case n.VhostSocket == "":
		return fmt.Errorf("net %d: vhost_user=on needs the back-end's socket: add socket=PATH", i)
	case !sharedRAM:
		return fmt.Errorf("net %d: a vhost-user NIC needs guest RAM the back-end can map: add shared=on to --memory (e.g. --memory size=1G,shared=on)", i)
	case n.VhostMode != "" && !strings.EqualFold(n.VhostMode, "client"):
		return fmt.Errorf("net %d: vhost_mode %q: vio only connects to a listening back-end (client); start the back-end as the server", i, n.VhostMode)
	case n.VhostNet:
		return fmt.Errorf("net %d: vhost_net (the kernel's vhost-net on a TAP) and vhost_user (another process's back-end) exclude each other: give one of them", i)
	case n.Tap != "" || len(n.TapFDs) > 0 || n.User != nil || n.Socket != "" || n.Bond != nil:
		return fmt.Errorf("net %d: a vhost-user NIC's back-end is the socket's: drop tap, user, bond and the stream socket", i)
	case n.Model != "" && n.Model != NetVirtio:
		return fmt.Errorf("net %d: a vhost-user NIC is virtio-net: drop model=%s", i, n.Model)
	case n.Firewall != "" || n.Pcap != "" || n.IDS != "" || n.IOMMU:
		return fmt.Errorf("net %d: firewall, pcap, ids and iommu need frames to pass through vio, which a vhost-user NIC's do not: drop them", i)
	case n.NumQueues > 2:
		return fmt.Errorf("net %d: a vhost-user NIC has one queue pair (num_queues=2 at most); several queue pairs need a TAP back-end", i)
	}
	if n.QueueSize != 0 && (n.QueueSize&(n.QueueSize-1) != 0 || n.QueueSize > 32768) {
		return fmt.Errorf("net %d: queue_size=%d: give a power of two up to 32768", i, n.QueueSize)
	}
	if n.MAC != "" {
		if _, err := ParseMAC(n.MAC); err != nil {
			return fmt.Errorf("net %d: %w", i, err)
		}
	}
	return nil
}

// MaxVFs is how many SR-IOV virtual functions a disk may have.
const MaxVFs = 7

// validateVFs checks disk i's virtual functions: plain virtio disks.
func (d *Disk) validateVFs(i int) error {
	if len(d.VirtualFunctions) == 0 {
		return nil
	}
	if len(d.VirtualFunctions) > MaxVFs {
		return fmt.Errorf("disk %d: %d virtual functions: at most %d (they take functions 1-7 of the disk's PCI slot)", i, len(d.VirtualFunctions), MaxVFs)
	}
	if d.VhostUser {
		return fmt.Errorf("disk %d: a vhost-user disk cannot have SR-IOV virtual functions", i)
	}
	for j, vf := range d.VirtualFunctions {
		switch {
		case vf.Path == "":
			return fmt.Errorf("disk %d: virtual function %d has no path", i, j)
		case len(vf.VirtualFunctions) > 0:
			return fmt.Errorf("disk %d: virtual function %d has virtual functions of its own", i, j)
		case vf.Iface != "" && vf.Iface != DiskVirtio:
			return fmt.Errorf("disk %d: virtual function %d: a VF is a virtio disk, not iface=%s", i, j, vf.Iface)
		case vf.Graph != nil || vf.VhostUser || vf.RateLimiterConfig != nil || vf.RateLimitGroup != "":
			return fmt.Errorf("disk %d: virtual function %d: a VF is a plain image (path, format, readonly, cache, serial)", i, j)
		}
	}
	return nil
}

// Disk interfaces.
const (
	DiskVirtio = "virtio"
	DiskIDE    = "ide"
	DiskCDROM  = "cdrom"
)

// MaxIDE is how many IDE disks and CD-ROMs one VM can have: two channels
// of two drives.
const MaxIDE = 4

// Image types, as Cloud Hypervisor's DiskConfig names them.
const (
	ImageRaw     = "Raw"
	ImageQcow2   = "Qcow2"
	ImageUnknown = "Unknown" // same as empty: decided by vio
)

// ParseImageType maps a user's format name (raw, qcow2, in any case) to
// its ImageType.
func ParseImageType(v string) (string, error) {
	switch strings.ToLower(v) {
	case "raw":
		return ImageRaw, nil
	case "qcow2":
		return ImageQcow2, nil
	}
	return "", fmt.Errorf("disk format %q is not one vio opens: give raw or qcow2 (convert other images with qemu-img convert)", v)
}

// Net is one NIC: virtio-net, or an emulated Intel 82540EM (e1000) for
// guests without virtio drivers.
type Net struct {
	Tap string `json:"tap,omitempty"`
	// User selects vio's user-mode network instead of a TAP (a vio
	// extension: Cloud Hypervisor has no user networking). Exactly one
	// of Tap and User is given.
	User *UserNet `json:"user,omitempty"`
	// Socket connects the NIC to a stream socket in QEMU's -netdev
	// stream framing (a vio extension): a UNIX socket's path, or
	// tcp:HOST:PORT. A `vio switch`, passt or a QEMU guest listens there.
	Socket string `json:"socket,omitempty"`
	// Bond joins several stream sockets into one NIC (a vio extension):
	// instead of Socket, for a link that survives losing one of them.
	Bond *NetBond `json:"bond,omitempty"`
	// Interposers between the NIC and its back-end (vio extensions,
	// docs/network.md): a firewall rules file, a pcap file that mirrors
	// every frame, an inspector's UNIX socket and its mode ("ids", the
	// default, or "ips", where the inspector's verdicts are obeyed).
	Firewall string `json:"firewall,omitempty"`
	Pcap     string `json:"pcap,omitempty"`
	IDS      string `json:"ids,omitempty"`
	IDSMode  string `json:"ids_mode,omitempty"`
	// Model is "virtio" (the default) or "e1000"; a vio extension to
	// Cloud Hypervisor's NetConfig.
	Model string `json:"model,omitempty"`
	MAC   string `json:"mac,omitempty"`
	// NumQueues counts the NIC's queues of both directions, as Cloud
	// Hypervisor's does: 2 per receive/transmit pair (QueuePairs); more
	// than one pair needs a TAP (multi-queue, docs/network.md).
	NumQueues int    `json:"num_queues,omitempty"`
	QueueSize int    `json:"queue_size,omitempty"`
	ID        string `json:"id,omitempty"`

	// Accepted, not implemented yet (see Unimplemented). IP and Mask are
	// what Cloud Hypervisor would give a TAP it creates; vio creates none.
	IP      string `json:"ip,omitempty"`
	Mask    string `json:"mask,omitempty"`
	HostMAC string `json:"host_mac,omitempty"`
	MTU     int    `json:"mtu,omitempty"`
	IOMMU   bool   `json:"iommu,omitempty"`
	// VhostUser makes the NIC a virtio-net device whose queues the
	// vhost-user back-end listening at VhostSocket serves (vio as the
	// front-end, docs/vhost-user.md); VhostMode must then be empty or
	// "client" (vio connects). Guest RAM must be shared.
	VhostUser   bool   `json:"vhost_user,omitempty"`
	VhostSocket string `json:"vhost_socket,omitempty"`
	VhostMode   string `json:"vhost_mode,omitempty"`
	// VhostNet hands the NIC's receive and transmit queues to the host
	// kernel's vhost-net (/dev/vhost-net) on its TAP, while vio keeps the
	// control queue (a vio extension: --net tap=NAME,vhost=on, as QEMU's
	// vhost=on; docs/network.md, "vhost-net"). Not vhost_user: no other
	// process is involved.
	VhostNet    bool  `json:"vhost_net,omitempty"`
	PCISegment  int   `json:"pci_segment,omitempty"`
	OffloadTSO  *bool `json:"offload_tso,omitempty"`
	OffloadUFO  *bool `json:"offload_ufo,omitempty"`
	OffloadCsum *bool `json:"offload_csum,omitempty"`
	// Standby makes the NIC offer VIRTIO_NET_F_STANDBY: the guest's
	// virtio-net driver then puts it under a net_failover device, as the
	// standby of a pass-through NIC with the same MAC address (the
	// primary, a Device whose Failover names this NIC's ID). A vio
	// extension, QEMU's failover=on (docs/failover.md).
	Standby bool `json:"standby,omitempty"`

	// TapFDs are open TAP descriptors (one per queue pair) that a client
	// passed with SCM_RIGHTS on vm.add-net, used instead of opening Tap.
	// Whoever holds the config owns them (vmm.Controller); a VM uses
	// duplicates. Never read from or written to JSON.
	TapFDs []int `json:"-"`
}

// UserNet is a user-mode network (docs/network.md): a TCP/IP stack in
// vio terminates the guest's connections on host sockets, no TAP needed.
type UserNet struct {
	// Net is the virtual IPv4 network, default 10.0.2.0/24 (gateway .2,
	// DNS .3, guest .15).
	Net string `json:"net,omitempty"`
	// HostFwd are host→guest port forwards in QEMU's syntax,
	// [tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport.
	HostFwd []string `json:"hostfwd,omitempty"`
	// DNSUpstream is the resolver the DNS relay (10.0.2.3) forwards the
	// guest's queries to, ADDR or ADDR:PORT (port 53 by default); empty
	// means the first nameserver of the host's /etc/resolv.conf.
	DNSUpstream string `json:"dns_upstream,omitempty"`
}

// NIC models.
const (
	NetVirtio = "virtio"
	NetE1000  = "e1000"
)

// RNG is a virtio-rng device fed from Src.
type RNG struct {
	Src   string `json:"src,omitempty"`
	IOMMU bool   `json:"iommu,omitempty"` // accepted; see Unimplemented
}

// Console modes, as Cloud Hypervisor spells them.
const (
	ModeOff    = "Off"
	ModeNull   = "Null"
	ModeTty    = "Tty"
	ModeFile   = "File"
	ModeSocket = "Socket"
)

// Console routes the serial port (or the virtio console).
type Console struct {
	Mode   string `json:"mode,omitempty"`
	File   string `json:"file,omitempty"`
	Socket string `json:"socket,omitempty"`
	// Bond joins several stream sockets into one NIC (a vio extension):
	// instead of Socket, for a link that survives losing one of them.
	Bond  *NetBond `json:"bond,omitempty"`
	IOMMU bool     `json:"iommu,omitempty"` // accepted; see Unimplemented
}

// Defaults.
const (
	DefaultMemory  = 512 << 20
	DefaultCmdline = "console=ttyS0 panic=-1"
	MinMemory      = 32 << 20
	MaxVCPUs       = 254
)

// Default returns a VM config with every default filled in but no kernel.
func Default() *VM {
	return &VM{
		Payload:  Payload{Cmdline: DefaultCmdline},
		CPUs:     CPUs{BootVCPUs: 1},
		Memory:   Memory{Size: DefaultMemory},
		Serial:   Console{Mode: ModeTty},
		Console:  Console{Mode: ModeOff},
		OnReboot: "restart",
	}
}

// Load reads a JSON config file on top of the defaults. Unknown fields are
// errors: a typo must not silently drop a disk.
func Load(file string) (*VM, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	c, err := Decode(b)
	if err != nil {
		return nil, fmt.Errorf("config file %s: %w", file, err)
	}
	return c, nil
}

// Decode reads one JSON VmConfig on top of the defaults, as a config file
// and the API's vm.create both do. Unknown fields are errors (a typo must
// not silently drop a disk), and so is anything after the object.
func Decode(b []byte) (*VM, error) {
	c := Default()
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(c); err != nil {
		return nil, DecodeError(err)
	}
	if d.More() {
		return nil, errors.New("the JSON object is followed by more data: send exactly one object")
	}
	return c, nil
}

// DecodeError turns encoding/json's errors into one sentence that says where
// the problem is.
func DecodeError(err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Errorf("malformed JSON at byte %d: %w", syn.Offset, err)
	case errors.As(err, &typ):
		return fmt.Errorf("field %s has the wrong type: got a JSON %s, want %s", typ.Field, typ.Value, typ.Type)
	case errors.Is(err, io.EOF):
		return errors.New("empty body: send one JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errors.New("the JSON ends early: send one complete object")
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return fmt.Errorf("unknown field %s: vio does not know it (check the spelling against Cloud Hypervisor's VmConfig)", strings.TrimPrefix(err.Error(), "json: unknown field "))
	}
	return err
}

// Validate checks what can be checked without touching KVM: files exist,
// sizes are sane, names are known. Each error is one sentence that says
// what is wrong and what to do.
func (c *VM) Validate() error {
	if err := c.validateDiskBoot(); err != nil {
		return err
	}
	if c.Payload.Kernel != "" {
		if err := readable(c.Payload.Kernel, "kernel"); err != nil {
			return err
		}
	}
	if err := c.CloudInit.validate(); err != nil {
		return err
	}
	if c.Payload.Initramfs != "" {
		if err := readable(c.Payload.Initramfs, "initramfs"); err != nil {
			return err
		}
	}
	if c.CPUs.BootVCPUs < 1 || c.CPUs.BootVCPUs > MaxVCPUs {
		return fmt.Errorf("%d vCPUs requested: vio supports 1 to %d", c.CPUs.BootVCPUs, MaxVCPUs)
	}
	if c.CPUs.MaxVCPUs != 0 && c.CPUs.MaxVCPUs < c.CPUs.BootVCPUs {
		return fmt.Errorf("max_vcpus %d is below boot_vcpus %d", c.CPUs.MaxVCPUs, c.CPUs.BootVCPUs)
	}
	if c.Memory.Size < MinMemory {
		return fmt.Errorf("memory size %s is too small: a Linux guest needs at least %s", FormatSize(c.Memory.Size), FormatSize(MinMemory))
	}
	if c.Memory.Size%(2<<20) != 0 {
		return fmt.Errorf("memory size %s is not a multiple of 2 MiB", FormatSize(c.Memory.Size))
	}
	if limit := hostMemory(); limit > 0 && c.Memory.Size > limit {
		return fmt.Errorf("memory size %s is more than this host's %s of RAM", FormatSize(c.Memory.Size), FormatSize(limit))
	}
	if err := c.validateCompat(); err != nil {
		return err
	}
	if err := c.validateBalloon(); err != nil {
		return err
	}
	switch c.OnReboot {
	case "", "restart", "exit":
	default:
		return fmt.Errorf("on_reboot %q: want restart or exit", c.OnReboot)
	}
	for _, con := range []struct {
		name string
		c    Console
	}{{"serial", c.Serial}, {"console", c.Console}} {
		switch con.c.Mode {
		case "", ModeOff, ModeNull, ModeTty:
		case ModeFile:
			if con.c.File == "" {
				return fmt.Errorf("%s mode File needs a file name", con.name)
			}
		case ModeSocket:
			if con.c.Socket == "" {
				return fmt.Errorf("%s mode Socket needs a socket path", con.name)
			}
		default:
			return fmt.Errorf("%s mode %q: want Off, Null, Tty, File or Socket", con.name, con.c.Mode)
		}
	}
	nIDE := 0
	for i, d := range c.Disks {
		if d.VhostUser {
			if err := d.validateVhostUser(i, c.Memory.Shared); err != nil {
				return err
			}
			continue
		}
		switch d.Iface {
		case "", DiskVirtio:
			if _, err := coalesce.Parse(d.Coalesce); err != nil {
				return fmt.Errorf("disk %d: %w", i, err)
			}
			if _, err := ringpoll.Parse(d.Poll); err != nil {
				return fmt.Errorf("disk %d: poll=%s: %w", i, d.Poll, err)
			}
			if err := d.validateVFs(i); err != nil {
				return err
			}
		case DiskIDE, DiskCDROM:
			if len(d.VirtualFunctions) > 0 {
				return fmt.Errorf("disk %d: only a virtio disk can have SR-IOV virtual functions: drop vfs=, or use iface=virtio", i)
			}
			nIDE++
			if nIDE > MaxIDE {
				return fmt.Errorf("disk %d: at most %d IDE disks and CD-ROMs (two channels of two drives); use iface=virtio for the others", i, MaxIDE)
			}
			if d.NumQueues > 1 || d.QueueSize != 0 {
				return fmt.Errorf("disk %d: an IDE drive has no queues: drop num_queues and queue_size, or use iface=virtio", i)
			}
			if d.Coalesce != "" && d.Coalesce != "off" {
				return fmt.Errorf("disk %d: interrupt coalescing is for virtio disks: drop coalesce=%s, or use iface=virtio", i, d.Coalesce)
			}
			if d.Poll != "" && d.Poll != "off" {
				return fmt.Errorf("disk %d: ring polling is for virtio disks: drop poll=%s, or use iface=virtio", i, d.Poll)
			}
		default:
			return fmt.Errorf("disk %d: iface %q: want virtio, ide or cdrom", i, d.Iface)
		}
		if err := checkQueueSize("disk", i, d.QueueSize); err != nil {
			return err
		}
		if d.Path == "" && d.Graph == nil && d.Iface != DiskCDROM {
			return fmt.Errorf("disk %d has no path: give path=FILE (or a graph in a config file)", i)
		}
		switch d.Cache {
		case "", "writeback", "writethrough", "none", "directsync", "unsafe":
		default:
			return fmt.Errorf("disk %s: cache mode %q: want writeback, writethrough, none, directsync or unsafe", d.Path, d.Cache)
		}
		switch d.ImageType {
		case "", ImageUnknown, ImageRaw, ImageQcow2:
		default:
			return fmt.Errorf("disk %s: image_type %q: want %q or %q (or leave it out to let vio decide)", d.Path, d.ImageType, ImageRaw, ImageQcow2)
		}
	}
	if err := c.validateDiskGraphs(); err != nil {
		return err
	}
	for i, d := range c.Devices {
		if err := d.validate(i); err != nil {
			return err
		}
	}
	if err := c.validateFailover(); err != nil {
		return err
	}
	return c.validateNets()
}

// validateNets checks the NICs.
func (c *VM) validateNets() error {
	for i, n := range c.Net {
		if n.VhostUser {
			if err := n.validateVhostUser(i, c.Memory.Shared); err != nil {
				return err
			}
			continue
		}
		if err := n.validateBackend(i); err != nil {
			return err
		}
		if err := checkQueueSize("net", i, n.QueueSize); err != nil {
			return err
		}
		switch n.Model {
		case "", NetVirtio:
		case NetE1000:
			if n.QueuePairs() > 1 || n.QueueSize != 0 {
				return fmt.Errorf("net %d: an e1000 has one queue pair and rings the guest sizes: drop queues, num_queues and queue_size, or use model=virtio", i)
			}
		default:
			return fmt.Errorf("net %d: model %q: want virtio or e1000", i, n.Model)
		}
	}
	return nil
}

func readable(path, what string) error {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s %s does not exist", what, path)
		}
		return fmt.Errorf("%s %s cannot be read: %v", what, path, errors.Unwrap(err))
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.IsDir() {
		return fmt.Errorf("%s %s is a directory, not a file", what, path)
	}
	return nil
}

func hostMemory() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemTotal:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// ParseSize parses a size such as 512M, 2G, 1T, 4096K (binary units, with
// an optional "i" or "iB": 2GiB) or a plain byte count.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	binary := false // "i" or "iB" after the unit, which must then be there
	if u, ok := strings.CutSuffix(t, "iB"); ok {
		t, binary = u, true
	} else if u, ok := strings.CutSuffix(t, "i"); ok {
		t, binary = u, true
	}
	mult := int64(1)
	if n := len(t); n > 0 {
		switch strings.ToUpper(t[n-1:]) {
		case "K":
			mult = 1 << 10
		case "M":
			mult = 1 << 20
		case "G":
			mult = 1 << 30
		case "T":
			mult = 1 << 40
		}
		if mult != 1 {
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseInt(t, 10, 64)
	if err != nil || v < 0 || v > (1<<62)/mult || binary && mult == 1 {
		return 0, fmt.Errorf("size %q does not parse: want a number with an optional K, M, G or T suffix, like 512M", s)
	}
	return v * mult, nil
}

// FormatSize prints a byte count the way ParseSize reads it.
func FormatSize(n int64) string {
	for _, u := range []struct {
		s string
		v int64
	}{{"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}} {
		if n >= u.v && n%u.v == 0 {
			return strconv.FormatInt(n/u.v, 10) + u.s
		}
	}
	return strconv.FormatInt(n, 10)
}

// Clone returns a deep copy of c, so that a VM being built or reported
// never shares slices with one being changed.
func (c *VM) Clone() *VM {
	b, err := json.Marshal(c)
	if err != nil {
		panic("config: a VM config does not marshal: " + err.Error()) // every field is plain data
	}
	out := new(VM)
	if err := json.Unmarshal(b, out); err != nil {
		panic("config: a VM config does not unmarshal: " + err.Error())
	}
	// Fields that never travel in JSON travel with the clone.
	for i := range out.Disks {
		out.Disks[i].ImageTypeProbed = c.Disks[i].ImageTypeProbed
	}
	for i := range out.Net {
		out.Net[i].TapFDs = append([]int(nil), c.Net[i].TapFDs...)
	}
	return out
}
