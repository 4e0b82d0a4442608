package uring

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
)

var supported = sync.OnceValue(probe)

// Supported reports whether this process can use io_uring; a non-nil error
// says in one sentence why not, so a caller can log it and fall back to
// pread/pwrite. The answer is computed once.
func Supported() error { return supported() }

func probe() error {
	r, err := New(1)
	if err == nil {
		r.Close()
		return nil
	}
	switch {
	case errors.Is(err, syscall.ENOSYS):
		return fmt.Errorf("io_uring is unavailable (ENOSYS): the kernel lacks CONFIG_IO_URING or a seccomp filter blocks it: %w", err)
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES):
		if b, rerr := os.ReadFile("/proc/sys/kernel/io_uring_disabled"); rerr == nil {
			if v := strings.TrimSpace(string(b)); v != "0" {
				return fmt.Errorf("io_uring is disabled by sysctl kernel.io_uring_disabled=%s: %w", v, err)
			}
		}
		return fmt.Errorf("io_uring is not permitted for this process (a seccomp filter or LSM denies it): %w", err)
	}
	return fmt.Errorf("io_uring cannot be set up: %w", err)
}
