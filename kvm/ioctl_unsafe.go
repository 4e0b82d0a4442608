package kvm

import (
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// This file and run_unsafe.go hold every use of package unsafe in kvm: the
// ioctls that pass a pointer to the kernel, and the view of the mmapped
// kvm_run page. Everything else is built on these few functions.

// ioctl issues a request whose argument is an integer (or none). EINTR is
// returned to the caller, never retried here: for KVM_RUN it is the kick.
func ioctl(fd int, req, arg uintptr) (uintptr, error) {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
	if e != 0 {
		return r, e
	}
	return r, nil
}

// ioctlRaw is ioctl without telling the Go scheduler: the calling
// goroutine keeps its P for the whole call (see VCPU.SetHoldP).
func ioctlRaw(fd int, req, arg uintptr) error {
	_, _, e := unix.RawSyscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
	if e != 0 {
		return e
	}
	return nil
}

// ioctlPtr issues a request whose argument points at a fixed-size struct.
// The conversion inside the call expression keeps *arg alive and unmoved for
// the duration of the system call (rule 4 of unsafe.Pointer).
func ioctlPtr[T any](fd int, req uintptr, arg *T) (uintptr, error) {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(arg)))
	if e != 0 {
		return r, e
	}
	return r, nil
}

// ioctlBytes issues a request whose argument is a variable-length structure
// (a header followed by a flexible array) marshalled into buf.
func ioctlBytes(fd int, req uintptr, buf []byte) (uintptr, error) {
	if len(buf) == 0 {
		return ioctl(fd, req, 0)
	}
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(&buf[0])))
	if e != 0 {
		return r, e
	}
	return r, nil
}

// bytesAddr returns the host virtual address of b's first byte, for
// structures that carry a userspace address (memory slots, dirty bitmaps).
// The caller keeps b alive (and, for guest memory, mapped) for as long as
// the kernel may use the address.
func bytesAddr(b []byte) uint64 {
	if len(b) == 0 {
		return 0
	}
	return uint64(uintptr(unsafe.Pointer(&b[0])))
}

// getDirtyLog issues KVM_GET_DIRTY_LOG for slot into bitmap, which the
// caller sized to one bit per page of the slot. It is a slice of uint64 so
// that the kernel's word-sized writes are aligned.
func getDirtyLog(fd int, slot uint32, bitmap []uint64) error {
	dl := dirtyLog{Slot: slot, Bitmap: (*byte)(unsafe.Pointer(&bitmap[0]))}
	_, err := ioctlPtr(fd, ioctlGetDirtyLog, &dl)
	runtime.KeepAlive(bitmap)
	return err
}
