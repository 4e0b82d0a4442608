// Package lab runs commands on a real, hardware-style KVM when the host
// has none: it boots a Linux "L1" under QEMU's software emulation with an
// emulated AMD SVM, loads kvm-amd there, shows it the host's filesystem at
// the same paths, and runs the command inside as root with a working
// /dev/kvm. Guests of that command (L2) are ordinary KVM guests.
//
// The lab is a test rig beside vio, not part of it. It exists because this
// project's machines expose a PVM /dev/kvm that cannot boot stock Linux in
// useful time (shared/LAB.md).
package lab

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/viovmm/vio/lab/assets"
	"github.com/viovmm/vio/lab/initramfs"
)

// Config describes one lab run.
type Config struct {
	CPUs      int           // L1 vCPUs (default 2)
	MemoryMiB int           // L1 RAM (default 4096)
	Timeout   time.Duration // whole run, boot included (default 10m)
	// BootTimeout bounds L1's boot (default 2m). A stalled boot is retried
	// once, since no command has run yet.
	BootTimeout time.Duration
	// WedgeTimeout is how long L1 may go without its heartbeat (a line
	// its init prints every 20 s while the command runs) before it counts
	// as wedged and is killed (default 5m). A wedged L1 runs nothing, not
	// even its kernel's lockup watchdog, so only silence shows it.
	WedgeTimeout time.Duration
	IOMMU        bool   // q35 with an emulated Intel IOMMU, for VFIO
	NVMe         []NVMe // emulated NVMe controllers for L1
	// NICPair gives L1 two emulated NICs joined by a QEMU hub, a wire
	// between them that leaves the lab nowhere: an Intel 82574L (e1000e,
	// MAC NICPairPassMAC) to bind to vfio-pci and pass through, and an
	// 82540EM (e1000, MAC NICPairPeerMAC) that L1's own driver takes, to
	// put on a bridge. A guest of L1 that has the first reaches L1's
	// network through it (docs/failover.md). It implies IOMMU.
	NICPair bool
	Dir     string    // working directory of the command; writable in L1 (default: current)
	Shares  []string  // further host directories made writable in L1
	Env     []string  // extra KEY=VALUE for the command
	Verbose io.Writer // if set, L1's console is copied here as it runs
	QEMU    string    // qemu-system-x86_64 binary (default: from PATH)
}

// NVMe is one emulated NVMe controller given to L1.
type NVMe struct {
	Image  string // backing raw image (created, sparse, if missing)
	Size   int64  // size to create the image with when missing
	Serial string
	VFs    int // SR-IOV virtual functions (0: a plain controller)
}

// ExitError is a command that ran in the lab and exited non-zero.
type ExitError struct{ Code int }

func (e *ExitError) Error() string {
	return fmt.Sprintf("command exited with status %d in the lab", e.Code)
}

// ErrTimeout is returned when the run outlived its Config.Timeout; L1 has
// been killed.
var ErrTimeout = errors.New("lab: timed out")

// modulesL1 are what L1 needs: 9p for the host filesystem, overlayfs for a
// writable view of it, kvm-amd, and what lab scenarios use (TAP, bridges,
// veth, VFIO, NVMe, loop devices, the e1000 of NICPair; not e1000e, so
// that NICPair's NIC to pass through stays free for vfio-pci).
var modulesL1 = []string{
	"9p", "9pnet_virtio", "virtio_pci", "overlay", "kvm_amd", "tun", "bridge", "veth",
	"vfio_pci", "vfio_iommu_type1", "nvme", "loop", "vhost_net", "vhost_vsock", "e1000",
}

// The MAC addresses of NICPair's NICs.
const (
	NICPairPassMAC = "52:54:00:fa:11:0e" // the e1000e to pass through
	NICPairPeerMAC = "52:54:00:fa:11:01" // L1's e1000
)

// l1Init runs as L1's PID 1 once the modules are in. It reports progress on
// the console with "@@vio-lab" markers that the host parses; the command's
// stdout and stderr have serial ports of their own (ttyS1, ttyS2).
const l1Init = `#!/bin/sh
say() { echo "@@vio-lab $*" > /dev/ttyS0; }
die() { say "error $*"; poweroff -f; }
mkdir -p /lower /newroot /scratch /ctl
P=trans=virtio,version=9p2000.L,msize=1048576
mount -t 9p -o $P,ro,cache=loose hostroot /lower || die "cannot mount the host filesystem over 9p"
mount -t 9p -o $P ctl /ctl || die "cannot mount the control share"
mount -t tmpfs -o size=80% scratch /scratch
mkdir -p /scratch/upper /scratch/work
mount -t overlay -o lowerdir=/lower,upperdir=/scratch/upper,workdir=/scratch/work overlay /newroot ||
	die "cannot mount an overlay over the host filesystem"
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm /newroot/run/vio-lab
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
mount -t tmpfs tmpfs /newroot/run
mkdir -p /newroot/run/vio-lab /newroot/run/netns
mount --bind /ctl /newroot/run/vio-lab
while read tag dir; do
	mkdir -p "/newroot$dir"
	mount -t 9p -o $P "$tag" "/newroot$dir" || die "cannot mount $dir writable"
done < /ctl/shares
test -c /newroot/dev/kvm || die "kvm-amd loaded but /dev/kvm is missing (no SVM in L1?)"
# Loopback up, as on any booted machine: tests serve on 127.0.0.1.
chroot /newroot ip link set lo up || echo "vio-lab: loopback not brought up" > /dev/ttyS0
stty -F /dev/ttyS1 raw -echo
stty -F /dev/ttyS2 raw -echo
say ready
# Heartbeat: a wedged L1 runs nothing, not even its kernel's watchdog, so
# the host knows it only by the silence of this loop.
( while sleep 20; do say alive; done ) &
chroot /newroot /bin/sh /run/vio-lab/run.sh </dev/null >/dev/ttyS1 2>/dev/ttyS2
rc=$?
sync
say "exit $rc"
poweroff -f
`

const l1Version = "5" // bump when l1Init or modulesL1 change

// l1Image returns the L1 initramfs, building it into the asset cache once.
func l1Image(a *assets.Assets) (string, error) {
	h := sha256.Sum256([]byte(l1Version + l1Init + strings.Join(modulesL1, ",") + a.KernelVersion))
	file := filepath.Join(a.Dir, "l1-"+hex.EncodeToString(h[:6])+".cpio.gz")
	if _, err := os.Stat(file); err == nil {
		return file, nil
	}
	mods, err := initramfs.OpenModules(a.ModulesDir)
	if err != nil {
		return "", err
	}
	b := initramfs.New()
	b.Busybox(a.Busybox)
	b.Modules(mods, modulesL1...)
	b.File("/lab-init", []byte(l1Init), 0o755)
	b.Init("/lab-init")
	return file, b.WriteFile(file)
}

// Exec runs argv in the lab and returns when it has ended. The command's
// output streams to stdout and stderr as it runs. A non-zero exit of the
// command is an *ExitError; any other error means the lab itself failed.
func Exec(ctx context.Context, cfg Config, argv []string, stdout, stderr io.Writer) error {
	if len(argv) == 0 {
		return errors.New("lab: no command to run")
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = 2
	}
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = 4096
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Minute
	}
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = 2 * time.Minute
	}
	if cfg.QEMU == "" {
		cfg.QEMU = "qemu-system-x86_64"
	}
	if _, err := exec.LookPath(cfg.QEMU); err != nil {
		return fmt.Errorf("lab: %s is not installed: run `%s`", cfg.QEMU, assets.MissingHostTools())
	}
	if cfg.Dir == "" {
		var err error
		if cfg.Dir, err = os.Getwd(); err != nil {
			return err
		}
	}
	a, err := assets.Ensure(ctx, assets.DefaultDir(), nil)
	if err != nil {
		return err
	}
	l1, err := l1Image(a)
	if err != nil {
		return fmt.Errorf("lab: building the L1 initramfs: %w", err)
	}
	ctl, err := os.MkdirTemp("", "vio-lab-ctl-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(ctl)
	if err := writeControl(ctl, cfg, argv); err != nil {
		return err
	}
	args, err := qemuArgs(cfg, a, l1, ctl)
	if err != nil {
		return err
	}

	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	for attempt := 1; ; attempt++ {
		err := boot(ctx, cfg, args, stdout, stderr)
		if errors.Is(err, errBootStalled) && attempt == 1 {
			// Seen in the lab: an L1 that never reaches its init. No
			// command has run yet, so one retry is safe; say so.
			fmt.Fprintf(stderr, "vio-lab: %v; retrying once\n", err)
			continue
		}
		return err
	}
}

// ErrL1Locked means L1's own kernel reported a CPU stuck for a minute or
// more (a soft lockup): the emulated machine has wedged (seen with nested
// SVM under TCG, see LAB.md) and would never report the command's status.
// L1 is killed at once instead of at the run's deadline; the command may
// have run partly, so only a caller that knows it can run it again (a test
// binary: labtest) retries.
var ErrL1Locked = errors.New("lab: L1's kernel locked up")

// ErrL1Died means L1 stopped (its QEMU exited) before the command reported
// its status: L1's kernel panicked (seen: "stack guard page was hit" in
// the nested-SVM path while an L2 ran, LAB.md's "L1 died mid-benchmark"),
// or QEMU itself failed. As with ErrL1Locked the command may have run
// partly, and only a caller that can run it again retries.
var ErrL1Died = errors.New("lab: L1 stopped without reporting the command's status")

// ErrL1Wedged means L1 went silent after its boot: no heartbeat for
// Config.WedgeTimeout. Seen in the lab: L1 stopped for 50 minutes with
// neither output nor a lockup report, until the run's deadline, which left
// no time for a retry. It is handled as ErrL1Locked is.
var ErrL1Wedged = errors.New("lab: L1 stopped running its programs")

// lockupSeconds is how long a stuck CPU is tolerated before ErrL1Locked: a
// loaded host can stall L1 for a while and make its watchdog complain
// once, but a real lockup keeps growing.
const lockupSeconds = 60

var softLockup = regexp.MustCompile(`soft lockup - CPU#\d+ stuck for (\d+)s`)

// errBootStalled means L1 did not reach its init in BootTimeout.
var errBootStalled = errors.New("lab: L1 did not finish booting")

func boot(ctx context.Context, cfg Config, args []string, stdout, stderr io.Writer) error {
	cmd := exec.Command(cfg.QEMU, args...)
	var qemuOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &qemuOut, &qemuOut
	pipes := make([]*os.File, 3) // console, stdout, stderr: read ends
	for i := range pipes {
		r, w, err := os.Pipe()
		if err != nil {
			return err
		}
		pipes[i] = r
		cmd.ExtraFiles = append(cmd.ExtraFiles, w)
		defer r.Close()
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("lab: starting %s: %w", cfg.QEMU, err)
	}
	for _, w := range cmd.ExtraFiles {
		w.Close() // QEMU holds them now; EOF arrives when it exits
	}

	con := &console{verbose: cfg.Verbose, ready: make(chan struct{}), locked: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); con.read(pipes[0]) }()
	go func() { defer wg.Done(); io.Copy(stdout, pipes[1]) }()
	go func() { defer wg.Done(); io.Copy(stderr, pipes[2]) }()
	waited := make(chan error, 1)
	go func() { wg.Wait(); waited <- cmd.Wait() }()

	bootTimer := time.NewTimer(cfg.BootTimeout)
	defer bootTimer.Stop()
	// The heartbeat is checked a few times per WedgeTimeout; a ticker
	// that fires this rarely costs nothing next to L1.
	wedge := cfg.WedgeTimeout
	if wedge == 0 {
		wedge = 5 * time.Minute
	}
	beat := time.NewTicker(max(wedge/5, 100*time.Millisecond))
	defer beat.Stop()
	var err, killed error
	// ready is closed once and stays so: after it fires it must leave the
	// select (nil), or the loop would spin on it for the whole run,
	// taking a host CPU from L1's emulated ones.
	ready := con.ready
wait:
	for {
		select {
		case err = <-waited:
			break wait
		case <-ready:
			ready = nil
			bootTimer.Stop()
		case <-con.locked:
			cmd.Process.Kill()
			<-waited
			return fmt.Errorf("%w after %v; L1 was killed%s", ErrL1Locked, time.Since(start).Round(100*time.Millisecond), con.tailLocked())
		case <-beat.C:
			if silent := con.silence(); silent > wedge {
				cmd.Process.Kill()
				<-waited
				return fmt.Errorf("%w: no heartbeat for %v, %v after L1 started; L1 was killed%s", ErrL1Wedged, silent.Round(time.Second), time.Since(start).Round(100*time.Millisecond), con.tailLocked())
			}
		case <-bootTimer.C:
			cmd.Process.Kill()
			<-waited
			return fmt.Errorf("%w within %v; L1 was killed%s", errBootStalled, cfg.BootTimeout, con.tailLocked())
		case <-ctx.Done():
			cmd.Process.Kill()
			err = <-waited
			killed = ctx.Err()
			break wait
		}
	}
	elapsed := time.Since(start).Round(100 * time.Millisecond)

	con.mu.Lock()
	defer con.mu.Unlock()
	switch {
	case con.exit != nil:
		if *con.exit != 0 {
			return &ExitError{Code: *con.exit}
		}
		return nil
	case errors.Is(killed, context.DeadlineExceeded):
		where := "before L1 finished booting"
		if con.isReady {
			where = "while the command ran"
		}
		return fmt.Errorf("%w after %v %s; L1 was killed%s", ErrTimeout, elapsed, where, con.tail())
	case killed != nil:
		return fmt.Errorf("lab: cancelled after %v; L1 was killed", elapsed)
	case con.failure != "":
		return fmt.Errorf("lab: L1 setup failed: %s%s", con.failure, con.tail())
	default:
		msg := strings.TrimSpace(qemuOut.String())
		if msg == "" && err != nil {
			msg = err.Error()
		}
		return fmt.Errorf("%w (after %v; QEMU: %q)%s", ErrL1Died, elapsed, msg, con.tail())
	}
}

// console parses L1's console for markers and keeps its last lines for
// error reports.
type console struct {
	verbose io.Writer
	ready   chan struct{} // closed at the "ready" marker
	locked  chan struct{} // closed when L1's kernel reports a lasting soft lockup

	mu       sync.Mutex
	lines    []string
	reports  []string // the headlines of L1's kernel reports, first ones kept
	isReady  bool
	lastSign time.Time // of the ready marker or the latest heartbeat
	isLocked bool
	exit     *int
	failure  string
}

var marker = regexp.MustCompile(`@@vio-lab (\w+) ?(.*)$`)

// kernelReport matches the lines that open or locate a report of L1's
// kernel (a BUG, an oops, a panic, a lockup, the faulting RIP). A report's
// call trace alone fills the console's tail, so these lines are kept
// apart: they are what says why L1 died.
var kernelReport = regexp.MustCompile(`BUG: |Kernel panic|kernel BUG|Oops|general protection|WARNING: |watchdog: |INFO: task|rcu: INFO|RIP: |stack guard page|Out of memory|invalid opcode|double fault`)

// maxReports caps the headlines kept: the first ones name the cause, the
// later ones repeat it.
const maxReports = 12

func (c *console) read(r io.Reader) {
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		line := strings.TrimRight(s.Text(), "\r")
		if c.verbose != nil {
			fmt.Fprintln(c.verbose, line)
		}
		c.mu.Lock()
		if m := softLockup.FindStringSubmatch(line); m != nil && !c.isLocked {
			if n, _ := strconv.Atoi(m[1]); n >= lockupSeconds {
				c.isLocked = true
				close(c.locked)
			}
		}
		if m := marker.FindStringSubmatch(line); m != nil {
			switch m[1] {
			case "ready":
				if !c.isReady {
					close(c.ready)
				}
				c.isReady = true
				c.lastSign = time.Now()
			case "alive":
				c.lastSign = time.Now()
			case "exit":
				if n, err := strconv.Atoi(strings.TrimSpace(m[2])); err == nil {
					c.exit = &n
				}
			case "error":
				c.failure = m[2]
			}
		} else {
			if kernelReport.MatchString(line) && len(c.reports) < maxReports {
				c.reports = append(c.reports, line)
			}
			c.lines = append(c.lines, line)
			if len(c.lines) > 40 {
				c.lines = c.lines[1:]
			}
		}
		c.mu.Unlock()
	}
}

// silence is how long L1 has gone without a heartbeat since it reported
// ready (zero before then: a boot has its own timeout).
func (c *console) silence() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.isReady {
		return 0
	}
	return time.Since(c.lastSign)
}

func (c *console) tailLocked() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.tail()
}

// tail needs c.mu held.
func (c *console) tail() string {
	var b strings.Builder
	if len(c.reports) > 0 {
		// One line, so that a summary that keeps a failure's key lines
		// (vio-suite's) keeps it whole.
		b.WriteString("\nL1's kernel reported: " + strings.Join(c.reports, " | "))
	}
	if len(c.lines) > 0 {
		b.WriteString("\nlast lines of L1's console:\n  " + strings.Join(c.lines, "\n  "))
	}
	return b.String()
}

// writeControl writes the per-run control directory L1 reads: the script
// that runs the command and the list of writable shares.
func writeControl(ctl string, cfg Config, argv []string) error {
	var sh strings.Builder
	sh.WriteString("export VIO_LAB_INSIDE=1\n")
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	if t := os.Getenv("TERM"); t != "" {
		env = append(env, "TERM="+t)
	}
	for _, kv := range append(env, cfg.Env...) {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !validEnvName(k) {
			return fmt.Errorf("lab: bad environment entry %q (want KEY=VALUE)", kv)
		}
		fmt.Fprintf(&sh, "export %s=%s\n", k, shellQuote(v))
	}
	fmt.Fprintf(&sh, "cd %s || exit 125\n", shellQuote(cfg.Dir))
	sh.WriteString("exec")
	for _, a := range argv {
		sh.WriteString(" " + shellQuote(a))
	}
	sh.WriteString("\n")
	if err := os.WriteFile(filepath.Join(ctl, "run.sh"), []byte(sh.String()), 0o644); err != nil {
		return err
	}
	var shares strings.Builder
	for i, d := range writableDirs(cfg) {
		fmt.Fprintf(&shares, "share%d %s\n", i, d)
	}
	return os.WriteFile(filepath.Join(ctl, "shares"), []byte(shares.String()), 0o644)
}

func writableDirs(cfg Config) []string {
	dirs := append([]string{cfg.Dir}, cfg.Shares...)
	var out []string
	seen := map[string]bool{}
	for _, d := range dirs {
		d, err := filepath.Abs(d)
		if err != nil || seen[d] || d == "/" {
			continue
		}
		seen[d] = true
		out = append(out, d)
	}
	return out
}

func validEnvName(k string) bool {
	if k == "" {
		return false
	}
	for i, r := range k {
		if !(r == '_' || r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || i > 0 && r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func virtfs(path, tag string, ro bool) string {
	s := "local,path=" + path + ",mount_tag=" + tag + ",security_model=none,multidevs=remap"
	if ro {
		s += ",readonly=on"
	}
	return s
}

func qemuArgs(cfg Config, a *assets.Assets, l1, ctl string) ([]string, error) {
	// no_timer_check: on a loaded host, TCG can be too slow for the
	// kernel's IO-APIC timer self-test, and with interrupt remapping
	// (--iommu) a failed test is a panic ("timer doesn't work through
	// Interrupt-remapped IO-APIC"), seen once in this project's suite.
	appendArgs := "console=ttyS0 quiet panic=-1 8250.nr_uarts=4 no_timer_check"
	machine := "pc"
	if cfg.NICPair {
		cfg.IOMMU = true // the NIC is for VFIO
	}
	q35 := cfg.IOMMU
	for _, n := range cfg.NVMe {
		q35 = q35 || n.VFs > 0
	}
	if q35 {
		machine = "q35"
	}
	args := []string{
		"-accel", "tcg,thread=multi", "-machine", machine, "-cpu", "max,+svm",
		"-smp", strconv.Itoa(cfg.CPUs), "-m", strconv.Itoa(cfg.MemoryMiB),
		"-nodefaults", "-display", "none", "-no-reboot", "-nic", "none",
		"-kernel", a.Kernel, "-initrd", l1,
		"-virtfs", virtfs("/", "hostroot", true),
		"-virtfs", virtfs(ctl, "ctl", false),
		// ExtraFiles become fds 3, 4, 5 in QEMU.
		"-serial", "file:/dev/fd/3", "-serial", "file:/dev/fd/4", "-serial", "file:/dev/fd/5",
	}
	for i, d := range writableDirs(cfg) {
		if _, err := os.Stat(d); err != nil {
			return nil, fmt.Errorf("lab: directory to share: %w", err)
		}
		args = append(args, "-virtfs", virtfs(d, fmt.Sprintf("share%d", i), false))
	}
	if cfg.IOMMU {
		args[3] = "q35,kernel-irqchip=split"
		args = append(args, "-device", "intel-iommu,intremap=on,caching-mode=on")
		appendArgs += " intel_iommu=on iommu=pt"
	}
	for i, n := range cfg.NVMe {
		if err := ensureImage(n); err != nil {
			return nil, err
		}
		serial := n.Serial
		if serial == "" {
			serial = fmt.Sprintf("vio-lab-nvme%d", i)
		}
		drive := fmt.Sprintf("nvme%d", i)
		args = append(args, "-drive", "file="+n.Image+",if=none,format=raw,id="+drive)
		if n.VFs == 0 {
			args = append(args, "-device", "nvme,serial="+serial+",drive="+drive)
			continue
		}
		// SR-IOV needs a PCIe port and a subsystem with a shared namespace;
		// each VF gets flexible queue and interrupt resources.
		rp, sub := fmt.Sprintf("rp%d", i), fmt.Sprintf("subsys%d", i)
		args = append(args,
			"-device", fmt.Sprintf("pcie-root-port,id=%s,chassis=%d", rp, i+1),
			"-device", fmt.Sprintf("nvme-subsys,id=%s", sub),
			"-device", fmt.Sprintf("nvme,serial=%s,subsys=%s,bus=%s,sriov_max_vfs=%d,sriov_vq_flexible=%d,sriov_vi_flexible=%d,max_ioqpairs=%d,msix_qsize=%d",
				serial, sub, rp, n.VFs, 2*n.VFs, n.VFs, 2*n.VFs+2, n.VFs+2),
			"-device", fmt.Sprintf("nvme-ns,drive=%s,nsid=1,shared=true,detached=false", drive))
	}
	if cfg.NICPair {
		// A hub repeats every frame of a port to the others: the two
		// NICs are on one wire. The e1000e, for its MSI-X (vio passes
		// MSI-X devices through; the 82540EM has no MSI at all).
		args = append(args,
			"-netdev", "hubport,id=nicpair0,hubid=7", "-device", "e1000e,netdev=nicpair0,mac="+NICPairPassMAC,
			"-netdev", "hubport,id=nicpair1,hubid=7", "-device", "e1000,netdev=nicpair1,mac="+NICPairPeerMAC)
	}
	args = append(args, "-append", appendArgs)
	return args, nil
}

func ensureImage(n NVMe) error {
	if n.Image == "" {
		return errors.New("lab: an NVMe controller needs an image file")
	}
	if _, err := os.Stat(n.Image); err == nil {
		return nil
	}
	if n.Size <= 0 {
		return fmt.Errorf("lab: NVMe image %s does not exist and no size was given to create it", n.Image)
	}
	f, err := os.Create(n.Image)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Truncate(n.Size)
}

// HardwareKVM reports whether this host's /dev/kvm is hardware-assisted
// (VMX or SVM, not PVM), so that tests can run on it directly.
func HardwareKVM() bool {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		return false
	}
	if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil {
		return false
	}
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "flags") {
			f := " " + l + " "
			return strings.Contains(f, " vmx ") || strings.Contains(f, " svm ")
		}
	}
	return false
}
