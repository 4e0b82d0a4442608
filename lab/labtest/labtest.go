// Package labtest lets a package's tests run where a real KVM is. Its Main
// is the package's TestMain: on a host with hardware virtualization, or
// already inside the lab, the tests just run; otherwise it boots the lab once
// and runs the same test binary there, so all tests of the package share one
// L1 boot (lab boots are the expensive part; batch scenarios per package).
//
// The guest half of a scenario is an ordinary program (a busybox script or
// a Go binary) in an initramfs the test builds; the host half checks what
// the guest reports.
package labtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/internal/suite"
	"github.com/viovmm/vio/lab"
	"github.com/viovmm/vio/lab/assets"
	"github.com/viovmm/vio/lab/initramfs"
)

// Inside reports whether this process runs inside the lab VM.
func Inside() bool { return os.Getenv("VIO_LAB_INSIDE") == "1" }

// Main runs m where a real KVM is and exits with Run's status.
func Main(m *testing.M) { os.Exit(Run(m)) }

// Run runs m where a real KVM is and returns the exit status. Set
// VIO_LAB=off to skip the package's tests on a host without hardware
// virtualization; the skip is announced in the form vio-suite reports.
func Run(m *testing.M) int {
	if Inside() || lab.HardwareKVM() || listing(os.Args[1:]) {
		return m.Run()
	}
	return relaunchUnlessOff("this host has no hardware virtualization", 0)
}

// labMachine is the L1 machine the lab boots: the default one, or the one
// RunOn was given.
var labMachine lab.Config

// RunOn is Run on a lab machine of the caller's: an emulated IOMMU, NVMe
// controllers (lab.Config's IOMMU and NVMe; labtest sets Timeout and
// Env). Where the tests run directly (a host with hardware KVM, or
// inside the lab), that machine is the host as it is.
func RunOn(m *testing.M, machine lab.Config) int {
	labMachine = machine
	return Run(m)
}

// MainKVM is Main for packages whose tests need a /dev/kvm but not a fast
// one: tiny hand-made guests of a few thousand instructions run fine on a
// PVM-only KVM. They run directly where /dev/kvm can be opened and in the
// lab where it cannot, so that the layer never vanishes from the suite.
func MainKVM(m *testing.M) { os.Exit(RunKVM(m)) }

// RunKVM is MainKVM returning the exit status.
func RunKVM(m *testing.M) int {
	if Inside() || kvmOpens() || fuzzing(os.Args[1:]) || listing(os.Args[1:]) {
		return m.Run()
	}
	return relaunchUnlessOff("this host has no usable /dev/kvm", tinyGuestBudget)
}

// tinyGuestBudget bounds a lab run of MainKVM's packages: their hand-made
// guests take a minute or two together even on a loaded machine, so a run
// still going after this has hung, and should say so long before go test's
// package deadline (55 minutes in the suite) ends it.
const tinyGuestBudget = 10 * time.Minute

// fuzzing reports whether the test binary was started to fuzz (or as a
// fuzz worker) with no ordinary test selected: fuzz targets exercise pure
// Go parsers, which need no KVM and would only crawl inside the lab.
func fuzzing(args []string) bool {
	fuzz, noTests := false, false
	for _, a := range args {
		switch {
		case strings.HasPrefix(a, "-test.fuzzworker"):
			return true
		case strings.HasPrefix(a, "-test.fuzz=") && a != "-test.fuzz=":
			fuzz = true
		case a == "-test.run=^$":
			noTests = true
		}
	}
	return fuzz && noTests
}

func kvmOpens() bool {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

func relaunchUnlessOff(why string, budget time.Duration) int {
	if os.Getenv("VIO_LAB") == "off" {
		fmt.Printf("%s%s and VIO_LAB=off: none of this package's tests ran\n", suite.LayerSkipPrefix, why)
		fmt.Println("PASS")
		return 0
	}
	return relaunch(why, budget)
}

// relaunch runs this test binary in the lab. The binary inside gets a
// deadline of its own, a margin before the lab's: a test that hangs there
// then fails the Go way, naming itself and printing every goroutine's
// stack. If the lab's deadline comes first anyway, L1 itself stopped
// running its programs (LAB.md's hazard), which is treated like a
// reported lockup: the tests that had not finished run once more in a
// fresh lab, saying so.
func relaunch(why string, budget time.Duration) int {
	return relaunchWith(why, budget, os.Args[1:], os.Stdout, os.Stderr)
}

// relaunchWith is relaunch for the test binary's arguments args, its
// output going to stdout and stderr.
func relaunchWith(why string, budget time.Duration, args []string, stdout, stderr io.Writer) int {
	ctx := context.Background()
	if _, err := assets.Ensure(ctx, assets.DefaultDir(), nil); err != nil {
		fmt.Fprintln(stderr, "labtest:", err)
		return 1
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(stderr, "labtest:", err)
		return 1
	}
	n, err := slotCount()
	if err != nil {
		fmt.Fprintln(stderr, "labtest:", err)
		return 1
	}
	waitStart := time.Now()
	release, err := takeSlot(slotDir(), n)
	if err != nil {
		fmt.Fprintln(stderr, "labtest:", err)
		return 1
	}
	defer release()
	if waited := time.Since(waitStart); waited > time.Second {
		fmt.Fprintf(stdout, "labtest: waited %v for a lab slot (at most %d labs run at once on this host; VIO_LAB_SLOTS)\n", waited.Round(time.Second), n)
	}
	start := time.Now()
	labDeadline, testDeadline := deadlines(args, budget, time.Since(binaryStart))
	var seen progress
	fmt.Fprintf(stdout, "labtest: %s; running %s in the lab\n", why, filepath.Base(self))
	err = runInLab(ctx, self, args, labDeadline, testDeadline, io.MultiWriter(stdout, &seen), stderr)
	failedBefore := false
	if errors.Is(err, lab.ErrL1Locked) || errors.Is(err, lab.ErrL1Wedged) || errors.Is(err, lab.ErrTimeout) || errors.Is(err, lab.ErrL1Died) {
		// The emulated machine wedged or died under the tests, not the
		// tests themselves (their own deadline would have fired first,
		// and a test cannot stop L1's kernel).
		fmt.Fprintf(stdout, "labtest: %v\nlabtest: L1 stopped running the tests (its kernel locked up or died, or its test binary could not even time out)\n", err)
		var done bool
		err, failedBefore, done = retryUnfinished(ctx, self, args, &seen, min(labDeadline, goDeadline(args)-30*time.Second-time.Since(binaryStart)), err, stdout, stderr)
		if done {
			fmt.Fprintf(stdout, "labtest: lab runs took %v\n", time.Since(start).Round(100*time.Millisecond))
			if failedBefore {
				return 1
			}
			return 0
		}
	}
	fmt.Fprintf(stdout, "labtest: lab run took %v\n", time.Since(start).Round(100*time.Millisecond))
	var exit *lab.ExitError
	switch {
	case errors.As(err, &exit):
		return exit.Code
	case err != nil:
		fmt.Fprintln(stderr, "labtest:", err)
		return 1
	case failedBefore:
		return 1
	}
	return 0
}

// runInLab runs the test binary self with args in a fresh lab.
func runInLab(ctx context.Context, self string, args []string, labDeadline, testDeadline time.Duration, stdout, stderr io.Writer) error {
	cfg := labMachine
	cfg.Timeout, cfg.Env = labDeadline, passEnv()
	if os.Getenv("VIO_LAB_VERBOSE") != "" {
		cfg.Verbose = stderr
	}
	argv := append([]string{self}, withTimeout(args, testDeadline)...)
	return lab.Exec(ctx, cfg, argv, stdout, stderr)
}

// minRetry is the least time worth a second lab: a boot and a test or two.
const minRetry = 2 * time.Minute

// retryUnfinished runs, once, in a fresh lab and within left, the tests
// that the wedged run never finished; it returns the retry's error (or
// wedged, the first run's, when there is no retry), whether a test of the
// first run failed, and done when every test had finished before L1
// wedged, so nothing was left to run.
func retryUnfinished(ctx context.Context, self string, args []string, seen *progress, left time.Duration, wedged error, stdout, stderr io.Writer) (err error, failedBefore, done bool) {
	if left < minRetry {
		fmt.Fprintf(stdout, "labtest: go test's deadline leaves %v, too little to run %s again\n", left.Round(time.Second), filepath.Base(self))
		return wedged, false, false
	}
	retryArgs := args
	what := "all of " + filepath.Base(self)
	if names, lerr := listTests(args); lerr == nil {
		var rest []string
		rest, failedBefore = seen.unfinished(names)
		if len(rest) == 0 {
			fmt.Fprintln(stdout, "labtest: every test had finished before L1 wedged; nothing to run again")
			return nil, failedBefore, true
		}
		retryArgs = append(withoutRun(args), "-test.run=^("+strings.Join(rest, "|")+")$")
		what = fmt.Sprintf("the %d tests that did not finish (%s)", len(rest), strings.Join(rest, " "))
	}
	fmt.Fprintf(stdout, "labtest: running %s in a fresh lab once more, within %v\n", what, left.Round(time.Second))
	return runInLab(ctx, self, retryArgs, left, left-margin(left), stdout, stderr), failedBefore, false
}

// deadlines gives the lab run and the test binary inside it their
// deadlines: the lab's is what is left of go test's own (-test.timeout,
// default 10m) after spent, less 30 s, so that its clear message comes out
// before go test kills us, and no more than budget when one is given; the
// binary's is a margin shorter, long enough for a timed-out test's stack
// dump to reach us. spent is the time this binary has already used (waiting
// for a lab slot); at least a minute is always given.
func deadlines(args []string, budget, spent time.Duration) (labDeadline, testDeadline time.Duration) {
	d := goDeadline(args)
	if d > 2*time.Minute {
		d -= 30 * time.Second
	}
	d = max(d-spent, min(d, time.Minute))
	if budget > 0 && budget < d {
		d = budget
	}
	return d, d - margin(d)
}

// margin is how long before a lab deadline d the test binary's own
// deadline falls.
func margin(d time.Duration) time.Duration {
	m := max(d/10, time.Minute)
	if m > d/2 {
		m = d / 2
	}
	return m
}

// goDeadline is the -test.timeout go test gave this binary.
func goDeadline(args []string) time.Duration {
	d := 10 * time.Minute
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "-test.timeout="); ok {
			if t, err := time.ParseDuration(v); err == nil && t > 0 {
				d = t
			}
		}
	}
	return d
}

// withTimeout returns args with -test.timeout set to d.
func withTimeout(args []string, d time.Duration) []string {
	out := make([]string, 0, len(args)+1)
	for _, a := range args {
		if !strings.HasPrefix(a, "-test.timeout=") {
			out = append(out, a)
		}
	}
	return append(out, "-test.timeout="+d.String())
}

// passEnv forwards the variables tests may be steered with.
func passEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "VIO_") || strings.HasPrefix(kv, "GO") {
			env = append(env, kv)
		}
	}
	return env
}

// Assets returns the lab's guest kernel and friends, failing the test if
// they were never fetched (Main fetches them before booting the lab).
func Assets(t testing.TB) *assets.Assets {
	t.Helper()
	a, err := assets.Load(assets.DefaultDir())
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// Guest is the guest half of a scenario: a busybox shell script run as
// init once the kernel modules are loaded, and host programs (fio,
// mkfs.ext4 ...) it needs.
//
// Programs with their shared libraries can be large (Debian's fio pulls in
// 80 MB of Ceph and ICU libraries), and an initramfs that size takes minutes
// to unpack at the lab's emulated speed. So they travel on a separate,
// read-only ext4 "tools" disk that the guest mounts at /tools; the
// initramfs holds small wrappers at the programs' usual paths that start
// them through the dynamic loader with /tools' library directories.
//
// Inline puts the programs in the initramfs itself instead, at their host
// paths with their libraries: for a guest that must have no virtio disk
// at all, and small programs only (iperf3 adds 8 MB).
type Guest struct {
	Script   string
	Modules  []string
	Programs []string // absolute host paths; callable by those paths in the guest
	Inline   bool
}

// toolsPrelude mounts the tools disk, which is always the guest's last
// virtio disk.
const toolsPrelude = `mkdir -p /tools && mount -t ext4 -o ro "$(ls /dev/vd* | tail -1)" /tools ||
	{ echo "labtest: cannot mount the tools disk"; poweroff -f; }
`

// Build writes the guest's initramfs into a temporary directory and
// returns its path, and the tools disk image ("" without Programs), which
// must be attached as the VM's last virtio disk.
func (g Guest) Build(t testing.TB) (initrd, tools string) {
	t.Helper()
	initrd, tools, err := g.BuildIn(Assets(t), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return initrd, tools
}

// BuildIn is Build for callers outside tests: it writes into dir.
func (g Guest) BuildIn(a *assets.Assets, dir string) (initrd, tools string, err error) {
	b := initramfs.New()
	b.Busybox(a.Busybox)
	mods := g.Modules
	script := g.Script
	if g.Inline {
		for _, p := range g.Programs {
			b.Executable(p, p)
		}
	} else if len(g.Programs) > 0 {
		mods = append(mods, "virtio_pci", "virtio_blk", "ext4")
		script = toolsPrelude + script
		tools = filepath.Join(dir, "tools.img")
		libs, err := buildTools(g.Programs, filepath.Join(dir, "tools"), tools)
		if err != nil {
			return "", "", err
		}
		libPath := strings.Join(libs, ":")
		for _, p := range g.Programs {
			wrapper := fmt.Sprintf("#!/bin/sh\nexec /tools%s --library-path %s /tools%s \"$@\"\n",
				initramfs.Interpreter(p), libPath, p)
			if initramfs.Interpreter(p) == "" {
				// A static program (or a script) runs as it is.
				wrapper = fmt.Sprintf("#!/bin/sh\nexec /tools%s \"$@\"\n", p)
			}
			b.File(p, []byte(wrapper), 0o755)
		}
	}
	if len(mods) > 0 {
		m, err := initramfs.OpenModules(a.ModulesDir)
		if err != nil {
			return "", "", err
		}
		b.Modules(m, mods...)
	}
	b.File("/guest.sh", []byte(script), 0o755)
	b.Init("/bin/sh", "/guest.sh")
	initrd = filepath.Join(dir, "initramfs.cpio.gz")
	if err := b.WriteFile(initrd); err != nil {
		return "", "", err
	}
	return initrd, tools, nil
}

// buildTools collects the programs and their libraries into root, makes
// an ext4 image of it and returns the library directories, as the guest
// sees them under /tools.
func buildTools(programs []string, root, image string) ([]string, error) {
	tb := initramfs.New()
	for _, p := range programs {
		tb.Executable(p, p)
	}
	if err := tb.WriteDir(root); err != nil {
		return nil, err
	}
	out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "viotools", "-d", root, image, "512M").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("making the tools disk: mkfs.ext4: %v\n%s", err, out)
	}
	seen := map[string]bool{}
	var dirs []string
	for _, p := range tb.Paths() {
		if strings.Contains(path.Base(p), ".so") && !seen[path.Dir(p)] {
			seen[path.Dir(p)] = true
			dirs = append(dirs, "/tools"+path.Dir(p))
		}
	}
	return dirs, nil
}

// Initramfs builds a guest with just a script and kernel modules.
func Initramfs(t testing.TB, script string, modules ...string) string {
	t.Helper()
	initrd, _ := Guest{Script: script, Modules: modules}.Build(t)
	return initrd
}
