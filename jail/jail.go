// Package jail runs a process the way Firecracker's jailer runs
// Firecracker: in new mount, PID, IPC and UTS namespaces, with a root
// directory that holds only the files it was given, as an unprivileged
// user with no capabilities.
//
// It works in two stages, because a Go process is multithreaded from its
// first instruction and Linux refuses a new mount namespace to a thread
// that shares its filesystem context with others:
//
//   - Spawn (stage 1, as root) starts the same program again in new
//     namespaces, forwards SIGINT, SIGTERM and SIGHUP to it, waits for it,
//     and removes the jail's directory afterwards. The child knows it is
//     stage 2 from RootEnv.
//   - Enter (stage 2) is called by the child once it has opened what only
//     root may open (for vio: /dev/kvm, TAP devices, disk images, once the
//     VM is built). It mounts a tmpfs as the new root, binds into it each
//     path it is given at the same absolute path (so the program's own
//     paths keep working), makes fresh device nodes owned by the jail's
//     user, mounts a /proc for the new PID namespace, pivots into the new
//     root, detaches the old one, and drops to the user and group with no
//     supplementary groups. Files and descriptors already open stay usable.
//
// The mounts live only in the child's private mount namespace: nothing is
// visible on the host, and they vanish when the child exits.
package jail

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"syscall"

	"golang.org/x/sys/unix"
)

// RootEnv names the environment variable through which Spawn tells the
// child where its root directory is; the child passes it to Enter.
const RootEnv = "VIO_JAIL_ROOT"

// Child reports whether this process is a jailed child started by Spawn,
// and if so the root directory Enter must use.
func Child() (root string, ok bool) {
	root = os.Getenv(RootEnv)
	return root, root != ""
}

// User is who the jailed process runs as.
type User struct {
	UID, GID int
}

// Check says in one sentence what is wrong with u for jailing, if
// anything: root (uid or gid 0) would make the jail pointless.
func (u User) Check() error {
	if u.UID <= 0 || u.GID <= 0 {
		return fmt.Errorf("jail uid %d and gid %d: give an unprivileged user and group (not 0, e.g. uid=%d,gid=%d for nobody)", u.UID, u.GID, 65534, 65534)
	}
	return nil
}

// Spawn runs the current program with args again as a jailed child and
// returns its exit status once it has ended. It must run as root (or with
// CAP_SYS_ADMIN, CAP_MKNOD, CAP_SETUID and CAP_SETGID). The jail's
// directory is made under parent (os.TempDir() if empty) and removed
// when the child has exited.
func Spawn(args []string, parent string) (int, error) {
	if os.Geteuid() != 0 {
		return 0, errors.New("jail: running jailed needs root (it makes namespaces and device nodes, then drops to the jail's user): run as root, or without the jail")
	}
	root, err := os.MkdirTemp(parent, "vio-jail-")
	if err != nil {
		return 0, fmt.Errorf("jail: making the jail's directory: %w", err)
	}
	defer os.Remove(root)
	self, err := os.Executable()
	if err != nil {
		return 0, fmt.Errorf("jail: finding this program: %w", err)
	}
	cmd := exec.Command(self, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), RootEnv+"="+root)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWIPC | unix.CLONE_NEWUTS,
		// The child must not outlive its supervisor: an orchestrator
		// that kills the supervisor expects the VM gone.
		Pdeathsig: syscall.SIGKILL,
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("jail: starting the jailed process: %w", err)
	}
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-sigs:
				// The child is PID 1 of its namespace: the kernel
				// delivers only signals it has handlers for, which
				// are the ones it means to handle.
				cmd.Process.Signal(s)
			case <-done:
				return
			}
		}
	}()
	err = cmd.Wait()
	close(done)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return ee.ExitCode(), nil
	default:
		return 0, fmt.Errorf("jail: waiting for the jailed process: %w", err)
	}
}

// Bind is a host path the jailed process keeps, at the same path.
type Bind struct {
	Path     string
	Writable bool
}

// Spec is what Enter builds.
type Spec struct {
	// Root is the empty directory Spawn made (from Child).
	Root string
	User User
	// Binds are the host paths to keep. Paths that do not exist are left
	// out (the process could not open them anyway). A character device
	// (such as /dev/kvm or /dev/net/tun) becomes a fresh node of the same
	// device owned by User, read-write for it alone, so the host's node
	// and its permissions are untouched.
	Binds []Bind
}

// defaultDevices are the nodes every jailed process gets: a process that
// opens /dev/null or /dev/urandom should not fail for want of them.
var defaultDevices = []string{"/dev/null", "/dev/zero", "/dev/urandom"}

// Enter builds the jail and moves the calling process into it, dropping
// to spec.User. It must be called by the child Spawn started, once. On
// error the process is left in an unknown state and should exit.
func Enter(spec Spec) error {
	if err := spec.User.Check(); err != nil {
		return err
	}
	if os.Getpid() != 1 {
		return errors.New("jail: Enter must run in the process Spawn started (PID 1 of a new namespace)")
	}
	root := spec.Root
	// Nothing mounted from here on may propagate to the host.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("jail: making mounts private: %w", err)
	}
	if err := unix.Mount("tmpfs", root, "tmpfs", unix.MS_NOSUID, "mode=0755,size=1m"); err != nil {
		return fmt.Errorf("jail: mounting the jail's root: %w", err)
	}
	binds := append([]Bind(nil), spec.Binds...)
	for _, d := range defaultDevices {
		binds = append(binds, Bind{Path: d, Writable: true})
	}
	// Parents before children, so that a file bound inside a bound
	// directory lands on top of it, not under it.
	sort.SliceStable(binds, func(i, j int) bool { return binds[i].Path < binds[j].Path })
	for _, b := range binds {
		if err := place(root, b, spec.User); err != nil {
			return err
		}
	}
	proc := filepath.Join(root, "proc")
	if err := os.MkdirAll(proc, 0o555); err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	if err := unix.Mount("proc", proc, "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("jail: mounting /proc: %w", err)
	}
	if err := pivot(root); err != nil {
		return err
	}
	return drop(spec.User)
}

// place makes b visible inside root.
func place(root string, b Bind, u User) error {
	if !filepath.IsAbs(b.Path) {
		return fmt.Errorf("jail: %q is not an absolute path", b.Path)
	}
	st, err := os.Stat(b.Path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	dst := filepath.Join(root, b.Path)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	mode := st.Mode()
	switch {
	case mode&os.ModeCharDevice != 0:
		sys, ok := st.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("jail: no device number for %s", b.Path)
		}
		if _, err := os.Lstat(dst); err == nil {
			return nil // placed already
		}
		perm := uint32(0o600)
		if slices.Contains(defaultDevices, b.Path) {
			perm = 0o666 // null, zero, urandom: harmless to anyone
		}
		if err := unix.Mknod(dst, unix.S_IFCHR|perm, int(sys.Rdev)); err != nil {
			return fmt.Errorf("jail: making %s: %w", b.Path, err)
		}
		if err := unix.Chmod(dst, perm); err != nil { // past the umask
			return fmt.Errorf("jail: %w", err)
		}
		if err := os.Lchown(dst, u.UID, u.GID); err != nil {
			return fmt.Errorf("jail: %w", err)
		}
		return nil
	case mode.IsDir():
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return fmt.Errorf("jail: %w", err)
		}
	default:
		if _, err := os.Lstat(dst); errors.Is(err, os.ErrNotExist) {
			f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o600)
			if err != nil {
				return fmt.Errorf("jail: %w", err)
			}
			f.Close()
		}
	}
	if err := unix.Mount(b.Path, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("jail: binding %s: %w", b.Path, err)
	}
	flags := uintptr(unix.MS_BIND | unix.MS_REMOUNT | unix.MS_NOSUID | unix.MS_NODEV)
	if !b.Writable {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount("", dst, "", flags, ""); err != nil {
		return fmt.Errorf("jail: restricting %s: %w", b.Path, err)
	}
	return nil
}

// pivot makes root the root of the mount namespace and detaches the old
// one, so no path leads back to the host's files (chroot alone leaves the
// old root reachable to a process that can chroot again).
func pivot(root string) error {
	old := filepath.Join(root, ".old-root")
	if err := os.Mkdir(old, 0o700); err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	if err := unix.PivotRoot(root, old); err != nil {
		return fmt.Errorf("jail: pivot_root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	if err := unix.Unmount("/.old-root", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("jail: detaching the host's root: %w", err)
	}
	if err := os.Remove("/.old-root"); err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	// The jail's root is read-only from now on: nothing may be created
	// in it except beneath writable binds.
	if err := unix.Mount("", "/", "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID, ""); err != nil {
		return fmt.Errorf("jail: making the root read-only: %w", err)
	}
	return nil
}

// drop moves every thread of the process to u, with no supplementary
// groups. Leaving uid 0 for a non-zero uid clears every capability.
// (Go's syscall package applies these to all threads of a pure-Go
// process.)
func drop(u User) error {
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("jail: dropping supplementary groups: %w", err)
	}
	if err := syscall.Setresgid(u.GID, u.GID, u.GID); err != nil {
		return fmt.Errorf("jail: setting gid %d: %w", u.GID, err)
	}
	if err := syscall.Setresuid(u.UID, u.UID, u.UID); err != nil {
		return fmt.Errorf("jail: setting uid %d: %w", u.UID, err)
	}
	return nil
}
