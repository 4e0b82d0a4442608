package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/block/graph"
	"github.com/viovmm/vio/block/image"
	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/sandbox"
)

// sandboxFlags are the confinement flags of `vio run` and `vio serve`
// (see docs/security.md).
type sandboxFlags struct {
	mode  string
	allow []string
}

func (s *sandboxFlags) add(fl *pflag.FlagSet) {
	fl.StringVar(&s.mode, "sandbox", "on", "confine vio once the VM is built, before the guest runs: on (the default: seccomp filter and Landlock; a forbidden system call stops vio with a report), kill (the same, killed by the kernel), log (only log forbidden calls to the kernel's audit log), off (no confinement, for debugging; see docs/security.md)")
	fl.StringArrayVar(&s.allow, "sandbox-allow", nil, "a file or directory the sandboxed vio may still read, write and create files in: for snapshot destinations and hot-plugged disks the API names later (repeatable; with vio serve, the only paths it may use)")
}

// selfTestEnv makes vio make a forbidden system call once it is confined:
// a way to see that the sandbox bites on a given host (and the tests' way).
const selfTestEnv = "VIO_SANDBOX_SELFTEST"

// confine applies the sandbox with policy and logs what it did at -v.
func (s sandboxFlags) confine(p sandbox.Policy, log *slog.Logger) error {
	mode, err := sandbox.ParseMode(s.mode)
	if err != nil {
		return err
	}
	if mode == sandbox.Off {
		log.Info("sandbox off: vio is not confined")
		return nil
	}
	rep, err := sandbox.Apply(mode, p)
	if err != nil {
		return fmt.Errorf("%w; run with --sandbox=off to go without confinement", err)
	}
	for _, n := range rep.Notes {
		log.Info("sandbox: " + n)
	}
	for _, r := range rep.Skipped {
		log.Debug("sandbox: no such path, not allowed", "path", r.Path)
	}
	switch {
	case mode == sandbox.Log:
		log.Info("sandbox in log mode: forbidden system calls are logged by the kernel (dmesg, audit log) and run; the filesystem is not confined", "syscalls", rep.Syscalls)
	case p.NoLandlock:
		log.Info("sandbox on: seccomp only (name paths with --sandbox-allow to confine the filesystem too)", "mode", mode, "seccomp", rep.Seccomp, "syscalls", rep.Syscalls)
	default:
		log.Info("sandbox on", "mode", mode, "seccomp", rep.Seccomp, "syscalls", rep.Syscalls, "landlock_abi", rep.Landlock, "paths", len(p.Rules)-len(rep.Skipped))
	}
	for _, r := range p.Rules {
		log.Debug("sandbox: allowed", "rule", r.String())
	}
	if os.Getenv(selfTestEnv) != "" {
		fmt.Fprintf(os.Stderr, "vio: %s is set: making a forbidden system call (sysfs)\n", selfTestEnv)
		r, _, e := unix.Syscall(unix.SYS_SYSFS, 3, 0, 0)
		fmt.Fprintf(os.Stderr, "vio: the forbidden system call returned %d (%v): the sandbox let it through\n", r, e)
	}
	return nil
}

// vmPolicy is what a confined `vio run` may still open: whatever its VM
// opens again when it is rebuilt (a guest reboot), what it removes on
// exit, and what the user allowed with --sandbox-allow. The files the VM
// holds open now are added as they are open (/proc/self/fd), which covers
// backing files and device nodes without a second walk of every chain.
func vmPolicy(cfg *config.VM, apiSocket string, obs observeFlags, allow []string) sandbox.Policy {
	var p policyBuilder
	p.add(cfg.Payload.Kernel, sandbox.Read)
	p.add(cfg.Payload.Initramfs, sandbox.Read)
	if len(cfg.Devices) > 0 || apiSocket != "" {
		// Pass-through devices, reopened on a reboot, or hot-plugged
		// through the API (vm.add-device).
		p.add("/dev/vfio", sandbox.Read|sandbox.Write)
	}
	nbdHost := false
	// SR-IOV virtual functions' images are reopened on a reboot too.
	disks := slices.Clone(cfg.Disks)
	for _, d := range cfg.Disks {
		disks = append(disks, d.VirtualFunctions...)
	}
	for _, d := range disks {
		if d.VhostUser {
			// The socket's directory, not the socket: a back-end that
			// restarts binds a new socket file at the same path, which
			// the device reconnects to.
			p.socket(d.VhostSocket)
			continue
		}
		if image.IsNBD(d.Path) {
			if u, err := url.Parse(d.Path); err == nil && u.Scheme == "nbd" && net.ParseIP(u.Hostname()) == nil {
				nbdHost = true
			}
			continue
		}
		a := sandbox.Read
		if !d.Readonly {
			a |= sandbox.Write
		}
		p.add(d.Path, a)
		for _, f := range graph.KeyFiles(d.Graph) { // an encrypted disk's key, read again on a reboot
			p.add(f, sandbox.Read)
		}
		for _, dir := range graph.ScratchDirs(d.Graph) { // a journal's compaction, an undo disk's log
			p.add(dir, sandbox.Read|sandbox.Write|sandbox.Create)
		}
	}
	if nbdHost {
		// A reconnection after a reboot resolves the server's name again.
		for _, f := range []string{"/etc/hosts", "/etc/resolv.conf", "/etc/nsswitch.conf"} {
			p.add(f, sandbox.Read)
		}
	}
	if ci := cfg.CloudInit; ci != nil {
		// The NoCloud seed is built from these at every boot, a reboot's
		// included (seen: a guest reset in the lab, then "user-data
		// cannot be read: permission denied" and vio gave up).
		for _, f := range []string{ci.UserData, ci.MetaData, ci.NetworkConfig, ci.VendorData} {
			p.add(f, sandbox.Read)
		}
	}
	if cfg.RNG != nil && cfg.RNG.Src != "" {
		p.add(cfg.RNG.Src, sandbox.Read)
	}
	for _, c := range []config.Console{cfg.Serial, cfg.Console} {
		switch c.Mode {
		case config.ModeFile:
			p.add(c.File, sandbox.Write)
		case config.ModeSocket:
			p.socket(c.Socket)
		}
	}
	if cfg.Vsock != nil {
		p.socket(cfg.Vsock.Socket)
	}
	for _, n := range cfg.Net {
		if n.VhostUser {
			p.socket(n.VhostSocket) // as for a vhost-user disk
			continue
		}
		// A guest reboot rebuilds the NIC's interposers.
		p.add(n.Firewall, sandbox.Read)
		p.add(n.Pcap, sandbox.Read|sandbox.Write)
	}
	p.host(apiSocket, obs)
	for _, a := range allow {
		p.add(a, sandbox.Read|sandbox.Write|sandbox.Create)
	}
	p.openFiles()
	return sandbox.Policy{Rules: p.rules}
}

// servePolicy is what a confined `vio serve` may open: the VMs it will
// build are not known yet, so their files must be beneath the paths of
// --sandbox-allow; without any, the filesystem stays open (seccomp only).
func servePolicy(apiSocket string, obs observeFlags, allow []string) sandbox.Policy {
	if len(allow) == 0 {
		return sandbox.Policy{NoLandlock: true}
	}
	var p policyBuilder
	for _, a := range allow {
		p.add(a, sandbox.Read|sandbox.Write|sandbox.Create)
	}
	p.add("/dev/urandom", sandbox.Read)
	p.host(apiSocket, obs)
	return sandbox.Policy{Rules: p.rules}
}

type policyBuilder struct{ rules []sandbox.Rule }

func (p *policyBuilder) add(path string, a sandbox.Access) {
	if path == "" {
		return
	}
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	p.rules = append(p.rules, sandbox.Rule{Path: path, Access: a})
}

// socket allows binding the UNIX socket at path afresh (a VM rebuilt
// after a reboot binds its console and vsock sockets again, removing the
// old file first) and removing it at exit. Landlock grants that per
// directory, so it is the socket's directory.
func (p *policyBuilder) socket(path string) {
	if path != "" {
		p.add(filepath.Dir(path), sandbox.Create)
	}
}

// host adds what every confined vio needs besides its VM's files: KVM,
// what a VM build reads of /proc, and the sockets it removes at exit.
func (p *policyBuilder) host(apiSocket string, obs observeFlags) {
	p.add("/dev/kvm", sandbox.Read|sandbox.Write)
	p.add("/dev/net/tun", sandbox.Read|sandbox.Write)   // TAPs by name, hot-plugged too
	p.add("/dev/vhost-net", sandbox.Read|sandbox.Write) // vhost=on NICs, hot-plugged too (skipped where absent)
	p.add("/proc/meminfo", sandbox.Read)                // config.Validate, at every build
	p.add("/proc/cpuinfo", sandbox.Read)                // kvm.System.IsPVM
	p.socket(apiSocket)
	if path, ok := strings.CutPrefix(obs.metrics, "unix:"); ok {
		p.socket(path)
	}
	if obs.metrics != "" {
		// The process collector reads the process's own /proc files.
		p.add("/proc/self", sandbox.Read)
		p.add("/proc/stat", sandbox.Read)
	}
}

// openFiles adds the files and devices the process holds open, with the
// access they were opened with: a VM rebuilt after a guest reboot opens
// the same ones again.
func (p *policyBuilder) openFiles() {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd <= 2 {
			continue // stdio: the user's terminal, already open for good
		}
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil || !filepath.IsAbs(target) || strings.HasSuffix(target, " (deleted)") ||
			strings.HasPrefix(target, "/proc/") || strings.HasPrefix(target, "/dev/pts/") || strings.HasPrefix(target, "/memfd:") {
			continue
		}
		fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		if err != nil || fl&unix.O_PATH != 0 {
			continue
		}
		var a sandbox.Access
		switch fl & unix.O_ACCMODE {
		case unix.O_RDONLY:
			a = sandbox.Read
		case unix.O_WRONLY:
			a = sandbox.Write
		case unix.O_RDWR:
			a = sandbox.Read | sandbox.Write
		default:
			continue
		}
		var st unix.Stat_t
		if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT == unix.S_IFDIR {
			continue
		}
		p.add(target, a)
	}
}
