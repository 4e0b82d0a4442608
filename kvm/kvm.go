// Package kvm is a thin, typed binding of the Linux KVM API for x86-64:
// the system (/dev/kvm), VM and vCPU file descriptors and their ioctls.
//
// The package adds no policy. It does not choose a memory layout, CPUID or
// register state, and it does not run a vCPU loop (package vcpu does). What it
// adds over raw ioctls is types: struct layouts and constants generated from
// the kernel's own <linux/kvm.h> (see gen.go), errors wrapped with the ioctl
// that failed, and accessors for the exit data in a vCPU's shared kvm_run
// page that check every guest-controlled offset and length before slicing.
//
// Ownership: a System, VM or VCPU owns its file descriptor and closes it in
// Close. A VM may be used from any goroutine. A VCPU's Run, and the register
// calls, must come from one OS thread at a time (KVM binds a vCPU to the task
// that last ran it; running it from many threads is legal but slow), which is
// why package vcpu locks one OS thread per vCPU.
//
// # PVM hosts
//
// Some hosts (this project's CI machine among them) have no VT-x/AMD-V and
// run KVM's PVM back end (kvm_pvm), which virtualizes by shadow paging and
// instruction emulation. System.IsPVM detects it; RequireHardware turns it
// into ErrPVMOnly for callers that would rather refuse than crawl. What was
// measured on such a host with this package's tests:
//
//   - real-mode and 64-bit guests run; in real mode every instruction goes
//     through KVM's instruction emulator (its "insn_emulation" statistic
//     counts each one), in 64-bit mode the instructions that exit do;
//   - INT n outside real mode is an emulation failure
//     (ExitInternalError, InternalErrorEmulation); exceptions raised by
//     instructions (ud2's #UD) are delivered normally;
//   - port I/O reaches userspace as ExitIO, but KVM's "io_exits" statistic
//     stays 0 (the emulator completes it), while "exits" and "mmio_exits"
//     count as usual: count I/O exits in userspace (package vcpu does);
//   - KVM_GET_FPU returns MXCSR as 0 whatever KVM_SET_FPU stored;
//   - CapNrVCPUs is 2 (recommended), CapMaxVCPUs 1024.
package kvm

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// DefaultPath is the usual KVM device node.
const DefaultPath = "/dev/kvm"

var (
	// ErrNoKVM reports that the KVM device node does not exist: the kernel
	// has no KVM module loaded, or the node is missing in this container.
	ErrNoKVM = errors.New("kvm: no KVM device (is the kvm module loaded, is /dev/kvm present?)")

	// ErrPVMOnly reports a host whose KVM is PVM (the kvm_pvm module, a
	// paging-based software hypervisor for hosts without VT-x/AMD-V) and not
	// hardware virtualization. It is returned by System.RequireHardware for
	// callers that need a hardware-assisted KVM; the rest of the API works
	// on PVM, only slowly.
	ErrPVMOnly = errors.New("kvm: this host's KVM is PVM only (kvm_pvm loaded, CPU has neither VMX nor SVM)")

	// ErrAPIVersion reports a KVM whose KVM_GET_API_VERSION is not APIVersion.
	ErrAPIVersion = errors.New("kvm: unsupported KVM API version")
)

// ioctlError wraps an errno with the name of the ioctl that failed, keeping
// the errno matchable with errors.Is (e.g. errors.Is(err, unix.EEXIST)).
func ioctlError(name string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("kvm: %s: %w", name, err)
}

// closeFD closes fd once; a second Close of the same object is a no-op.
func closeFD(fd *int) error {
	if *fd < 0 {
		return nil
	}
	err := unix.Close(*fd)
	*fd = -1
	return err
}
