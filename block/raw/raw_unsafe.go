package raw

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// addrAligned reports whether b starts at an address that is a multiple of
// align (a power of two), as O_DIRECT requires of user buffers.
func addrAligned(b []byte, align int64) bool {
	if len(b) == 0 {
		return true
	}
	return uintptr(unsafe.Pointer(&b[0]))&uintptr(align-1) == 0
}

// alignedBuf returns n bytes starting at an address aligned to align.
func alignedBuf(n int, align int64) []byte {
	b := make([]byte, n+int(align))
	skip := int(-uintptr(unsafe.Pointer(&b[0])) & uintptr(align-1))
	return b[skip : skip+n : skip+n]
}

// ioctlRange issues a block device ioctl that takes a {start, length}
// pair of uint64s (BLKDISCARD, BLKZEROOUT).
func ioctlRange(fd int, req uint, off, n int64) error {
	r := [2]uint64{uint64(off), uint64(n)}
	for {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(&r)))
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return e
		}
		return nil
	}
}
