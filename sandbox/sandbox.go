// Package sandbox confines the vio process once a VM is set up: a seccomp
// filter that lets through only the system calls vio needs (on every thread)
// and a Landlock ruleset that narrows the filesystem to the files the VM was
// configured with. It knows nothing of VMs: the caller says which paths and
// how they may be used (a Policy) and how violations are handled (a Mode).
//
// Both parts are best-effort in the way Cloud Hypervisor's and Firecracker's
// are not: a kernel without Landlock (or without seccomp) runs vio
// unconfined in that respect, and Apply reports what it could do, so the
// caller can say so. A seccomp filter that is too narrow would kill a
// healthy VM, so the allow-list (see seccomp_amd64.go) covers everything a
// VM does after set-up, and that includes building it afresh: a guest
// reboot rebuilds the VM (vmm.Boot), as do vm.create/vm.boot and
// vm.restore in `vio serve`.
package sandbox

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

// Mode is how strictly the process is confined.
type Mode int

const (
	// Off confines nothing (for debugging).
	Off Mode = iota
	// On installs the seccomp filter and the Landlock ruleset. A system
	// call outside the allow-list is not executed: it raises SIGSYS, which
	// the Go runtime reports ("SIGSYS: bad system call", the calling
	// goroutine's stack, the syscall number in rax) before it exits with
	// status 2. See docs/security.md.
	On
	// Kill is On, except that a forbidden system call kills the process
	// outright (SECCOMP_RET_KILL_PROCESS, as Firecracker does): nothing of
	// vio runs after it, and only the kernel's audit log says which call
	// it was.
	Kill
	// Log lets every system call through but has the kernel log those
	// outside the allow-list (SECCOMP_RET_LOG: the audit log, or dmesg
	// without auditd), and applies no Landlock ruleset: for finding out
	// what a killed VM needed.
	Log
)

func (m Mode) String() string {
	switch m {
	case Off:
		return "off"
	case On:
		return "on"
	case Kill:
		return "kill"
	case Log:
		return "log"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// ParseMode parses the --sandbox flag's value. Cloud Hypervisor's
// --seccomp values (true, false, log) are accepted too.
func ParseMode(s string) (Mode, error) {
	switch strings.ToLower(s) {
	case "on", "true", "":
		return On, nil
	case "off", "false":
		return Off, nil
	case "kill":
		return Kill, nil
	case "log":
		return Log, nil
	}
	return Off, fmt.Errorf("--sandbox=%s is not a sandbox mode: use on (the default), kill, log or off", s)
}

// Access is what a path in a Policy may be used for.
type Access uint8

const (
	// Read allows opening the file (or files beneath the directory) for
	// reading, and listing the directory.
	Read Access = 1 << iota
	// Write allows opening the file (or files beneath the directory) for
	// writing and truncating it.
	Write
	// Create allows making and removing regular files, directories and
	// UNIX sockets beneath the directory (a snapshot directory, a console
	// socket that is bound afresh at each reboot); with Write, the files
	// made can be written.
	Create
)

// Rule grants access to a path: to the file itself, or to everything
// beneath a directory.
type Rule struct {
	Path   string
	Access Access
}

func (r Rule) String() string {
	var s []string
	if r.Access&Read != 0 {
		s = append(s, "read")
	}
	if r.Access&Write != 0 {
		s = append(s, "write")
	}
	if r.Access&Create != 0 {
		s = append(s, "create")
	}
	return r.Path + " (" + strings.Join(s, ",") + ")"
}

// Policy is what the confined process may still reach.
type Policy struct {
	// Rules lists the paths the process may open (Landlock). Paths that
	// do not exist are skipped: they cannot be opened confined either,
	// which is the point.
	Rules []Rule
	// NoLandlock leaves the filesystem unconfined (seccomp only).
	NoLandlock bool
}

// Report says what Apply did, for the caller to log.
type Report struct {
	Seccomp  bool   // a seccomp filter is installed on every thread
	Syscalls int    // how many system calls it allows
	Landlock int    // the Landlock ABI version in force, 0 if none
	Skipped  []Rule // rules whose paths do not exist
	// Notes says in sentences what could not be done and why (no
	// Landlock in this kernel, a cgo build...).
	Notes []string
}

// ErrUnsupported is matched by errors for hosts where a part of the
// sandbox cannot be installed at all.
var ErrUnsupported = errors.New("not supported on this host")

// Apply confines the process as mode says: Landlock first (its own system
// calls are not in the seccomp allow-list), then the seccomp filter. It
// cannot be undone. A part the host does not support is left out and said
// in Report.Notes; any other failure is an error, and the process is then
// partly confined at most, so the caller should stop.
func Apply(mode Mode, p Policy) (Report, error) {
	var rep Report
	if mode == Off {
		return rep, nil
	}
	warmUp()
	if mode != Log && !p.NoLandlock {
		abi, skipped, err := applyLandlock(p.Rules)
		switch {
		case errors.Is(err, ErrUnsupported):
			rep.Notes = append(rep.Notes, err.Error()+"; the filesystem is not confined")
		case err != nil:
			return rep, err
		default:
			rep.Landlock, rep.Skipped = abi, skipped
			confined.Store(true)
		}
	}
	rules := allowList(os.Getpid())
	prog, err := program(rules, auditArch, denyAction(mode))
	if err != nil {
		return rep, err
	}
	switch err := installFilter(prog); {
	case errors.Is(err, ErrUnsupported):
		rep.Notes = append(rep.Notes, err.Error()+"; system calls are not confined")
	case err != nil:
		return rep, err
	default:
		rep.Seccomp, rep.Syscalls = true, len(rules)
	}
	return rep, nil
}

// warmUp does, before confinement, what the Go runtime and standard
// library would otherwise do lazily on first use and could no longer do
// under Landlock: loading the local time zone for log lines.
func warmUp() {
	time.Now().Local().Zone()
}

// confined is set once a Landlock ruleset is in force.
var confined atomic.Bool

// Explain returns err with a sentence added when it is a permission error
// that the Landlock ruleset may have caused: a path the API names after
// confinement (a snapshot directory, a hot-plugged disk) that the user did
// not allow. Other errors, and all errors of an unconfined process, are
// returned as they are.
func Explain(err error, path string) error {
	if err == nil || !confined.Load() || !errors.Is(err, fs.ErrPermission) {
		return err
	}
	return fmt.Errorf("%w (vio's sandbox may be what keeps %s out of reach: start vio with --sandbox-allow naming it or a directory above it, or with --sandbox=off; see docs/security.md)", err, path)
}
