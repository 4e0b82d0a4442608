package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// guestScript is the guest half of the boot scenarios: it reports what the
// guest sees on its console, then powers off.
const guestScript = `
echo "VIO-GUEST cpus=$(nproc) memkb=$(awk '/MemTotal/ {print $2}' /proc/meminfo) clock=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
d=/sys/class/dmi/id
echo "VIO-DMI vendor=$(cat $d/sys_vendor)|product=$(cat $d/product_name)|serial=$(cat $d/product_serial)|uuid=$(cat $d/product_uuid)|"
echo VIO-GUEST-DONE
poweroff -f
`

// runVMM runs a VMM command line to completion (the guest powers off) and
// returns its combined output. The deadline is generous: L2 guests run at
// emulation speed inside the lab.
//
// A run that printed nothing at all before its deadline, neither vio nor
// the guest, gets one more boot, and the test log says so: seen twice in
// the lab (a 2-vCPU guest silent for 4 minutes with both vCPU threads in
// KVM_RUN, then passing at once), a hazard of nested KVM under emulation,
// like the L1 lockups labtest retries. A hang of vio's making repeats and
// still fails.
func runVMM(t *testing.T, timeout time.Duration, argv ...string) (string, error) {
	t.Helper()
	out, err, timedOut := runVMMOnce(t, timeout, argv...)
	if timedOut && strings.HasPrefix(guestOutput(out), "SIGQUIT: quit") {
		t.Logf("lab hazard: %s printed nothing in %v (%s); booting once more", argv[0], timeout, vcpuStates(out))
		out, err, timedOut = runVMMOnce(t, timeout, argv...)
	}
	if timedOut {
		t.Fatalf("%s did not finish within %v; output:\n%s", argv[0], timeout, out)
	}
	return out, err
}

// guestOutput is out less vio's own log lines (with -v, or its startup
// notes), which say nothing of whether the guest printed anything.
func guestOutput(out string) string {
	var b strings.Builder
	for _, line := range strings.SplitAfter(out, "\n") {
		if !strings.HasPrefix(line, "time=") {
			b.WriteString(line)
		}
	}
	return b.String()
}

// runVMMOnce is one run of runVMM; timedOut reports that its deadline
// stopped it.
func runVMMOnce(t *testing.T, timeout time.Duration, argv ...string) (out string, err error, timedOut bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := quitOnDeadline(exec.CommandContext(ctx, argv[0], argv[1:]...))
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	start := time.Now()
	err = cmd.Run()
	t.Logf("%s ran for %v", argv[0], time.Since(start).Round(10*time.Millisecond))
	return buf.String(), err, errors.Is(ctx.Err(), context.DeadlineExceeded)
}

// quitOnDeadline makes cmd's context deadline send SIGQUIT first: a Go
// program (vio) answers it with the stack of every goroutine, so a hang
// says where it hangs; the kill follows if that does not end it.
func quitOnDeadline(cmd *exec.Cmd) *exec.Cmd {
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGQUIT) }
	cmd.WaitDelay = 15 * time.Second
	return cmd
}

// vcpuStates summarizes where a dump's vCPU goroutines were.
func vcpuStates(dump string) string {
	n := strings.Count(dump, "vcpu.(*Runner).loop")
	inRun := strings.Count(dump, "kvm.(*VCPU).Run")
	return fmt.Sprintf("%d vCPU loops, %d inside KVM_RUN", n, inRun)
}

var dmiFacts = regexp.MustCompile(`VIO-DMI vendor=([^|]*)\|product=([^|]*)\|serial=([^|]*)\|uuid=([^|]*)\|`)

// dmi parses what the guest read from /sys/class/dmi/id (SMBIOS).
func dmi(t *testing.T, console string) (vendor, product, serial, uuid string) {
	t.Helper()
	m := dmiFacts.FindStringSubmatch(console)
	if m == nil {
		t.Fatalf("guest did not report its DMI ids; console:\n%s", console)
	}
	return m[1], m[2], m[3], m[4]
}

var guestFacts = regexp.MustCompile(`VIO-GUEST cpus=(\d+) memkb=(\d+) clock=(\S+)`)

// facts parses the guest's report; it fails the test if the guest never
// reached its init or never finished.
func facts(t *testing.T, console string) (cpus, memKB, clock string) {
	t.Helper()
	m := guestFacts.FindStringSubmatch(console)
	if m == nil || !strings.Contains(console, "VIO-GUEST-DONE") {
		t.Fatalf("guest did not report; console:\n%s", console)
	}
	return m[1], m[2], m[3]
}
