//go:build linux

// Package vhost is the host kernel's vhost-net interface (/dev/vhost-net):
// thin, typed ioctls that hand a virtio-net device's receive and transmit
// rings to the kernel, which moves frames between them and a TAP with no
// VMM code on the way. It mirrors what the vhost-user messages do over a
// socket (package vhostuser): an owner, features, a memory table, each
// ring's size, addresses, base and eventfds, and a dirty log for live
// migration; plus VHOST_NET_SET_BACKEND, which attaches a ring to the
// TAP's socket.
//
// The kernel reaches guest memory through this process's own mapping of
// it, so ring addresses are host virtual addresses here (vhost-user's are
// the front-end's too), and the memory table maps guest physical
// addresses to them for the buffers the driver posts.
//
// All unsafe code is in vhost_unsafe.go; the structures are the uapi's
// (linux/vhost_types.h), their layout checked by the tests against the
// sizes the kernel's headers encode in the request numbers.
package vhost

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// DevicePath is the kernel's vhost-net device node.
const DevicePath = "/dev/vhost-net"

// Feature bits of the vhost protocol itself (linux/vhost.h,
// linux/virtio_net.h); the virtio bits are virtio's.
const (
	// FLogAll asks the kernel to log every guest page it writes (a live
	// migration's dirty log, SetLogBase).
	FLogAll uint64 = 1 << 26
	// FNetVirtioNetHdr has vhost add and strip the virtio-net header
	// itself, for a back-end without one. A TAP opened with IFF_VNET_HDR
	// carries the header, so vio never acknowledges it.
	FNetVirtioNetHdr uint64 = 1 << 27
)

// VringFLog is the vring address flag that logs the used ring's writes.
const VringFLog = 1 << 0

// ErrNoDevice is wrapped by Open's error when the kernel has no vhost-net.
var ErrNoDevice = errors.New("no " + DevicePath)

// MemoryRegion maps guest physical addresses [GuestAddr, GuestAddr+Size)
// to this process's addresses from UserAddr (struct vhost_memory_region).
type MemoryRegion struct {
	GuestAddr, Size, UserAddr uint64
}

// VringAddr is one ring's placement (struct vhost_vring_addr): host
// virtual addresses of the descriptor table, the available and the used
// ring, and, with VringFLog in Flags, the used ring's guest physical
// address, under which the kernel logs its writes.
type VringAddr struct {
	Index    uint32
	Flags    uint32
	Desc     uint64
	Used     uint64
	Avail    uint64
	LogGuest uint64
}

// Net is one vhost-net instance: one receive/transmit queue pair of a
// NIC (ring 0 receive, ring 1 transmit, as virtio-net numbers them within
// a pair).
type Net struct {
	f  *os.File
	fd int
}

// Rings of a Net.
const (
	RxRing = 0
	TxRing = 1
)

// Open opens a vhost-net instance and makes this process its owner
// (VHOST_SET_OWNER): the kernel then works in this process's address
// space, on a worker thread of its own. The errors say what to do: load
// the module, or give access to the device node.
func Open() (*Net, error) {
	fd, err := unix.Open(DevicePath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENODEV), errors.Is(err, unix.ENXIO):
		return nil, fmt.Errorf("%w: the host kernel's vhost-net is not loaded: run modprobe vhost_net (as root), or drop vhost=on", ErrNoDevice)
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		return nil, fmt.Errorf("cannot open %s (%v): run vio as root or give its user read-write access to %s, or drop vhost=on", DevicePath, err, DevicePath)
	case err != nil:
		return nil, fmt.Errorf("open %s: %w", DevicePath, err)
	}
	n := &Net{f: os.NewFile(uintptr(fd), DevicePath), fd: fd}
	if err := n.do("VHOST_SET_OWNER", ioctlSetOwner, 0); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

// Close releases the instance: the kernel stops its rings and drops its
// references to the TAP and the eventfds.
func (n *Net) Close() error { return n.f.Close() }

// FD returns the descriptor (for tests and logs); it stays the Net's.
func (n *Net) FD() int { return n.fd }

func (n *Net) do(name string, req, arg uintptr) error {
	if err := ioctl(n.fd, req, arg); err != nil {
		return fmt.Errorf("vhost-net %s: %w", name, err)
	}
	return nil
}

// Features returns what the kernel's vhost-net implements
// (VHOST_GET_FEATURES).
func (n *Net) Features() (uint64, error) {
	var f uint64
	if err := ioctlPtr(n.fd, ioctlGetFeatures, &f); err != nil {
		return 0, fmt.Errorf("vhost-net VHOST_GET_FEATURES: %w", err)
	}
	return f, nil
}

// SetFeatures acknowledges the features in use (VHOST_SET_FEATURES): the
// virtio bits the driver negotiated that the kernel implements, and
// FLogAll while a migration logs. It may be called while the rings run.
func (n *Net) SetFeatures(f uint64) error {
	if err := ioctlPtr(n.fd, ioctlSetFeatures, &f); err != nil {
		return fmt.Errorf("vhost-net VHOST_SET_FEATURES %#x: %w", f, err)
	}
	return nil
}

// SetMemTable gives the kernel the guest's memory map (VHOST_SET_MEM_TABLE).
func (n *Net) SetMemTable(regions []MemoryRegion) error {
	if len(regions) == 0 || len(regions) > MaxRegions {
		return fmt.Errorf("vhost-net: %d memory regions, want 1 to %d", len(regions), MaxRegions)
	}
	if err := ioctlBytes(n.fd, ioctlSetMemTable, marshalMemTable(regions)); err != nil {
		return fmt.Errorf("vhost-net VHOST_SET_MEM_TABLE: %w", err)
	}
	return nil
}

// MaxRegions is the kernel's default limit on memory table entries (the
// vhost module's max_mem_regions).
const MaxRegions = 64

// SetLogBase gives the kernel the dirty log (VHOST_SET_LOG_BASE): the host
// virtual address of a bitmap with one bit per 4 KiB page of guest
// physical address space, which must stay mapped while the kernel may
// write it.
func (n *Net) SetLogBase(addr uint64) error {
	if err := ioctlPtr(n.fd, ioctlSetLogBase, &addr); err != nil {
		return fmt.Errorf("vhost-net VHOST_SET_LOG_BASE: %w", err)
	}
	return nil
}

func (n *Net) vringState(name string, req uintptr, ring, num uint32) (uint32, error) {
	s := vringState{Index: ring, Num: num}
	if err := ioctlPtr(n.fd, req, &s); err != nil {
		return 0, fmt.Errorf("vhost-net %s ring %d: %w", name, ring, err)
	}
	return s.Num, nil
}

// SetVringNum sets a ring's size (VHOST_SET_VRING_NUM).
func (n *Net) SetVringNum(ring uint32, size uint16) error {
	_, err := n.vringState("VHOST_SET_VRING_NUM", ioctlSetVringNum, ring, uint32(size))
	return err
}

// SetVringBase sets the available index a ring starts from
// (VHOST_SET_VRING_BASE); the ring must have no back-end.
func (n *Net) SetVringBase(ring uint32, base uint16) error {
	_, err := n.vringState("VHOST_SET_VRING_BASE", ioctlSetVringBase, ring, uint32(base))
	return err
}

// VringBase returns the next available index the kernel would take
// (VHOST_GET_VRING_BASE); call it once the ring's back-end is detached,
// when the kernel has stopped.
func (n *Net) VringBase(ring uint32) (uint16, error) {
	b, err := n.vringState("VHOST_GET_VRING_BASE", ioctlGetVringBase, ring, 0)
	return uint16(b), err
}

// SetVringAddr places a ring (VHOST_SET_VRING_ADDR); with VringFLog, also
// while it runs, to turn the used ring's logging on or off.
func (n *Net) SetVringAddr(a VringAddr) error {
	v := vringAddr(a)
	if err := ioctlPtr(n.fd, ioctlSetVringAddr, &v); err != nil {
		return fmt.Errorf("vhost-net VHOST_SET_VRING_ADDR ring %d: %w", a.Index, err)
	}
	return nil
}

func (n *Net) vringFile(name string, req uintptr, ring uint32, fd int) error {
	f := vringFile{Index: ring, FD: int32(fd)}
	if err := ioctlPtr(n.fd, req, &f); err != nil {
		return fmt.Errorf("vhost-net %s ring %d: %w", name, ring, err)
	}
	return nil
}

// SetVringKick gives the eventfd the driver's notifications signal.
func (n *Net) SetVringKick(ring uint32, fd int) error {
	return n.vringFile("VHOST_SET_VRING_KICK", ioctlSetVringKick, ring, fd)
}

// SetVringCall gives the eventfd the kernel signals to interrupt the
// driver (a KVM irqfd, or one the VMM reads). It may change while the
// ring runs.
func (n *Net) SetVringCall(ring uint32, fd int) error {
	return n.vringFile("VHOST_SET_VRING_CALL", ioctlSetVringCall, ring, fd)
}

// SetVringErr gives the eventfd the kernel signals when the ring is
// broken (a descriptor it cannot use).
func (n *Net) SetVringErr(ring uint32, fd int) error {
	return n.vringFile("VHOST_SET_VRING_ERR", ioctlSetVringErr, ring, fd)
}

// SetBackend attaches a ring to the TAP whose descriptor fd is (the
// kernel takes its own reference), which starts it, or detaches it with
// fd -1, which stops it: when SetBackend(ring, -1) returns the kernel no
// longer touches the ring (VHOST_NET_SET_BACKEND).
func (n *Net) SetBackend(ring uint32, fd int) error {
	return n.vringFile("VHOST_NET_SET_BACKEND", ioctlNetSetBackend, ring, fd)
}
