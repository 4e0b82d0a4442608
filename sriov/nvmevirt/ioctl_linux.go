package nvmevirt

import (
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// passthru is the kernel's struct nvme_passthru_cmd (struct
// nvme_admin_cmd), linux/nvme_ioctl.h: 72 bytes.
type passthru struct {
	Opcode      uint8
	Flags       uint8
	Rsvd1       uint16
	NSID        uint32
	CDW2        uint32
	CDW3        uint32
	Metadata    uint64
	Addr        uint64
	MetadataLen uint32
	DataLen     uint32
	CDW10       uint32
	CDW11       uint32
	CDW12       uint32
	CDW13       uint32
	CDW14       uint32
	CDW15       uint32
	TimeoutMS   uint32
	Result      uint32
}

// ioctlAdminCmd is NVME_IOCTL_ADMIN_CMD, _IOWR('N', 0x41, struct
// nvme_admin_cmd).
var ioctlAdminCmd = iowr('N', 0x41, unsafe.Sizeof(passthru{}))

// iowr is the kernel's _IOWR(type, nr, size) on x86 and arm64: direction
// read|write (3) in bits 31:30, size in 29:16, type in 15:8, nr in 7:0.
func iowr(typ, nr byte, size uintptr) uintptr {
	return 3<<30 | size<<16 | uintptr(typ)<<8 | uintptr(nr)
}

// toPassthru lays a Command out for the ioctl, with the data buffer at
// addr.
func toPassthru(c *Command, addr uintptr) passthru {
	return passthru{Opcode: c.Opcode, NSID: c.NSID, CDW10: c.CDW10, CDW11: c.CDW11,
		Addr: uint64(addr), DataLen: uint32(len(c.Data)), TimeoutMS: 0}
}

// Controller is a primary controller reached through the kernel's nvme
// driver: its character device /dev/nvmeN.
type Controller struct {
	f *os.File
}

// Open opens the controller's character device (root only: the kernel
// checks CAP_SYS_ADMIN for admin pass-through).
func Open(path string) (*Controller, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("nvmevirt: opening %s: %w", path, err)
	}
	return &Controller{f: f}, nil
}

// Close closes the character device.
func (c *Controller) Close() error { return c.f.Close() }

// Submit runs one admin command. A positive ioctl return is the NVMe
// status the controller completed it with.
func (c *Controller) Submit(cmd *Command) error {
	var addr uintptr
	if len(cmd.Data) > 0 {
		addr = uintptr(unsafe.Pointer(&cmd.Data[0]))
	}
	p := toPassthru(cmd, addr)
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, c.f.Fd(), ioctlAdminCmd, uintptr(unsafe.Pointer(&p)))
	runtime.KeepAlive(cmd.Data)
	op := opName(cmd)
	if errno != 0 {
		return fmt.Errorf("nvme %s: %w", op, errno)
	}
	if r != 0 {
		return &StatusError{Op: op, Status: uint16(r)}
	}
	cmd.Result = p.Result
	return nil
}

// opName names a command for errors.
func opName(c *Command) string {
	switch c.Opcode {
	case OpIdentify:
		return fmt.Sprintf("identify (CNS %#x)", c.CDW10&0xff)
	case OpVirtMgmt:
		act, rt, id, nr := DecodeVirtMgmt(c)
		switch act {
		case ActOffline:
			return fmt.Sprintf("virt-mgmt: secondary %d offline", id)
		case ActOnline:
			return fmt.Sprintf("virt-mgmt: secondary %d online", id)
		case ActAssign:
			return fmt.Sprintf("virt-mgmt: assign %d %s to secondary %d", nr, rt, id)
		case ActPrimaryFlexible:
			return fmt.Sprintf("virt-mgmt: %d flexible %s for primary %d", nr, rt, id)
		}
		return fmt.Sprintf("virt-mgmt action %d", act)
	}
	return fmt.Sprintf("admin opcode %#x", c.Opcode)
}
