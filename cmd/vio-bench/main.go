// Command vio-bench measures vio side by side with QEMU on the same kernel,
// initramfs and guest size, interleaving runs (A, B, A, B ...) and quoting
// medians and ratios, because absolute speeds in the lab mean nothing.
//
//	go run ./cmd/vio-bench boot [-rounds N]   # boot time to /init, VMM memory overhead
//	go run ./cmd/vio-bench io [-rounds N]     # fio and iperf3 in the guest, KVM exits and interrupts per I/O
//	go run ./cmd/vio-bench emul [-rounds N]   # the same on IDE + e1000 against virtio, in vio and QEMU
//	go run ./cmd/vio-bench iommu [-rounds N]  # the same through each VMM's emulated VT-d, against vio without one
//	go run ./cmd/vio-bench vhostuser [-rounds N] # the same on vio serve-disk under QEMU's and vio's vhost-user front-ends
//	    io, emul, iommu, vhostuser also take -setups NAME,... (run only those) and
//	    -trace (exits per operation by reason, port, MMIO address and MSR)
//	go run ./cmd/vio-bench migrate [-rounds N] [-sizes 256,1024,2048] [-loads idle,dirty]
//	                                          # live migration over TCP: total time, downtime, bytes, iterations
//	go run ./cmd/vio-bench qos [-rounds N]    # vio serve-disk's cross-VM QoS: three front-ends with reservation,
//	                                          # weight, limit on a throttled file; rates against mclock.Allocate
//
// On a host without hardware virtualization it runs itself inside the
// lab, except qos, which needs no guest and runs on the host; qos exits
// 1 when a QoS property fails in the medians.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/viovmm/vio/lab"
	"github.com/viovmm/vio/lab/assets"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	rounds := fs.Int("rounds", 3, "interleaved rounds per VMM")
	mem := fs.Int("memory", 256, "guest RAM in MiB")
	sizes := fs.String("sizes", "256,1024,2048", "migrate: guest sizes in MiB")
	loads := fs.String("loads", "idle,dirty", "migrate: guest loads (idle: a shell that sleeps; dirty: migguest)")
	fs.BoolVar(&traceExits, "trace", false, "io, emul, iommu, vhostuser: count each workload's exits by reason, port, MMIO address and MSR (KVM tracepoints' histograms) and print them per operation")
	fs.StringVar(&setupFilter, "setups", "", "io, emul, iommu, vhostuser: run only these setups (comma-separated names, as in the table)")
	fs.StringVar(&variants, "variants", "", "io, emul, iommu, vhostuser: also run copies of setups with an environment variable set, as SETUP+VAR=VALUE,... (an A/B of one change in one lab run)")
	timeout := fs.Duration("timeout", 0, "stop starting guests after this long and print what was measured (default: enough for every run asked for on a loaded machine)")
	fs.Parse(os.Args[2:])
	perRun, ok := perRunBudget[os.Args[1]]
	if !ok || *rounds < 1 {
		usage()
	}
	setups := 4 // runs per round
	var migSizes []int
	migLoads := strings.Split(*loads, ",")
	if os.Args[1] == "migrate" {
		for _, s := range strings.Split(*sizes, ",") {
			n, err := strconv.Atoi(s)
			if err != nil || n < 64 {
				usage()
			}
			migSizes = append(migSizes, n)
		}
		for _, l := range migLoads {
			if l != "idle" && l != "dirty" {
				usage()
			}
		}
		setups = 2 * len(migSizes) * len(migLoads)
	}
	if os.Args[1] == "qos" {
		setups = 1 // one daemon and its three front-ends a round
	}
	if *timeout <= 0 {
		*timeout = time.Duration(*rounds*setups) * perRun
	}
	b := &budget{deadline: time.Now().Add(*timeout), perRun: perRun}
	var err error
	switch os.Args[1] {
	case "qos":
		err = benchQoS(b, *rounds)
	case "boot":
		err = inLab(*timeout, func(e *env) error { return benchBoot(e, b, *rounds, *mem) })
	case "io":
		err = inLab(*timeout, func(e *env) error { return benchIO(e, b, *rounds, *mem) })
	case "emul":
		err = inLab(*timeout, func(e *env) error { return benchEmulated(e, b, *rounds, *mem) })
	case "iommu":
		err = inLab(*timeout, func(e *env) error { return benchIOMMU(e, b, *rounds, *mem) })
	case "vhostuser":
		err = inLab(*timeout, func(e *env) error { return benchVhostUser(e, b, *rounds, *mem) })
	case "migrate":
		err = inLab(*timeout, func(e *env) error { return benchMigrate(e, b, *rounds, migSizes, migLoads) })
	}
	var exit *lab.ExitError
	if errors.As(err, &exit) {
		os.Exit(exit.Code)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "vio-bench:", err)
		os.Exit(1)
	}
}

// Flags the I/O benchmarks read.
var (
	traceExits  bool
	setupFilter string
	variants    string
)

func usage() {
	fmt.Fprintln(os.Stderr, "usage: vio-bench boot|io|emul|iommu|vhostuser [-rounds N] [-memory MiB] [-timeout D] [-setups a,b] [-variants SETUP+VAR=VALUE,...] [-trace]")
	fmt.Fprintln(os.Stderr, "       vio-bench migrate [-rounds N] [-sizes MiB,...] [-loads idle,dirty] [-timeout D]")
	fmt.Fprintln(os.Stderr, "       vio-bench qos [-rounds N] [-timeout D]")
	os.Exit(2)
}

// perRunBudget is how long one guest run of each benchmark may take on a
// loaded 2-core machine inside the lab (nominally a tenth of it). The
// default -timeout gives every run asked for (up to four setups a round;
// migrate: two VMMs per size and load) its budget. A migrate run is one
// VMM's pair of processes: the guest's boot and one migration, which
// takes 20 to 60 s for a 256 MiB guest in the lab (docs/migration.md).
// A qos run is one round on the host: about 20 s of phases and the
// daemon's start and stop.
var perRunBudget = map[string]time.Duration{"boot": 2 * time.Minute, "io": 6 * time.Minute, "emul": 6 * time.Minute, "iommu": 6 * time.Minute, "vhostuser": 6 * time.Minute, "migrate": 8 * time.Minute, "qos": 2 * time.Minute}

// labNeeds is what a benchmark needs in the lab beyond vio and itself.
type labNeeds struct {
	memoryMiB int               // L1 RAM (0: the lab's default)
	programs  map[string]string // env var → Go package, built static on the host for the guest
}

// needs: migrate runs two VMMs of a 2 GiB guest at once (each faults in
// the RAM the guest touched), and its dirtying guest runs migguest.
var needs = map[string]labNeeds{
	"migrate": {memoryMiB: 6144, programs: map[string]string{"VIO_MIGGUEST": "./e2e/testdata/migguest"}},
}

// budget spreads the run's time over its guests: each gets at most
// perRun, and none starts once too little is left for it, so a run cut
// short still ends in time to print what it measured.
type budget struct {
	deadline time.Time
	perRun   time.Duration
}

// next returns the context for the next guest run, or an error when the
// remaining time cannot fit one.
func (b *budget) next() (context.Context, context.CancelFunc, error) {
	left := time.Until(b.deadline)
	if left < b.perRun/4 {
		return nil, nil, fmt.Errorf("%w (%v left)", errBudget, left.Round(time.Second))
	}
	ctx, cancel := context.WithTimeout(context.Background(), min(left, b.perRun))
	return ctx, cancel, nil
}

// env is what a benchmark needs where it runs.
type env struct {
	vio    string // vio binary
	qemu   string
	assets *assets.Assets
	work   string // scratch directory
}

// inLab prepares the binaries and assets on the host, then runs f where a
// real KVM is: here, or inside the lab.
// The lab gets the benchmark's own timeout and a margin for booting and
// for printing the tables after a cut-short run.
func inLab(timeout time.Duration, f func(*env) error) error {
	n := needs[os.Args[1]]
	if os.Getenv("VIO_LAB_INSIDE") == "1" || lab.HardwareKVM() {
		a, err := assets.Load(assets.DefaultDir())
		if err != nil {
			return err
		}
		qemu, err := exec.LookPath("qemu-system-x86_64")
		if err != nil {
			return errors.New("qemu-system-x86_64 is not installed: run scripts/setup-host")
		}
		work, err := os.MkdirTemp("", "vio-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(work)
		return f(&env{vio: os.Getenv("VIO_BIN"), qemu: qemu, assets: a, work: work})
	}
	ctx := context.Background()
	if _, err := assets.Ensure(ctx, assets.DefaultDir(), nil); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "vio-bench-bin-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	vio := filepath.Join(dir, "vio")
	self := filepath.Join(dir, "vio-bench")
	for bin, pkg := range map[string]string{vio: "./cmd/vio", self: "./cmd/vio-bench"} {
		if err := goBuild(bin, pkg); err != nil {
			return err
		}
	}
	env := []string{"VIO_BIN=" + vio}
	for name, pkg := range n.programs {
		bin := filepath.Join(dir, filepath.Base(pkg))
		if err := buildStatic(bin, pkg); err != nil {
			return err
		}
		env = append(env, name+"="+bin)
	}
	fmt.Printf("vio-bench: no hardware KVM here; running in the lab (%d host CPUs)\n", runtime.NumCPU())
	return lab.Exec(ctx, lab.Config{Timeout: timeout + 3*time.Minute, MemoryMiB: n.memoryMiB, Env: env}, append([]string{self}, os.Args[1:]...), os.Stdout, os.Stderr)
}

// goBuild builds the package pkg (a path from the repository root) into
// bin.
func goBuild(bin, pkg string) error {
	build := exec.Command("go", "build", "-o", bin, pkg)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("building %s (run vio-bench from the repository root): %w", pkg, err)
	}
	return nil
}
