package kvm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// System is an open KVM device (/dev/kvm): the handle that answers questions
// about the host's KVM and creates VMs.
type System struct {
	fd       int
	mmapSize int
}

// Open opens the KVM device at path (DefaultPath if empty) and checks that it
// speaks API version 12. A missing device node is ErrNoKVM.
func Open(path string) (*System, error) {
	if path == "" {
		path = DefaultPath
	}
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENXIO) {
			return nil, fmt.Errorf("%w: %s: %v", ErrNoKVM, path, err)
		}
		return nil, fmt.Errorf("kvm: opening %s: %w", path, err)
	}
	s := &System{fd: fd}
	v, err := ioctl(fd, ioctlGetAPIVersion, 0)
	if err != nil {
		s.Close()
		return nil, ioctlError("KVM_GET_API_VERSION", err)
	}
	if v != APIVersion {
		s.Close()
		return nil, fmt.Errorf("%w: %d, want %d", ErrAPIVersion, v, APIVersion)
	}
	n, err := ioctl(fd, ioctlGetVCPUMmapSize, 0)
	if err != nil {
		s.Close()
		return nil, ioctlError("KVM_GET_VCPU_MMAP_SIZE", err)
	}
	if n < sizeofRun {
		s.Close()
		return nil, fmt.Errorf("kvm: vCPU mmap size %d is smaller than kvm_run (%d)", n, sizeofRun)
	}
	s.mmapSize = int(n)
	return s, nil
}

// Close closes the device. VMs created from it stay valid.
func (s *System) Close() error { return closeFD(&s.fd) }

// FD returns the device's file descriptor.
func (s *System) FD() int { return s.fd }

// CheckExtension returns KVM_CHECK_EXTENSION's answer for c: 0 when the
// capability is absent, otherwise 1 or a capability-specific number (for
// example the maximum number of vCPUs for CapMaxVCPUs).
func (s *System) CheckExtension(c Cap) (int, error) {
	r, err := ioctl(s.fd, ioctlCheckExtension, uintptr(c))
	if err != nil {
		return 0, ioctlError("KVM_CHECK_EXTENSION", err)
	}
	return int(r), nil
}

// VCPUMmapSize is the size of each vCPU's shared kvm_run mapping: the
// kvm_run structure followed by data pages (the PIO data buffer, the
// coalesced MMIO ring).
func (s *System) VCPUMmapSize() int { return s.mmapSize }

// maxCPUIDEntries bounds the KVM_GET_SUPPORTED_CPUID buffer. Current kernels
// report well under 100 leaves; the ioctl fails with E2BIG when the buffer
// is short, and we double up to this limit.
const maxCPUIDEntries = 1024

// SupportedCPUID returns the CPUID leaves KVM can expose to a guest on this
// host (KVM_GET_SUPPORTED_CPUID). The VMM filters and fixes them up and
// passes the result to VCPU.SetCPUID2.
func (s *System) SupportedCPUID() ([]CPUIDEntry, error) {
	for n := 64; n <= maxCPUIDEntries; n *= 2 {
		buf := make([]byte, sizeofCPUID2Head+n*sizeofCPUIDEntry)
		binary.NativeEndian.PutUint32(buf, uint32(n))
		_, err := ioctlBytes(s.fd, ioctlGetSupportedCPUID, buf)
		if errors.Is(err, unix.E2BIG) {
			continue
		}
		if err != nil {
			return nil, ioctlError("KVM_GET_SUPPORTED_CPUID", err)
		}
		return decodeCPUID(buf)
	}
	return nil, fmt.Errorf("kvm: KVM_GET_SUPPORTED_CPUID: more than %d entries", maxCPUIDEntries)
}

// MSRIndexList returns the MSRs KVM saves and restores for a guest
// (KVM_GET_MSR_INDEX_LIST).
func (s *System) MSRIndexList() ([]uint32, error) {
	for n := 64; n <= 4096; n *= 2 {
		buf := make([]byte, 4+4*n)
		binary.NativeEndian.PutUint32(buf, uint32(n))
		_, err := ioctlBytes(s.fd, ioctlGetMSRIndexList, buf)
		if errors.Is(err, unix.E2BIG) {
			continue
		}
		if err != nil {
			return nil, ioctlError("KVM_GET_MSR_INDEX_LIST", err)
		}
		got := binary.NativeEndian.Uint32(buf)
		if int(got) > n {
			return nil, fmt.Errorf("kvm: KVM_GET_MSR_INDEX_LIST: kernel reported %d > %d entries", got, n)
		}
		idx := make([]uint32, got)
		for i := range idx {
			idx[i] = binary.NativeEndian.Uint32(buf[4+4*i:])
		}
		return idx, nil
	}
	return nil, errors.New("kvm: KVM_GET_MSR_INDEX_LIST: too many MSRs")
}

// IsPVM reports whether this host's KVM is PVM only: the kvm_pvm module is
// loaded and the CPU advertises neither VMX (Intel) nor SVM (AMD), so every
// VM runs under PVM's software (shadow paging) virtualization. Such a KVM
// runs ordinary guests, but every exit and every page fault is much more
// expensive; see RequireHardware.
func (s *System) IsPVM() bool { return isPVM("/sys/module/kvm_pvm", "/proc/cpuinfo") }

// RequireHardware returns ErrPVMOnly when IsPVM is true: for callers that
// would rather fail with a clear message than run a guest very slowly.
func (s *System) RequireHardware() error {
	if s.IsPVM() {
		return ErrPVMOnly
	}
	return nil
}

func isPVM(module, cpuinfo string) bool {
	if _, err := os.Stat(module); err != nil {
		return false
	}
	info, err := os.ReadFile(cpuinfo)
	if err != nil {
		return false
	}
	for line := range bytes.Lines(info) {
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok || !bytes.Equal(bytes.TrimSpace(k), []byte("flags")) {
			continue
		}
		for _, f := range bytes.Fields(v) {
			if string(f) == "vmx" || string(f) == "svm" {
				return false
			}
		}
	}
	return true
}

// CreateVM creates a VM (KVM_CREATE_VM, machine type 0).
func (s *System) CreateVM() (*VM, error) {
	var fd uintptr
	var err error
	// KVM_CREATE_VM registers an MMU notifier, which gives up with EINTR
	// when a signal is pending, before anything was created; Go's
	// runtime signals its threads all the time (preemption), so this is
	// an ordinary event, seen in this project's suite. Retry it: the
	// signal is handled on the way back to user space.
	for range 1000 {
		if fd, err = ioctl(s.fd, ioctlCreateVM, 0); !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		return nil, ioctlError("KVM_CREATE_VM", err)
	}
	unix.CloseOnExec(int(fd))
	return &VM{fd: int(fd), mmapSize: s.mmapSize}, nil
}
