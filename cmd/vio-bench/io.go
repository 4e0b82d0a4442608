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
# Interrupts the guest took from virtio devices (every CPU's column of
# every virtio vector in /proc/interrupts).
virq() { awk '/virtio/ { for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i } END { print s + 0 }' /proc/interrupts; }
# The exits an idle guest causes (timer ticks, housekeeping): subtracted
# from each workload's count to get the exits the I/O itself costs.
echo "BENCH-BEGIN idle"; sleep ` + strconv.Itoa(fioRuntime) + `; echo "BENCH-END idle 0 0 0"
fiojob() {
	name=$1; shift
	i0=$(virq)
	echo "BENCH-BEGIN $name"
	fio --name=$name --filename=/dev/vda --direct=1 --time_based --runtime=` + strconv.Itoa(fioRuntime) + ` \
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
	iperf3 -c ` + benchHostIP + ` -t 5 -f m $flag > /tmp/ip 2>&1
	echo "BENCH-END iperf-$dir $(awk '/receiver/ {print $7}' /tmp/ip) 0 $(( $(virq) - i0 ))"
done
poweroff -f
`

type ioResult struct {
	value   float64 // IOPS, or Mbit/s for iperf
	kbps    float64 // fio: KiB/s
	exits   float64 // KVM exits during the workload
	irqs    float64 // virtio interrupts the guest took during it
	seconds float64 // wall time between the workload's markers
}

func benchIO(e *env, b *budget, rounds, memMiB int) error {
	initrd, tools, err := labtest.Guest{
		Script:   ioGuest,
		Modules:  []string{"virtio_pci", "virtio_blk", "virtio_net"},
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
	iperf := exec.Command("iperf3", "-s", "-B", benchHostIP)
	if err := iperf.Start(); err != nil {
		return fmt.Errorf("iperf3 server: %w", err)
	}
	defer iperf.Process.Kill()

	cmdline := "console=ttyS0 quiet panic=-1"
	mem := strconv.Itoa(memMiB)
	// vioArgs is vio's command line, diskOpts added to the bench disk's.
	vioArgs := func(diskOpts string) []string {
		return []string{e.vio, "run", "--kernel", e.assets.Kernel, "--initrd", initrd, "--memory", mem + "M",
			"--cpus", "2", "--cmdline", cmdline, "--disk", "path=" + disk + diskOpts,
			"--disk", "path=" + tools + ",readonly=on", "--net", "tap=" + benchTap}
	}
	vmms := []struct {
		name string
		argv []string
	}{
		{"vio", vioArgs("")},
		// The same VM with adaptive interrupt coalescing on the bench disk.
		{"vio-vic", vioArgs(",coalesce=adaptive")},
		{"qemu", []string{e.qemu, "-enable-kvm", "-cpu", "host", "-m", mem, "-smp", "2", "-nodefaults",
			"-display", "none", "-no-reboot", "-serial", "stdio", "-kernel", e.assets.Kernel, "-initrd", initrd,
			"-append", cmdline,
			"-drive", "file=" + disk + ",if=none,id=d0,format=raw", "-device", "virtio-blk-pci,drive=d0",
			"-drive", "file=" + tools + ",if=none,id=d1,format=raw,readonly=on", "-device", "virtio-blk-pci,drive=d1",
			"-netdev", "tap,id=n0,ifname=" + benchTap + ",script=no,downscript=no,vhost=off",
			"-device", "virtio-net-pci,netdev=n0"}},
	}
	var names []string
	for _, v := range vmms {
		names = append(names, v.name)
	}
	results := map[string]map[string][]ioResult{}
	for _, v := range vmms {
		results[v.name] = map[string][]ioResult{}
	}
	var order []string
	var cut error
	done := 0
rounds:
	for r := 0; r < rounds; r++ {
		for _, v := range vmms {
			res, names, err := ioOnce(b, v.argv)
			if err != nil {
				cut = fmt.Errorf("%s round %d: %w", v.name, r+1, err)
				break rounds
			}
			if order == nil {
				order = names
			}
			for name, x := range res {
				results[v.name][name] = append(results[v.name][name], x)
				fmt.Printf("round %d %-7s %-15s %10.1f  exits %8.0f  irqs %8.0f\n", r+1, v.name, name, x.value, x.exits, x.irqs)
			}
		}
		done++
	}
	if done == 0 {
		if cut == nil {
			cut = errors.New("no round ran")
		}
		return cut
	}
	if cut != nil {
		fmt.Printf("\nvio-bench: cut short in round %d of %d; the medians below are over the %d rounds every VMM finished\n", done+1, rounds, done)
	}
	printIO(results, names, order, done, memMiB)
	return cut
}

// printIO prints, per workload, each VMM's median over the rounds every
// VMM finished, against QEMU's (the last of vmms).
func printIO(results map[string]map[string][]ioResult, vmms, order []string, rounds, memMiB int) {
	fmt.Printf("\nmedians over %d interleaved rounds (%d MiB guest, 2 vCPUs, virtio-blk on a raw file, virtio-net on TAP, QEMU without vhost; vio-vic: coalesce=adaptive on the disk):\n", rounds, memMiB)
	fmt.Printf("%-15s %-8s %10s %8s %10s %10s %10s\n", "workload", "vmm", "value", "÷qemu", "exits/op", "net ex/op", "irqs/op")
	fmt.Println("  (value: IOPS for fio, Mbit/s for iperf; per op: per I/O for fio, per MB for iperf;")
	fmt.Println("   'net' subtracts the exit rate of the idle guest over the workload's duration)")
	ref := vmms[len(vmms)-1]
	idle := map[string]float64{}
	for _, vmm := range vmms {
		if x := median(results[vmm]["idle"][:rounds]); x.seconds > 0 {
			idle[vmm] = x.exits / x.seconds
		}
	}
	for _, name := range order {
		if name == "idle" {
			continue
		}
		ops := func(x ioResult) float64 { return x.value * fioRuntime }
		if strings.HasPrefix(name, "iperf") {
			ops = func(x ioResult) float64 { return x.value * 5 / 8 } // MB moved in 5 s
		}
		q := median(results[ref][name][:min(rounds, len(results[ref][name]))])
		for i, vmm := range vmms {
			label := name
			if i > 0 {
				label = ""
			}
			xs := results[vmm][name]
			if len(xs) < rounds {
				fmt.Printf("%-15s %-8s (not measured in every round)\n", label, vmm)
				continue
			}
			x := median(xs[:rounds])
			n := ops(x)
			if n == 0 {
				n = math.NaN()
			}
			fmt.Printf("%-15s %-8s %10.1f %8.2f %10.3f %10.3f %10.3f\n", label, vmm, x.value, x.value/q.value,
				x.exits/n, (x.exits-idle[vmm]*x.seconds)/n, x.irqs/n)
		}
	}
	fmt.Print("idle guest exits/s:")
	for _, vmm := range vmms {
		fmt.Printf(" %s %.0f", vmm, idle[vmm])
	}
	fmt.Println()
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

// ioOnce runs one VMM through the guest's workloads.
func ioOnce(b *budget, argv []string) (map[string]ioResult, []string, error) {
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
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "BENCH-BEGIN":
			begin[f[1]], _ = readExits()
			started[f[1]] = time.Now()
		case "BENCH-END":
			exits, _ := readExits()
			r := ioResult{exits: exits - begin[f[1]], seconds: time.Since(started[f[1]]).Seconds()}
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
		if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("%s: killed after its share of -timeout: %w", argv[0], ctx.Err())
		}
		return nil, nil, fmt.Errorf("%s: %w", argv[0], err)
	}
	if len(names) == 0 {
		return nil, nil, fmt.Errorf("%s: the guest reported no workload", argv[0])
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
