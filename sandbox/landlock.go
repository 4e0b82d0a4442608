package sandbox

import (
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// Landlock rights, grouped as a Rule's Access asks for them. EXECUTE is
// never granted: vio runs no programs. IOCTL_DEV is not handled: the
// seccomp filter narrows ioctl for every descriptor, including those
// opened before the ruleset (which Landlock never restricts).
const (
	llFileRead  = unix.LANDLOCK_ACCESS_FS_READ_FILE
	llDirRead   = unix.LANDLOCK_ACCESS_FS_READ_DIR
	llFileWrite = unix.LANDLOCK_ACCESS_FS_WRITE_FILE | unix.LANDLOCK_ACCESS_FS_TRUNCATE
	llCreate    = unix.LANDLOCK_ACCESS_FS_MAKE_REG | unix.LANDLOCK_ACCESS_FS_MAKE_DIR |
		unix.LANDLOCK_ACCESS_FS_MAKE_SOCK | unix.LANDLOCK_ACCESS_FS_REMOVE_FILE |
		unix.LANDLOCK_ACCESS_FS_REMOVE_DIR
	// llFileRights are the rights a rule on a file (not a directory) may
	// carry.
	llFileRights = unix.LANDLOCK_ACCESS_FS_EXECUTE | unix.LANDLOCK_ACCESS_FS_READ_FILE |
		unix.LANDLOCK_ACCESS_FS_WRITE_FILE | unix.LANDLOCK_ACCESS_FS_TRUNCATE |
		unix.LANDLOCK_ACCESS_FS_IOCTL_DEV
)

// handledFS is every filesystem right this ABI version knows that vio
// handles: what is handled and not granted by a rule is denied.
func handledFS(abi int) uint64 {
	h := uint64(unix.LANDLOCK_ACCESS_FS_EXECUTE | unix.LANDLOCK_ACCESS_FS_WRITE_FILE |
		unix.LANDLOCK_ACCESS_FS_READ_FILE | unix.LANDLOCK_ACCESS_FS_READ_DIR |
		unix.LANDLOCK_ACCESS_FS_REMOVE_DIR | unix.LANDLOCK_ACCESS_FS_REMOVE_FILE |
		unix.LANDLOCK_ACCESS_FS_MAKE_CHAR | unix.LANDLOCK_ACCESS_FS_MAKE_DIR |
		unix.LANDLOCK_ACCESS_FS_MAKE_REG | unix.LANDLOCK_ACCESS_FS_MAKE_SOCK |
		unix.LANDLOCK_ACCESS_FS_MAKE_FIFO | unix.LANDLOCK_ACCESS_FS_MAKE_BLOCK |
		unix.LANDLOCK_ACCESS_FS_MAKE_SYM)
	if abi >= 2 {
		h |= unix.LANDLOCK_ACCESS_FS_REFER
	}
	if abi >= 3 {
		h |= unix.LANDLOCK_ACCESS_FS_TRUNCATE
	}
	return h
}

// scopes are the IPC scopes vio asks for from ABI 6 on: no signals to
// processes outside the sandbox, no abstract UNIX sockets outside it.
func scopes(abi int) uint64 {
	if abi >= 6 {
		return unix.LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | unix.LANDLOCK_SCOPE_SIGNAL
	}
	return 0
}

// rights turns an Access into Landlock rights for a file or a directory.
func rights(a Access, dir bool) uint64 {
	var r uint64
	if a&Read != 0 {
		r |= llFileRead
		if dir {
			r |= llDirRead
		}
	}
	if a&Write != 0 {
		r |= llFileWrite
	}
	if a&Create != 0 && dir {
		r |= llCreate
	}
	if !dir {
		r &= llFileRights
	}
	return r
}

// errNoLandlock is returned when the kernel has no Landlock.
var errNoLandlock = fmt.Errorf("Landlock is %w (Linux 5.13 or later with landlock in the lsm= list is needed)", ErrUnsupported)

// landlockVersion returns the kernel's Landlock ABI version.
func landlockVersion() (int, error) {
	v, err := createRuleset(nil, unix.LANDLOCK_CREATE_RULESET_VERSION)
	switch {
	case errors.Is(err, syscall.ENOSYS), errors.Is(err, syscall.EOPNOTSUPP):
		return 0, errNoLandlock
	case err != nil:
		return 0, fmt.Errorf("asking the kernel for its Landlock version: %w", err)
	}
	return v, nil
}

// applyLandlock restricts every thread of the process to rules and
// returns the ABI version in force and the rules skipped because their
// path does not exist.
func applyLandlock(rules []Rule) (abi int, skipped []Rule, err error) {
	if abi, err = landlockVersion(); err != nil {
		return 0, nil, err
	}
	handled := handledFS(abi)
	fd, err := createRuleset(&rulesetAttr{handledFS: handled, scoped: scopes(abi)}, 0)
	if err != nil {
		return 0, nil, fmt.Errorf("creating a Landlock ruleset: %w", err)
	}
	defer unix.Close(fd)
	for _, r := range rules {
		pfd, err := unix.Open(r.Path, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			if errors.Is(err, syscall.ENOENT) {
				skipped = append(skipped, r)
				continue
			}
			return 0, nil, fmt.Errorf("sandbox: opening %s for a Landlock rule: %w", r.Path, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(pfd, &st); err != nil {
			unix.Close(pfd)
			return 0, nil, fmt.Errorf("sandbox: %s: %w", r.Path, err)
		}
		allowed := rights(r.Access, st.Mode&unix.S_IFMT == unix.S_IFDIR) & handled
		if allowed != 0 {
			err = addPathRule(fd, pfd, allowed)
		}
		unix.Close(pfd)
		if err != nil {
			return 0, nil, fmt.Errorf("sandbox: Landlock rule for %s: %w", r, err)
		}
	}
	if err := restrictAllThreads(fd); err != nil {
		return 0, nil, err
	}
	return abi, skipped, nil
}

// errCgo is returned when the process cannot restrict all its threads.
var errCgo = fmt.Errorf("Landlock is %w in this vio build: it links cgo, so Go cannot restrict every thread (build vio with CGO_ENABLED=0, as `make build` does)", ErrUnsupported)

// restrictAllThreads enforces the ruleset on every thread. Landlock, unlike
// seccomp, restricts only the calling thread, and a Go process has many;
// newer kernels restrict them all at once (LANDLOCK_RESTRICT_SELF_TSYNC),
// older ones need each thread to call landlock_restrict_self, which Go's
// syscall.AllThreadsSyscall does in a pure-Go (no cgo) process. Each
// thread must have no_new_privs first.
func restrictAllThreads(ruleset int) error {
	if _, _, e := syscall.AllThreadsSyscall(syscall.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0); e != 0 {
		if e == syscall.ENOTSUP {
			// A cgo process: set it where we can, and try TSYNC.
			if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
				return fmt.Errorf("sandbox: setting no_new_privs: %w", err)
			}
			if err := restrictSelf(ruleset, unix.LANDLOCK_RESTRICT_SELF_TSYNC); err == nil {
				return nil
			}
			return errCgo
		}
		return fmt.Errorf("sandbox: setting no_new_privs on every thread: %w", e)
	}
	if _, _, e := syscall.AllThreadsSyscall(unix.SYS_LANDLOCK_RESTRICT_SELF, uintptr(ruleset), 0, 0); e != 0 {
		return fmt.Errorf("sandbox: enforcing the Landlock ruleset on every thread: %w", e)
	}
	return nil
}
