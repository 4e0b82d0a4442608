package vfio

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// ErrInUse means another process (another VM) has the device's IOMMU
// group open: VFIO lets one process at a time hold a group.
var ErrInUse = errors.New("vfio: the device is in use")

// procRoot is where /proc is; tests point it elsewhere.
var procRoot = "/proc"

// Holder is a process that has an IOMMU group (/dev/vfio/N) open: for a
// VMM, the VM the group's devices are passed through to.
type Holder struct {
	PID int `json:"pid"`
	// Name names the VM: the --api-socket of its command line when it
	// has one (what `vio ctl` reaches it by), else argv[0].
	Name string `json:"name"`
}

func (h Holder) String() string { return fmt.Sprintf("VM %s (pid %d)", h.Name, h.PID) }

// GroupHolders scans proc (a /proc mount) for processes with any of
// groups open, by each fd's link to /dev/vfio/<group>, and returns them
// by group, each list in pid order. Processes that vanish or whose fds
// cannot be read (another user's, without root) are skipped: the scan
// reports what it can see. The process skip is left out (pass -1 for
// none), so a VMM does not find itself.
func GroupHolders(proc string, groups []string, skip int) map[string][]Holder {
	want := map[string]bool{}
	for _, g := range groups {
		want["/dev/vfio/"+g] = true
	}
	out := map[string][]Holder{}
	if len(want) == 0 {
		return out
	}
	ents, _ := os.ReadDir(proc)
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 || pid == skip {
			continue
		}
		fds, _ := os.ReadDir(filepath.Join(proc, e.Name(), "fd"))
		seen := map[string]bool{}
		for _, fd := range fds {
			l, err := os.Readlink(filepath.Join(proc, e.Name(), "fd", fd.Name()))
			if err != nil || !want[l] || seen[l] {
				continue
			}
			seen[l] = true
			g := strings.TrimPrefix(l, "/dev/vfio/")
			out[g] = append(out[g], Holder{PID: pid, Name: vmName(proc, pid)})
		}
	}
	for _, hs := range out {
		sort.Slice(hs, func(i, j int) bool { return hs[i].PID < hs[j].PID })
	}
	return out
}

// vmName is the --api-socket value of process pid's command line, else
// its argv[0], else "pid N" when the command line is unreadable or empty
// (a kernel thread, or a process gone since its fds were read).
func vmName(proc string, pid int) string {
	b, err := os.ReadFile(filepath.Join(proc, strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return "pid " + strconv.Itoa(pid)
	}
	return NameFromCmdline(b, pid)
}

// NameFromCmdline names a VM from its NUL-separated command line (the
// contents of /proc/PID/cmdline): the value of --api-socket (as
// "--api-socket V" or "--api-socket=V"), else argv[0], else "pid N".
func NameFromCmdline(cmdline []byte, pid int) string {
	args := strings.Split(string(bytes.TrimRight(cmdline, "\x00")), "\x00")
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--api-socket="); ok && v != "" {
			return v
		}
		if a == "--api-socket" && i+1 < len(args) && args[i+1] != "" {
			return args[i+1]
		}
	}
	if len(args) > 0 && args[0] != "" {
		return args[0]
	}
	return "pid " + strconv.Itoa(pid)
}

// inUse is the error for opening device bdf's group when the open failed
// with EBUSY: it names the VM holding the group when the scan finds it.
func inUse(bdf, group string, cause error) error {
	hs := GroupHolders(procRoot, []string{group}, os.Getpid())[group]
	if len(hs) == 0 {
		return fmt.Errorf("%w: %s (IOMMU group %s) is held by another process (%v): stop the VM using it first", ErrInUse, bdf, group, cause)
	}
	return &InUseError{BDF: bdf, Holder: hs[0]}
}

// InUseError is a device whose IOMMU group a VM holds; it is ErrInUse.
type InUseError struct {
	BDF    string
	Holder Holder
}

func (e *InUseError) Error() string {
	return fmt.Sprintf("%s is in use by %s: stop that VM first", e.BDF, e.Holder)
}

// Is makes errors.Is(err, ErrInUse) hold.
func (e *InUseError) Is(target error) bool { return target == ErrInUse }
