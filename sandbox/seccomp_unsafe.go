package sandbox

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// installFilter installs prog on every thread of the process
// (SECCOMP_FILTER_FLAG_TSYNC; threads created later inherit it), with
// SECCOMP_FILTER_FLAG_LOG so that trapped calls reach the audit log too.
func installFilter(prog []unix.SockFilter) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	// A filter needs no_new_privs (or CAP_SYS_ADMIN); TSYNC passes it on
	// to the other threads.
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("sandbox: setting no_new_privs: %w", err)
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	r, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER,
		unix.SECCOMP_FILTER_FLAG_TSYNC|unix.SECCOMP_FILTER_FLAG_LOG, uintptr(unsafe.Pointer(&fprog)))
	runtime.KeepAlive(prog)
	switch {
	case e == unix.EINVAL || e == unix.ENOSYS:
		return fmt.Errorf("seccomp filters are %w: %v", ErrUnsupported, e)
	case e != 0:
		return fmt.Errorf("sandbox: installing the seccomp filter: %w", e)
	case r != 0:
		return fmt.Errorf("sandbox: installing the seccomp filter: thread %d cannot take it", r)
	}
	return nil
}
