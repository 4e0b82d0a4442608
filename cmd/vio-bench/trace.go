package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// exitTrace counts, while one workload runs, KVM's exits by reason and the
// port, MMIO and MSR accesses behind them, with histogram triggers on
// KVM's tracepoints in the kernel that runs the VMMs (L1 in the lab). A
// histogram keeps a count per key in the kernel, so nothing is lost however
// many exits there are, and the counts say which register accesses a
// device model makes its guest repeat: the figures that exits/op alone
// cannot explain.
//
// It also counts the interrupts the VMMs' host took meanwhile (/proc/
// interrupts): a host interrupt on a CPU that is running a guest is an
// exit of its own (SVM's INTR, VMX's external interrupt), and the
// reschedule and call IPIs among them say how often a VMM's threads woke
// each other across CPUs.
type exitTrace struct {
	dir       string // tracefs events directory
	irqBefore map[string]float64
}

// traceHists is each tracepoint and the keys its histogram counts by.
var traceHists = []struct{ event, keys string }{
	{"kvm/kvm_exit", "exit_reason"},
	{"kvm/kvm_pio", "port,rw,size"},
	{"kvm/kvm_mmio", "gpa,type"},
	{"kvm/kvm_msr", "ecx,write"},
	// Not the host's timers (timer/hrtimer_expire_entry by function):
	// that histogram told hrtimer_wakeup from the guest's APIC timer once,
	// but two of four lab runs with a timer histogram lost L1 (no
	// heartbeat, in the first guest), so it stays out of the set.
}

// newExitTrace finds tracefs; the caller has mounted debugfs.
func newExitTrace() (*exitTrace, error) {
	for _, d := range []string{"/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events"} {
		if _, err := os.Stat(filepath.Join(d, "kvm/kvm_exit/trigger")); err == nil {
			return &exitTrace{dir: d}, nil
		}
	}
	return nil, errors.New("no KVM tracepoints with histogram triggers in tracefs (needs CONFIG_HIST_TRIGGERS and debugfs mounted)")
}

func (t *exitTrace) trigger(event, cmd string) error {
	return os.WriteFile(filepath.Join(t.dir, event, "trigger"), []byte(cmd+"\n"), 0)
}

// start sets up empty histograms.
func (t *exitTrace) start() error {
	t.stop()
	t.irqBefore = hostInterrupts()
	for _, h := range traceHists {
		if err := t.trigger(h.event, "hist:keys="+h.keys+":size=4096"); err != nil {
			return fmt.Errorf("tracing %s: %w", h.event, err)
		}
	}
	return nil
}

// stop removes the histograms; what they held is gone.
func (t *exitTrace) stop() {
	for _, h := range traceHists {
		t.trigger(h.event, "!hist:keys="+h.keys+":size=4096")
	}
}

// traceCount is one histogram entry.
type traceCount struct {
	event string
	key   string
	n     float64
}

// collect reads the histograms and removes them.
func (t *exitTrace) collect() ([]traceCount, error) {
	defer t.stop()
	var out []traceCount
	for _, h := range traceHists {
		f, err := os.Open(filepath.Join(t.dir, h.event, "hist"))
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			// { port:        496, rw:          0 } hitcount:      12345
			line := sc.Text()
			open, close := strings.Index(line, "{"), strings.Index(line, "}")
			_, count, ok := strings.Cut(line, "hitcount:")
			if open < 0 || close < open || !ok {
				continue
			}
			n, err := strconv.ParseFloat(strings.Fields(count)[0], 64)
			if err != nil {
				continue
			}
			key := strings.Join(strings.Fields(line[open+1:close]), " ")
			out = append(out, traceCount{event: filepath.Base(h.event), key: key, n: n})
		}
		f.Close()
	}
	for name, n := range hostInterrupts() {
		if before, ok := t.irqBefore[name]; ok && n > before {
			d := n - before
			out = append(out, traceCount{event: "host_irq", key: name, n: d})
		}
	}
	return out, nil
}

// hostInterrupts reads /proc/interrupts: each row's count summed over the
// CPUs, by its name (LOC, RES, CAL ... or the device's).
func hostInterrupts() map[string]float64 {
	b, err := os.ReadFile("/proc/interrupts")
	if err != nil {
		return nil
	}
	m := map[string]float64{}
	lines := strings.Split(string(b), "\n")
	if len(lines) == 0 {
		return m
	}
	cpus := len(strings.Fields(lines[0]))
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		name := strings.TrimSuffix(f[0], ":")
		var sum float64
		i := 1
		for ; i < len(f) && i <= cpus; i++ {
			n, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				break
			}
			sum += n
		}
		if _, err := strconv.Atoi(name); err == nil && len(f) > i {
			name += " " + f[len(f)-1] // a numbered line: its device's name
		}
		m[name] = sum
	}
	return m
}

// printTrace prints the entries worth at least 0.05 per operation, the
// biggest first within each event.
func printTrace(setup, workload string, counts []traceCount, ops float64) {
	if ops <= 0 {
		return
	}
	sort.SliceStable(counts, func(i, j int) bool {
		if counts[i].event != counts[j].event {
			return counts[i].event < counts[j].event
		}
		return counts[i].n > counts[j].n
	})
	fmt.Printf("  trace %s %s (per op):\n", setup, workload)
	for _, c := range counts {
		if c.n/ops >= 0.05 {
			fmt.Printf("    %-9s %-48s %8.2f\n", c.event, c.key, c.n/ops)
		}
	}
}
