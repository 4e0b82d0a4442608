//go:build linux

package vhost

import (
	"encoding/binary"
	"unsafe"

	"golang.org/x/sys/unix"
)

// This file holds every use of package unsafe in vhost: the ioctls that
// pass a pointer to the kernel.

// The uapi structures (linux/vhost_types.h), with the kernel's layout on
// every 64-bit architecture: no implicit padding.
type vringState struct {
	Index uint32
	Num   uint32
}

type vringFile struct {
	Index uint32
	FD    int32
}

type vringAddr struct {
	Index    uint32
	Flags    uint32
	Desc     uint64
	Used     uint64
	Avail    uint64
	LogGuest uint64
}

// memoryHeader is struct vhost_memory without its flexible array of
// struct vhost_memory_region (memRegionSize bytes each).
type memoryHeader struct {
	NRegions uint32
	Padding  uint32
}

const memRegionSize = 32

// Request numbers: _IO/_IOR/_IOW/_IOWR(VHOST_VIRTIO = 0xAF, nr, type).
const vhostType = 0xAF

func ioc(dir, nr, size uintptr) uintptr { return dir<<30 | size<<16 | vhostType<<8 | nr }

const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2
)

var (
	ioctlGetFeatures   = ioc(iocRead, 0x00, 8)
	ioctlSetFeatures   = ioc(iocWrite, 0x00, 8)
	ioctlSetOwner      = ioc(iocNone, 0x01, 0)
	ioctlSetMemTable   = ioc(iocWrite, 0x03, unsafe.Sizeof(memoryHeader{}))
	ioctlSetLogBase    = ioc(iocWrite, 0x04, 8)
	ioctlSetVringNum   = ioc(iocWrite, 0x10, unsafe.Sizeof(vringState{}))
	ioctlSetVringAddr  = ioc(iocWrite, 0x11, unsafe.Sizeof(vringAddr{}))
	ioctlSetVringBase  = ioc(iocWrite, 0x12, unsafe.Sizeof(vringState{}))
	ioctlGetVringBase  = ioc(iocRead|iocWrite, 0x12, unsafe.Sizeof(vringState{}))
	ioctlSetVringKick  = ioc(iocWrite, 0x20, unsafe.Sizeof(vringFile{}))
	ioctlSetVringCall  = ioc(iocWrite, 0x21, unsafe.Sizeof(vringFile{}))
	ioctlSetVringErr   = ioc(iocWrite, 0x22, unsafe.Sizeof(vringFile{}))
	ioctlNetSetBackend = ioc(iocWrite, 0x30, unsafe.Sizeof(vringFile{}))
)

// marshalMemTable lays out struct vhost_memory with its regions.
func marshalMemTable(regions []MemoryRegion) []byte {
	b := make([]byte, unsafe.Sizeof(memoryHeader{}), int(unsafe.Sizeof(memoryHeader{}))+memRegionSize*len(regions))
	binary.NativeEndian.PutUint32(b, uint32(len(regions)))
	for _, r := range regions {
		b = binary.NativeEndian.AppendUint64(b, r.GuestAddr)
		b = binary.NativeEndian.AppendUint64(b, r.Size)
		b = binary.NativeEndian.AppendUint64(b, r.UserAddr)
		b = binary.NativeEndian.AppendUint64(b, 0) // flags_padding
	}
	return b
}

func ioctl(fd int, req, arg uintptr) error {
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg); e != 0 {
		return e
	}
	return nil
}

// ioctlPtr passes a pointer to a fixed-size value; the conversion inside
// the call expression keeps *arg alive and unmoved for the system call.
func ioctlPtr[T any](fd int, req uintptr, arg *T) error {
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(arg))); e != 0 {
		return e
	}
	return nil
}

// ioctlBytes passes a variable-length structure marshalled into b.
func ioctlBytes(fd int, req uintptr, b []byte) error {
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(&b[0]))); e != 0 {
		return e
	}
	return nil
}
