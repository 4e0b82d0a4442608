package main

import (
	"bufio"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/viovmm/vio/lab/labtest"
)

// The guest and the lab host meet on a TAP device with link-local
// addresses; the lab VM has no network, so nothing leaves it.
const (
	benchTap     = "viobench0"
	benchHostIP  = "169.254.88.1"
	benchGuestIP = "169.254.88.2"
	fioRuntime   = 8 // seconds per fio job
)

// ioGuest runs each workload between BEGIN/END markers, so the host can
// read KVM's exit counters around it.
var ioGuest = `
ip link set eth0 up && ip addr add ` + benchGuestIP + `/24 dev eth0
# The bench disk: an emulated IDE disk when there is one (the last virtio
# disk is always the tools disk), else the first virtio disk.
dev=/dev/vda; [ -b /dev/sda ] && dev=/dev/sda
echo "BENCH-DEVICE $dev $(cat /sys/class/net/eth0/device/uevent 2>/dev/null | grep DRIVER=)"
# Interrupts the guest took from its I/O devices (every CPU's column of
# every virtio, IDE and e1000 line in /proc/interrupts).
virq() { awk '/virtio|ata_piix|eth0|e1000/ { for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i } END { print s + 0 }' /proc/interrupts; }
# The exits an idle guest causes (timer ticks, housekeeping): subtracted
# from each workload's count to get the exits the I/O itself costs.
echo "BENCH-BEGIN idle"; sleep ` + strconv.Itoa(fioRuntime) + `; echo "BENCH-END idle 0 0 0"
fiojob() {
	name=$1; shift
	i0=$(virq)
	echo "BENCH-BEGIN $name"
	fio --name=$name --filename=$dev --direct=1 --time_based --runtime=` + strconv.Itoa(fioRuntime) + ` \
		--output-format=terse --terse-version=3 "$@" > /tmp/$name 2>&1
	echo "BENCH-END $name $(awk -F';' '{print $8+$49, $7+$48}' /tmp/$name) $(( $(virq) - i0 ))"
}
fiojob randread-qd1  --rw=randread  --bs=4k   --ioengine=psync
fiojob randread-qd32 --rw=randread  --bs=4k   --ioengine=libaio --iodepth=32
fiojob randwrite-qd32 --rw=randwrite --bs=4k  --ioengine=libaio --iodepth=32
fiojob seqread-128k  --rw=read      --bs=128k --ioengine=libaio --iodepth=8
for dir in tx rx; do
	flag=; [ $dir = rx ] && flag=-R
	i0=$(virq)
	echo "BENCH-BEGIN iperf-$dir"
	# Bounded: a transfer that hangs (a lab hazard, a stuck server) is
	# reported as failed, and the other workloads and runs go on.
	if timeout 60 iperf3 -c ` + benchHostIP + ` -t 5 -f m --connect-timeout 10000 $flag > /tmp/ip 2>&1 && grep -q receiver /tmp/ip; then
		echo "BENCH-END iperf-$dir $(awk '/receiver/ {print $7}' /tmp/ip) 0 $(( $(virq) - i0 ))"
	else
		echo "BENCH-FAIL iperf-$dir $(tail -1 /tmp/ip)"
	fi
done
poweroff -f
`

type ioResult struct {
	value   float64      // IOPS, or Mbit/s for iperf
	kbps    float64      // fio: KiB/s
	exits   float64      // KVM exits during the workload
	irqs    float64      // interrupts of the I/O devices the guest took during it
	seconds float64      // wall time between the workload's markers
	trace   []traceCount // with -trace: exits and accesses by kind
}

// setup is one VMM configuration a benchmark runs. start, when set, runs
// before each of its guest runs (a disk's back-end process, say) and
// returns what ends it after the run.
type setup struct {
	name  string
	argv  []string
	start func() (stop func() error, err error)
}

// benchIO runs the I/O workloads on vio with and without interrupt
// coalescing, and on QEMU.
func benchIO(e *env, b *budget, rounds, memMiB int) error {
	return runIOBench(e, b, rounds, memMiB, func(disk, tools, initrd string) ([]setup, string) {
		return []setup{
			{name: "vio", argv: vioIOArgs(e, memMiB, initrd, "--disk", "path="+disk, "--disk", "path="+tools+",readonly=on", "--net", "tap="+benchTap)},
			// The same VM with adaptive interrupt coalescing on the bench disk.
			{name: "vio-vic", argv: vioIOArgs(e, memMiB, initrd, "--disk", "path="+disk+",coalesce=adaptive", "--disk", "path="+tools+",readonly=on", "--net", "tap="+benchTap)},
			// The kernel's vhost-net carries the NIC's frames, in each VMM.
			{name: "vio-vhost", argv: vioIOArgs(e, memMiB, initrd, "--disk", "path="+disk, "--disk", "path="+tools+",readonly=on", "--net", "tap="+benchTap+",vhost=on")},
			{name: "qemu-vhost", argv: qemuIOArgs(e, memMiB, initrd,
				"-drive", "file="+disk+",if=none,id=d0,format=raw", "-device", "virtio-blk-pci,drive=d0",
				"-drive", "file="+tools+",if=none,id=d1,format=raw,readonly=on", "-device", "virtio-blk-pci,drive=d1",
				"-netdev", "tap,id=n0,ifname="+benchTap+",script=no,downscript=no,vhost=on", "-device", "virtio-net-pci,netdev=n0")},
			{name: "qemu", argv: qemuIOArgs(e, memMiB, initrd,
				"-drive", "file="+disk+",if=none,id=d0,format=raw", "-device", "virtio-blk-pci,drive=d0",
				"-drive", "file="+tools+",if=none,id=d1,format=raw,readonly=on", "-device", "virtio-blk-pci,drive=d1",
				"-netdev", "tap,id=n0,ifname="+benchTap+",script=no,downscript=no,vhost=off", "-device", "virtio-net-pci,netdev=n0")},
		}, "virtio-blk on a raw file, virtio-net on TAP, QEMU without vhost; vio-vic: coalesce=adaptive on the disk; vio-vhost and qemu-vhost: the kernel's vhost-net carries the NIC (vhost=on)"
	})
}

// benchEmulated is full against paravirtualization: the same workloads on
// an emulated IDE disk and e1000 NIC, and on virtio-blk and virtio-net, in
// vio and in QEMU. (The guest's tools disk stays virtio in every setup; it
// is idle while the workloads run.)
func benchEmulated(e *env, b *budget, rounds, memMiB int) error {
	return runIOBench(e, b, rounds, memMiB, func(disk, tools, initrd string) ([]setup, string) {
		qemuTools := []string{"-drive", "file=" + tools + ",if=none,id=d1,format=raw,readonly=on", "-device", "virtio-blk-pci,drive=d1"}
		qemuTap := "tap,id=n0,ifname=" + benchTap + ",script=no,downscript=no,vhost=off"
		return []setup{
			{name: "vio-para", argv: vioIOArgs(e, memMiB, initrd, "--disk", "path="+disk, "--disk", "path="+tools+",readonly=on", "--net", "tap="+benchTap)},
			{name: "vio-full", argv: vioIOArgs(e, memMiB, initrd, "--disk", "path="+disk+",iface=ide", "--disk", "path="+tools+",readonly=on", "--net", "tap="+benchTap+",model=e1000")},
			// The bench disk before the tools disk: the guest takes the
			// last virtio disk for its tools (with the tools first, it
			// found no file system on the bench disk and powered off).
			{name: "qemu-para", argv: qemuIOArgs(e, memMiB, initrd, append([]string{
				"-drive", "file=" + disk + ",if=none,id=d0,format=raw", "-device", "virtio-blk-pci,drive=d0"},
				append(qemuTools, "-netdev", qemuTap, "-device", "virtio-net-pci,netdev=n0")...)...)},
			{name: "qemu-full", argv: qemuIOArgs(e, memMiB, initrd, append(qemuTools,
				"-drive", "file="+disk+",if=none,id=d0,format=raw", "-device", "ide-hd,drive=d0,bus=ide.0",
				"-netdev", qemuTap, "-device", "e1000,netdev=n0")...)},
		}, "para: virtio-blk and virtio-net; full: an IDE disk (ata_piix) and an e1000 NIC; TAP, QEMU without vhost"
	})
}

// benchIOMMU is what DMA remapping costs per I/O: the same workloads with
// the emulated VT-d unit in the VM (the guest's intel-iommu driver maps
// and unmaps every request's buffers, each map and unmap an exit, and the
// device translates every access) and without it; QEMU with its own
// emulated VT-d as the peer.
func benchIOMMU(e *env, b *budget, rounds, memMiB int) error {
	return runIOBench(e, b, rounds, memMiB, func(disk, tools, initrd string) ([]setup, string) {
		const on = "intel_iommu=on"
		vp := ",iommu_platform=on,disable-legacy=on"
		return []setup{
			{name: "vio-iommu", argv: withCmdline(vioIOArgs(e, memMiB, initrd, "--iommu", "--disk", "path="+disk, "--disk", "path="+tools+",readonly=on", "--net", "tap="+benchTap), on)},
			{name: "qemu-iommu", argv: withCmdline(qemuIOArgs(e, memMiB, initrd, "-M", "q35", "-device", "intel-iommu,intremap=off",
				"-drive", "file="+disk+",if=none,id=d0,format=raw", "-device", "virtio-blk-pci,drive=d0"+vp,
				"-drive", "file="+tools+",if=none,id=d1,format=raw,readonly=on", "-device", "virtio-blk-pci,drive=d1"+vp,
				"-netdev", "tap,id=n0,ifname="+benchTap+",script=no,downscript=no,vhost=off", "-device", "virtio-net-pci,netdev=n0"+vp), on)},
			{name: "vio", argv: vioIOArgs(e, memMiB, initrd, "--disk", "path="+disk, "--disk", "path="+tools+",readonly=on", "--net", "tap="+benchTap)},
		}, "virtio-blk and virtio-net, with the guest's intel_iommu=on (default, lazy invalidation) over each VMM's emulated VT-d, and vio without one"
	})
}

// withCmdline appends extra to the guest command line in argv (vio's
// --cmdline or QEMU's -append).
func withCmdline(argv []string, extra string) []string {
	for i, a := range argv[:len(argv)-1] {
		if a == "--cmdline" || a == "-append" {
			argv[i+1] += " " + extra
		}
	}
	return argv
}

func vioIOArgs(e *env, memMiB int, initrd string, devices ...string) []string {
	return append([]string{e.vio, "run", "--kernel", e.assets.Kernel, "--initrd", initrd, "--memory", strconv.Itoa(memMiB) + "M",
		"--cpus", "2", "--cmdline", benchCmdline}, devices...)
}

func qemuIOArgs(e *env, memMiB int, initrd string, devices ...string) []string {
	return append([]string{e.qemu, "-enable-kvm", "-cpu", "host", "-m", strconv.Itoa(memMiB), "-smp", "2", "-nodefaults",
		"-display", "none", "-no-reboot", "-serial", "stdio", "-kernel", e.assets.Kernel, "-initrd", initrd,
		"-append", benchCmdline}, devices...)
}

const benchCmdline = "console=ttyS0 quiet panic=-1"

// runIOBench prepares the guest, its disks and the host's network, then
// runs the setups interleaved, round after round, and prints the medians
// against the last setup.
func runIOBench(e *env, b *budget, rounds, memMiB int, setups func(disk, tools, initrd string) ([]setup, string)) error {
	initrd, tools, err := labtest.Guest{
		Script:   ioGuest,
		Modules:  []string{"virtio_pci", "virtio_blk", "virtio_net", "ata_piix", "sd_mod", "e1000"},
		Programs: []string{"/usr/bin/fio", "/usr/bin/iperf3"},
	}.BuildIn(e.assets, e.work)
	if err != nil {
		return err
	}
	disk := e.work + "/bench.img"
	if out, err := exec.Command("dd", "if=/dev/urandom", "of="+disk, "bs=1M", "count=256", "status=none").CombinedOutput(); err != nil {
		return fmt.Errorf("making the benchmark disk: %v: %s", err, out)
	}
	for _, c := range [][]string{
		{"mount", "-t", "debugfs", "none", "/sys/kernel/debug"},
		{"ip", "tuntap", "add", benchTap, "mode", "tap"},
		{"ip", "addr", "add", benchHostIP + "/24", "dev", benchTap},
		{"ip", "link", "set", benchTap, "up"},
	} {
		exec.Command(c[0], c[1:]...).Run() // already done is fine; failures show below
	}
	defer exec.Command("ip", "link", "del", benchTap).Run()
	if _, err := readExits(); err != nil {
		return fmt.Errorf("KVM exit counters unavailable (%v): need debugfs at /sys/kernel/debug", err)
	}
	// The server drops a client that stops sending and restarts when
	// stuck, so a guest killed mid-transfer does not leave it busy for
	// the next run.
	iperf := exec.Command("iperf3", "-s", "-B", benchHostIP, "--rcv-timeout", "10000", "--idle-timeout", "30")
	if err := iperf.Start(); err != nil {
		return fmt.Errorf("iperf3 server: %w", err)
	}
	defer iperf.Process.Kill()

	vmms, what := setups(disk, tools, initrd)
	if vmms, err = onlySetups(vmms); err != nil {
		return err
	}
	var trace *exitTrace
	if traceExits {
		if trace, err = newExitTrace(); err != nil {
			return err
		}
	}
	var names []string
	for _, v := range vmms {
		names = append(names, v.name)
	}
	results, order, ran, err := runRounds(b, vmms, rounds, trace)
	if ran > 0 {
		printIO(results, names, order, ran, memMiB, what)
	}
	return err
}

// runRounds runs the setups in rounds interleaved rounds. A run that fails
// (or meets a lab hazard twice) does not end the benchmark: the workloads
// it finished count, the failure is printed and returned at the end, and
// the other runs go on, so that one bad run still leaves a table. Only a
// spent -timeout stops the rounds. It returns each setup's results per
// workload, the workloads in the guest's order, how many rounds began,
// and the failures (nil if none).
func runRounds(b *budget, vmms []setup, rounds int, trace *exitTrace) (results map[string]map[string][]ioResult, order []string, ran int, err error) {
	results = map[string]map[string][]ioResult{}
	for _, v := range vmms {
		results[v.name] = map[string][]ioResult{}
	}
	var failed []string
rounds:
	for r := 0; r < rounds; r++ {
		for _, v := range vmms {
			res, names, err := setupOnce(b, v, trace)
			if errors.Is(err, errLabHazard) {
				// LAB.md: detect a lab hazard, say so, retry at most once.
				fmt.Printf("vio-bench: lab hazard in %s round %d (%v); running it once more\n", v.name, r+1, firstLine(err))
				res, names, err = setupOnce(b, v, trace)
			}
			if errors.Is(err, errBudget) {
				fmt.Printf("\nvio-bench: cut short in round %d of %d: %v\n", r+1, rounds, err)
				failed = append(failed, fmt.Sprintf("cut short in round %d of %d", r+1, rounds))
				break rounds
			}
			ran = r + 1
			if err != nil {
				fmt.Fprintf(os.Stderr, "vio-bench: %s round %d failed: %v\n", v.name, r+1, err)
				fmt.Printf("vio-bench: %s round %d failed after %d workloads (%s); the rounds go on\n", v.name, r+1, len(names), firstLine(err))
				failed = append(failed, fmt.Sprintf("%s round %d", v.name, r+1))
			}
			for _, name := range names {
				if !slices.Contains(order, name) {
					order = append(order, name)
				}
				x := res[name]
				results[v.name][name] = append(results[v.name][name], x)
				fmt.Printf("round %d %-10s %-15s %10.1f  exits %8.0f  irqs %8.0f\n", r+1, v.name, name, x.value, x.exits, x.irqs)
				if x.trace != nil && name != "idle" {
					printTrace(v.name, name, x.trace, opsOf(name, x))
				}
			}
		}
	}
	if len(failed) > 0 {
		err = fmt.Errorf("not every run finished (%s): the table has what was measured", strings.Join(failed, "; "))
	}
	return results, order, ran, err
}

// printIO prints, per workload, each setup's median over the rounds that
// measured it (saying how many when not all of rounds did), against the
// last setup's.
func printIO(results map[string]map[string][]ioResult, vmms, order []string, rounds, memMiB int, what string) {
	fmt.Printf("\nmedians over %d interleaved rounds (%d MiB guest, 2 vCPUs; %s):\n", rounds, memMiB, what)
	ref := vmms[len(vmms)-1]
	fmt.Printf("%-15s %-10s %10s %8s %10s %10s %10s\n", "workload", "vmm", "value", "÷"+ref, "exits/op", "net ex/op", "irqs/op")
	fmt.Println("  (value: IOPS for fio, Mbit/s for iperf; per op: per I/O for fio, per MB for iperf;")
	fmt.Println("   'net' subtracts the exit rate of the idle guest over the workload's duration)")
	idle := map[string]float64{}
	for _, vmm := range vmms {
		if x := median(results[vmm]["idle"]); x.seconds > 0 {
			idle[vmm] = x.exits / x.seconds
		}
	}
	for _, name := range order {
		if name == "idle" {
			continue
		}
		q := median(results[ref][name])
		for i, vmm := range vmms {
			label := name
			if i > 0 {
				label = ""
			}
			xs := results[vmm][name]
			if len(xs) == 0 {
				fmt.Printf("%-15s %-10s (not measured)\n", label, vmm)
				continue
			}
			x := median(xs)
			n := opsOf(name, x)
			if n == 0 {
				n = math.NaN()
			}
			note := ""
			if len(xs) < rounds {
				note = fmt.Sprintf("  (%d of %d rounds)", len(xs), rounds)
			}
			fmt.Printf("%-15s %-10s %10.1f %8.2f %10.3f %10.3f %10.3f%s\n", label, vmm, x.value, x.value/q.value,
				x.exits/n, (x.exits-idle[vmm]*x.seconds)/n, x.irqs/n, note)
		}
	}
	fmt.Print("idle guest exits/s:")
	for _, vmm := range vmms {
		fmt.Printf(" %s %.0f", vmm, idle[vmm])
	}
	fmt.Println()
}

// opsOf is how many operations a workload's result stands for: I/Os for
// fio, MB moved for iperf.
func opsOf(name string, x ioResult) float64 {
	if strings.HasPrefix(name, "iperf") {
		return x.value * 5 / 8 // Mbit/s over 5 s
	}
	return x.value * fioRuntime
}

// onlySetups keeps the setups -setups names (all when it is empty), and
// adds the -variants: a copy of a setup whose VMM runs with extra
// environment variables, named "SETUP+VAR=VALUE".
func onlySetups(all []setup) ([]setup, error) {
	keep := all
	if setupFilter != "" {
		var err error
		if keep, err = filterSetups(all); err != nil {
			return nil, err
		}
	}
	for _, v := range strings.Split(variants, ",") {
		if v == "" {
			continue
		}
		base, env, ok := strings.Cut(v, "+")
		i := slices.IndexFunc(all, func(s setup) bool { return s.name == base })
		if !ok || i < 0 || !strings.Contains(env, "=") {
			return nil, fmt.Errorf("-variants %q: want SETUP+VAR=VALUE with SETUP one of this benchmark's VMM setups", v)
		}
		c := all[i]
		c.name = v
		c.argv = append([]string{"env", env}, c.argv...)
		keep = append(keep, c)
	}
	return keep, nil
}

func filterSetups(all []setup) ([]setup, error) {
	var keep []setup
	var names []string
	for _, v := range all {
		names = append(names, v.name)
		if slices.Contains(strings.Split(setupFilter, ","), v.name) {
			keep = append(keep, v)
		}
	}
	if len(keep) == 0 {
		return nil, fmt.Errorf("-setups %q names none of this benchmark's setups (%s)", setupFilter, strings.Join(names, ","))
	}
	return keep, nil
}

// median returns the middle result by value (zero for none), sorting a
// copy so that the caller's rounds keep their order.
func median(xs []ioResult) ioResult {
	if len(xs) == 0 {
		return ioResult{}
	}
	xs = slices.Clone(xs)
	sort.Slice(xs, func(i, j int) bool { return xs[i].value < xs[j].value })
	return xs[len(xs)/2]
}

// timerStall is what a guest's RCU prints when one of its CPUs' timers
// no longer fires: seen in the lab with QEMU and vio alike, a vCPU that
// halted while idle and that L1's KVM never woke again (a hazard of the
// nested lab, not of either VMM).
const timerStall = "timer wakeup didn't happen"

// hazardIn returns the lab hazard (one of hazards) a console line reports,
// or "".
func hazardIn(line string) string {
	for _, h := range hazards {
		if strings.Contains(line, h) {
			return h
		}
	}
	return ""
}

// stopStalled ends a VMM whose guest reported a stalled CPU, which would
// only wait out its budget. It lets the guest's kernel finish its report
// first (the stalled CPU's backtrace follows the first line), then sends
// SIGQUIT, which makes vio print every goroutine's stack to stderr: where
// its vCPU threads and device workers were, in case the stall is vio's.
// The kill follows if that does not end it.
func stopStalled(cmd *exec.Cmd) {
	p := cmd.Process
	time.AfterFunc(5*time.Second, func() {
		p.Signal(syscall.SIGQUIT)
		time.AfterFunc(10*time.Second, func() { p.Kill() })
	})
}

// firstLine is err's message up to its first newline.
func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

// consoleTail is how many of the guest's last console lines a failed run
// reports: enough for a kernel oops and its call trace.
const consoleTail = 150

// setupOnce is one guest run of v, between its start and stop.
func setupOnce(b *budget, v setup, trace *exitTrace) (map[string]ioResult, []string, error) {
	if v.start == nil {
		return ioOnce(b, v.argv, trace)
	}
	stop, err := v.start()
	if err != nil {
		return nil, nil, err
	}
	res, names, err := ioOnce(b, v.argv, trace)
	if serr := stop(); err == nil && serr != nil {
		return nil, nil, serr
	}
	return res, names, err
}

// ioOnce runs one VMM through the guest's workloads.
// With trace, it counts each workload's exits by kind.
func ioOnce(b *budget, argv []string, trace *exitTrace) (map[string]ioResult, []string, error) {
	ctx, cancel, err := b.next()
	if err != nil {
		return nil, nil, err
	}
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	res := map[string]ioResult{}
	var names []string
	begin := map[string]float64{}
	started := map[string]time.Time{}
	var tail []string // the console's last lines, for a run that fails
	stalled := ""
	var failedIn []string // workloads the guest reported failed, with its reason
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if tail = append(tail, sc.Text()); len(tail) > consoleTail {
			tail = tail[1:]
		}
		if stalled == "" {
			if stalled = hazardIn(sc.Text()); stalled != "" {
				stopStalled(cmd)
			}
		}
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "BENCH-BEGIN":
			if trace != nil {
				if err := trace.start(); err != nil {
					cmd.Process.Kill()
					cmd.Wait()
					return nil, nil, err
				}
			}
			begin[f[1]], _ = readExits()
			started[f[1]] = time.Now()
		case "BENCH-FAIL":
			failedIn = append(failedIn, strings.Join(f[1:], " "))
		case "BENCH-END":
			exits, _ := readExits()
			r := ioResult{exits: exits - begin[f[1]], seconds: time.Since(started[f[1]]).Seconds()}
			if trace != nil {
				if r.trace, err = trace.collect(); err != nil {
					cmd.Process.Kill()
					cmd.Wait()
					return nil, nil, err
				}
			}
			if len(f) > 2 {
				r.value, _ = strconv.ParseFloat(f[2], 64)
			}
			if len(f) > 3 {
				r.kbps, _ = strconv.ParseFloat(f[3], 64)
			}
			if len(f) > 4 {
				r.irqs, _ = strconv.ParseFloat(f[4], 64)
			}
			res[f[1]] = r
			names = append(names, f[1])
		}
	}
	if err := cmd.Wait(); err != nil {
		// The guest's own account (a kernel report) is on its console.
		console := "\n  guest console, last lines:\n    " + strings.Join(tail, "\n    ")
		// What the guest finished before goes back with the error.
		if stalled != "" {
			return res, names, fmt.Errorf("%s: %w: %q%s", argv[0], errLabHazard, stalled, console)
		}
		if ctx.Err() != nil {
			return res, names, fmt.Errorf("%s: killed after its share of -timeout: %w%s", argv[0], ctx.Err(), console)
		}
		return res, names, fmt.Errorf("%s: %w%s", argv[0], err, console)
	}
	if len(failedIn) > 0 {
		return res, names, fmt.Errorf("%s: workloads failed in the guest: %s", argv[0], strings.Join(failedIn, "; "))
	}
	if len(names) == 0 {
		return nil, nil, fmt.Errorf("%s: the guest reported no workload\n  guest console, last lines:\n    %s", argv[0], strings.Join(tail, "\n    "))
	}
	return res, names, nil
}

// readExits sums KVM's exit counter over the VMs alive now (L1's debugfs).
func readExits() (float64, error) {
	b, err := os.ReadFile("/sys/kernel/debug/kvm/exits")
	if err != nil {
		return 0, err
	}
	return strconv.ParseFloat(strings.TrimSpace(string(b)), 64)
}
