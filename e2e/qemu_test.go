package e2e

import (
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/viovmm/vio/lab/labtest"
)

// TestQEMUBaseline boots the Debian kernel under QEMU+KVM. It proves the lab
// gives a working KVM to L2 guests, and it is the baseline every vio figure
// is compared with.
func TestQEMUBaseline(t *testing.T) {
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Fatal("qemu-system-x86_64 is not installed: run scripts/setup-host")
	}
	a := labtest.Assets(t)
	initrd := labtest.Initramfs(t, guestScript)
	for _, cpus := range []int{2} {
		out, err := runVMM(t, 3*time.Minute, qemu, "-enable-kvm", "-cpu", "host",
			"-smp", strconv.Itoa(cpus), "-m", "256", "-nodefaults", "-display", "none",
			"-no-reboot", "-serial", "stdio", "-kernel", a.Kernel, "-initrd", initrd,
			"-append", "console=ttyS0 panic=-1 quiet")
		if err != nil {
			t.Fatalf("qemu: %v\n%s", err, out)
		}
		gotCPUs, memKB, clock := facts(t, out)
		if gotCPUs != strconv.Itoa(cpus) || clock != "kvm-clock" {
			t.Errorf("guest saw cpus=%s clock=%s, want %d and kvm-clock", gotCPUs, clock, cpus)
		}
		t.Logf("QEMU guest: cpus=%s MemTotal=%s kB clock=%s", gotCPUs, memKB, clock)
	}
}
