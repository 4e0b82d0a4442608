package blk_test

import (
	"errors"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// errNoInterrupt is vcpuHalt's answer when no interrupt came in time.
var errNoInterrupt = errors.New("no interrupt within the bound")

// vcpuHalt blocks the calling thread until the eventfd fd is signalled (an
// irqfd's interrupt reaching a halted vCPU) or timeoutMs pass, and resets
// its counter. Like a vio vCPU thread inside KVM_RUN it waits in a raw
// system call, which keeps its P (vcpu/sched.go). A signal (the runtime's
// preemption, a stop of the world) ends the wait early: it yields then, so
// the scheduler can stop it, and waits again.
func vcpuHalt(fd, timeoutMs int) error {
	pfd := unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
	for {
		n, _, e := unix.RawSyscall(unix.SYS_POLL, uintptr(unsafe.Pointer(&pfd)), 1, uintptr(timeoutMs))
		if e == unix.EINTR {
			runtime.Gosched()
			continue
		}
		if e != 0 {
			return e
		}
		if n == 0 {
			return errNoInterrupt
		}
		var b [8]byte
		_, _, e = unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), 8)
		if e != 0 && e != unix.EAGAIN {
			return e
		}
		return nil
	}
}

// vcpuNotify signals the eventfd fd from the calling thread without
// giving up its P: a guest's doorbell write that KVM turns into an
// ioeventfd signal.
func vcpuNotify(fd int) error {
	b := [8]byte{1}
	if _, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), 8); e != 0 {
		return e
	}
	return nil
}
