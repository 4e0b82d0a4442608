package sandbox

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// rulesetAttr is struct landlock_ruleset_attr up to the fields vio sets;
// a kernel that knows fewer fields accepts it as long as the extra ones
// are zero.
type rulesetAttr struct {
	handledFS  uint64
	handledNet uint64
	scoped     uint64
}

// createRuleset calls landlock_create_ruleset; with a nil attr it asks a
// question (flags: LANDLOCK_CREATE_RULESET_VERSION) and returns the answer.
func createRuleset(attr *rulesetAttr, flags uintptr) (int, error) {
	var p, size uintptr
	if attr != nil {
		p, size = uintptr(unsafe.Pointer(attr)), unsafe.Sizeof(*attr)
		if attr.scoped == 0 {
			size = unsafe.Offsetof(attr.scoped) // for kernels before ABI 6
		}
	}
	r, _, e := unix.Syscall(unix.SYS_LANDLOCK_CREATE_RULESET, p, size, flags)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// addPathRule grants allowed beneath the file or directory parent.
func addPathRule(ruleset, parent int, allowed uint64) error {
	attr := unix.LandlockPathBeneathAttr{Allowed_access: allowed, Parent_fd: int32(parent)}
	_, _, e := unix.Syscall6(unix.SYS_LANDLOCK_ADD_RULE, uintptr(ruleset), unix.LANDLOCK_RULE_PATH_BENEATH, uintptr(unsafe.Pointer(&attr)), 0, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// restrictSelf calls landlock_restrict_self on the calling thread (or,
// with LANDLOCK_RESTRICT_SELF_TSYNC, every thread).
func restrictSelf(ruleset int, flags uintptr) error {
	_, _, e := unix.Syscall(unix.SYS_LANDLOCK_RESTRICT_SELF, uintptr(ruleset), flags, 0)
	if e != 0 {
		return e
	}
	return nil
}
