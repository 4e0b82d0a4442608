package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/viovmm/vio/lab/labtest"
	"github.com/viovmm/vio/loader/loadertest"
)

const initMarker = "VIO-BENCH-INIT"

// bootResult is one boot: wall time from exec to the guest's /init, the
// whole run, and the VMM's memory overhead sampled at /init.
type bootResult struct {
	toInit, total time.Duration
	overheadKB    int64 // RSS minus the guest RAM mapping's resident pages
}

func benchBoot(e *env, b *budget, rounds, memMiB int) error {
	initrd, _, err := labtest.Guest{Script: "echo " + initMarker + "\npoweroff -f\n"}.BuildIn(e.assets, e.work)
	if err != nil {
		return err
	}
	cmdline := "console=ttyS0 quiet panic=-1"
	vmms := []struct {
		name string
		argv []string
	}{
		{"vio", []string{e.vio, "run", "--kernel", e.assets.Kernel, "--initrd", initrd,
			"--memory", fmt.Sprintf("%dM", memMiB), "--cmdline", cmdline}},
		{"qemu", []string{e.qemu, "-enable-kvm", "-cpu", "host", "-m", strconv.Itoa(memMiB),
			"-smp", "1", "-nodefaults", "-display", "none", "-no-reboot", "-serial", "stdio",
			"-kernel", e.assets.Kernel, "-initrd", initrd, "-append", cmdline}},
	}
	// vio also boots the uncompressed vmlinux (ELF), skipping the
	// decompressor, as Firecracker does; QEMU's -kernel takes the bzImage.
	if bz, err := os.ReadFile(e.assets.Kernel); err == nil {
		if elf, err := loadertest.Vmlinux(bz); err == nil {
			vmlinux := e.work + "/vmlinux"
			if err := os.WriteFile(vmlinux, elf, 0o644); err == nil {
				argv := append([]string(nil), vmms[0].argv...)
				argv[3] = vmlinux // after "run --kernel"
				vmms = append(vmms, struct {
					name string
					argv []string
				}{"vio-vmlinux", argv})
			}
		} else {
			fmt.Println("vio-bench: no vmlinux for the ELF boot row:", err)
		}
	}
	results := map[string][]bootResult{}
	var cut error
	done := 0
rounds:
	for r := 0; r < rounds; r++ {
		for _, v := range vmms {
			res, err := bootOnce(b, v.argv, int64(memMiB)<<10)
			if err != nil {
				cut = fmt.Errorf("%s round %d: %w", v.name, r+1, err)
				break rounds
			}
			fmt.Printf("round %d %-11s  to /init %7.2fs  total %7.2fs  overhead %6d KiB\n",
				r+1, v.name, res.toInit.Seconds(), res.total.Seconds(), res.overheadKB)
			results[v.name] = append(results[v.name], res)
		}
		done++
	}
	if done == 0 {
		return cut
	}
	if cut != nil {
		fmt.Printf("\nvio-bench: cut short in round %d of %d; the medians below are over the %d rounds every VMM finished\n", done+1, rounds, done)
	}
	rounds = done // medians over the rounds every row finished
	med := func(name string, f func(bootResult) float64) float64 {
		var xs []float64
		for _, r := range results[name][:rounds] {
			xs = append(xs, f(r))
		}
		sort.Float64s(xs)
		return xs[len(xs)/2]
	}
	toInit := func(r bootResult) float64 { return r.toInit.Seconds() }
	total := func(r bootResult) float64 { return r.total.Seconds() }
	over := func(r bootResult) float64 { return float64(r.overheadKB) }
	fmt.Printf("\nmedians over %d interleaved rounds (%d MiB guest, 1 vCPU):\n", rounds, memMiB)
	fmt.Printf("%-22s %10s %10s %8s %12s %9s\n", "", "vio", "qemu", "vio/qemu", "vio-vmlinux", "/qemu")
	for _, row := range []struct {
		name string
		f    func(bootResult) float64
	}{{"wall time to /init (s)", toInit}, {"whole run (s)", total}, {"VMM overhead (KiB)", over}} {
		a, b := med("vio", row.f), med("qemu", row.f)
		fmt.Printf("%-22s %10.2f %10.2f %8.2f", row.name, a, b, a/b)
		if len(results["vio-vmlinux"]) > 0 {
			c := med("vio-vmlinux", row.f)
			fmt.Printf(" %12.2f %9.2f", c, c/b)
		}
		fmt.Println()
	}
	return cut
}

// bootOnce runs a VMM until it exits, timing the init marker on its console.
func bootOnce(b *budget, argv []string, guestKB int64) (bootResult, error) {
	ctx, cancel, err := b.next()
	if err != nil {
		return bootResult{}, err
	}
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return bootResult{}, err
	}
	cmd.Stderr = os.Stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return bootResult{}, err
	}
	var res bootResult
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if res.toInit == 0 && strings.Contains(sc.Text(), initMarker) {
			res.toInit = time.Since(start)
			res.overheadKB = overheadKB(cmd.Process.Pid, guestKB)
		}
	}
	if err := cmd.Wait(); err != nil {
		if ctx.Err() != nil {
			return res, fmt.Errorf("%s: killed after its share of -timeout: %w", argv[0], ctx.Err())
		}
		return res, fmt.Errorf("%s: %w", argv[0], err)
	}
	res.total = time.Since(start)
	if res.toInit == 0 {
		return res, fmt.Errorf("%s: the guest never reached /init", argv[0])
	}
	return res, nil
}

// overheadKB is the process's resident memory less what is resident of
// its guest RAM mapping (the anonymous mapping of exactly the guest's size).
func overheadKB(pid int, guestKB int64) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return -1
	}
	defer f.Close()
	var total, guest, size int64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		n, _ := strconv.ParseInt(fields[1], 10, 64)
		switch fields[0] {
		case "Size:":
			size = n
		case "Rss:":
			total += n
			if size == guestKB {
				guest += n
			}
		}
	}
	return total - guest
}
