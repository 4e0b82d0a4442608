package vfio

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// memlockHint explains a mapping refused for lack of locked memory: the
// kernel pins DMA-mapped pages against RLIMIT_MEMLOCK.
func memlockHint(err error, n int) string {
	if !errors.Is(err, unix.ENOMEM) && !errors.Is(err, unix.EPERM) {
		return ""
	}
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim) != nil || lim.Cur == unix.RLIM_INFINITY {
		return ""
	}
	return fmt.Sprintf(" (the memlock limit is %d KiB and this mapping alone needs %d KiB: raise it, e.g. ulimit -l unlimited or LimitMEMLOCK=infinity)", lim.Cur>>10, n>>10)
}
