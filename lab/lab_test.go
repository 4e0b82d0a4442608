package lab

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/viovmm/vio/lab/assets"
)

// These tests boot the lab VM itself; they need QEMU and the assets, which
// scripts/setup-host installs. Set VIO_LAB=off to skip them.
func needLab(t *testing.T) {
	t.Helper()
	if os.Getenv("VIO_LAB") == "off" {
		t.Skip("VIO_LAB=off")
	}
	if os.Getenv("VIO_LAB_INSIDE") == "1" {
		t.Skip("already inside the lab")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatal("qemu-system-x86_64 is not installed: run scripts/setup-host")
	}
}

// TestExec: the command runs as root with a real /dev/kvm, its output
// streams out on the right channel, and its exit status comes back.
func TestExec(t *testing.T) {
	needLab(t)
	var stdout, stderr bytes.Buffer
	start := time.Now()
	err := Exec(context.Background(), Config{Timeout: 5 * time.Minute},
		[]string{"sh", "-c", "test -c /dev/kvm && echo kvm-ok; id -u; echo to-stderr >&2; exit 3"}, &stdout, &stderr)
	t.Logf("lab run took %v", time.Since(start).Round(100*time.Millisecond))
	var exit *ExitError
	if !errors.As(err, &exit) || exit.Code != 3 {
		t.Fatalf("want exit status 3, got %v (stdout %q, stderr %q)", err, stdout.String(), stderr.String())
	}
	if got := stdout.String(); got != "kvm-ok\n0\n" {
		t.Errorf("stdout %q, want kvm-ok and uid 0", got)
	}
	if got := stderr.String(); got != "to-stderr\n" {
		t.Errorf("stderr %q", got)
	}
}

// TestExecTimeout: a command that outlives the deadline ends the run with
// ErrTimeout, not a hang.
func TestExecTimeout(t *testing.T) {
	needLab(t)
	err := Exec(context.Background(), Config{Timeout: 2 * time.Second}, []string{"sleep", "600"}, os.Stdout, os.Stderr)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("want ErrTimeout, got %v", err)
	}
}

// TestExecNVMeSRIOV: with --iommu and an SR-IOV NVMe controller, L1 sees
// the controller in its own IOMMU group, can bind it to vfio-pci, and can
// create its virtual functions.
func TestExecNVMeSRIOV(t *testing.T) {
	needLab(t)
	img := filepath.Join(t.TempDir(), "nv.img")
	script := `set -e
dev=$(for d in /sys/bus/pci/devices/*; do [ "$(cat $d/class)" = 0x010802 ] && basename $d; done | head -1)
echo "nvme=$dev group=$(basename $(readlink /sys/bus/pci/devices/$dev/iommu_group))"
echo "groupsize=$(ls /sys/bus/pci/devices/$dev/iommu_group/devices | wc -l)"
echo "totalvfs=$(cat /sys/bus/pci/devices/$dev/sriov_totalvfs)"
echo 2 > /sys/bus/pci/devices/$dev/sriov_numvfs
echo "vfs=$(ls -d /sys/bus/pci/devices/$dev/virtfn* | wc -l)"
echo 0 > /sys/bus/pci/devices/$dev/sriov_numvfs
echo vfio-pci > /sys/bus/pci/devices/$dev/driver_override
[ -e /sys/bus/pci/devices/$dev/driver ] && echo $dev > /sys/bus/pci/devices/$dev/driver/unbind
echo $dev > /sys/bus/pci/drivers_probe
echo "driver=$(basename $(readlink /sys/bus/pci/devices/$dev/driver))"
test -c /dev/vfio/$(basename $(readlink /sys/bus/pci/devices/$dev/iommu_group)) && echo vfio-dev-ok
`
	var stdout bytes.Buffer
	err := Exec(context.Background(), Config{Timeout: 5 * time.Minute, IOMMU: true,
		NVMe: []NVMe{{Image: img, Size: 64 << 20, VFs: 2}}}, []string{"sh", "-c", script}, &stdout, os.Stderr)
	out := stdout.String()
	t.Logf("lab output:\n%s", out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"groupsize=1", "totalvfs=2", "vfs=2", "driver=vfio-pci", "vfio-dev-ok"} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q", want)
		}
	}
}

// TestBootWaitIsIdle: while L1 runs the command, the host side waits on
// channels; it must not spin. (It did: the closed "ready" channel kept
// winning the wait loop's select, so every lab run burned most of a host
// CPU that L1's emulated CPUs needed.) A stand-in for QEMU reports ready,
// sleeps two seconds and reports exit status 0; the test process may use
// only a fraction of that time in CPU.
func TestBootWaitIsIdle(t *testing.T) {
	script := filepath.Join(t.TempDir(), "qemu")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho '@@vio-lab ready' >&3\nsleep 2\necho '@@vio-lab exit 0' >&3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cpu := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			t.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	before := cpu()
	err := boot(context.Background(), Config{QEMU: script, BootTimeout: time.Minute}, nil, io.Discard, io.Discard)
	used := cpu() - before
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("CPU used while L1 (a stand-in) ran for 2 s: %v", used)
	if used > 100*time.Millisecond { // waiting costs a few ms; the spin cost over 200 even on a loaded host
		t.Fatalf("the host side used %v of CPU during a 2 s run: it spins instead of waiting", used)
	}
}

// TestL1Died: an L1 whose kernel panics after boot (a stand-in for QEMU
// prints the panic and exits without the command's status, as QEMU does
// with panic=-1 and -no-reboot) is ErrL1Died, which labtest retries, with
// the panic in the message, even when the report's call trace is longer
// than the console tail the message keeps.
func TestL1Died(t *testing.T) {
	script := filepath.Join(t.TempDir(), "qemu")
	body := "#!/bin/sh\necho '@@vio-lab ready' >&3\n" +
		"echo 'BUG: kernel NULL pointer dereference, address: 0000000000000008' >&3\n" +
		"echo 'RIP: 0010:svm_vcpu_run+0x42/0x90 [kvm_amd]' >&3\n" +
		"i=0; while [ $i -lt 100 ]; do echo ' ? do_syscall_64+0x69/0xb0' >&3; i=$((i+1)); done\n" +
		"echo 'Kernel panic - not syncing: Fatal exception' >&3\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	err := boot(context.Background(), Config{QEMU: script, BootTimeout: time.Minute}, nil, io.Discard, io.Discard)
	if !errors.Is(err, ErrL1Died) || !strings.Contains(err.Error(), "Kernel panic") {
		t.Fatalf("got %v, want ErrL1Died quoting L1's last console lines", err)
	}
	for _, want := range []string{"BUG: kernel NULL pointer dereference", "RIP: 0010:svm_vcpu_run"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not keep the report's headline %q past its long trace:\n%v", want, err)
		}
	}
	if errors.Is(err, ErrL1Locked) || errors.Is(err, ErrTimeout) {
		t.Fatalf("%v matches another lab error too", err)
	}
}

// TestL1Wedged: an L1 that reports ready and then goes silent (no
// heartbeat) is killed after WedgeTimeout as ErrL1Wedged, long before the
// run's deadline; one that keeps its heartbeat going through a run longer
// than WedgeTimeout is not.
func TestL1Wedged(t *testing.T) {
	dir := t.TempDir()
	silent := filepath.Join(dir, "silent")
	if err := os.WriteFile(silent, []byte("#!/bin/sh\necho '@@vio-lab ready' >&3\nexec sleep 600\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err := boot(context.Background(), Config{QEMU: silent, BootTimeout: time.Minute, WedgeTimeout: time.Second}, nil, io.Discard, io.Discard)
	if !errors.Is(err, ErrL1Wedged) {
		t.Fatalf("got %v, want ErrL1Wedged", err)
	}
	if d := time.Since(start); d > time.Minute {
		t.Fatalf("a silent L1 was noticed only after %v", d)
	}
	beating := filepath.Join(dir, "beating")
	script := "#!/bin/sh\necho '@@vio-lab ready' >&3\nfor i in 1 2 3 4 5 6 7 8 9 10; do sleep 0.2; echo '@@vio-lab alive' >&3; done\necho '@@vio-lab exit 0' >&3\n"
	if err := os.WriteFile(beating, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := boot(context.Background(), Config{QEMU: beating, BootTimeout: time.Minute, WedgeTimeout: time.Second}, nil, io.Discard, io.Discard); err != nil {
		t.Fatalf("an L1 with a heartbeat: %v", err)
	}
}

// TestQEMUArgsNICPair: the NIC pair is an e1000e and an e1000 with their
// MACs on one QEMU hub, on a q35 machine with the emulated IOMMU (VFIO
// needs it). It only builds the command line; nothing boots.
func TestQEMUArgsNICPair(t *testing.T) {
	args, err := qemuArgs(Config{NICPair: true, Dir: t.TempDir()}, &assets.Assets{Kernel: "vmlinuz"}, "l1.cpio.gz", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cmd := strings.Join(args, " ")
	for _, want := range []string{
		"-machine q35,kernel-irqchip=split", "-device intel-iommu,intremap=on,caching-mode=on", "intel_iommu=on",
		"-netdev hubport,id=nicpair0,hubid=7 -device e1000e,netdev=nicpair0,mac=" + NICPairPassMAC,
		"-netdev hubport,id=nicpair1,hubid=7 -device e1000,netdev=nicpair1,mac=" + NICPairPeerMAC,
	} {
		if !strings.Contains(cmd, want) {
			t.Errorf("the command line lacks %q:\n%s", want, cmd)
		}
	}
	args, _ = qemuArgs(Config{Dir: t.TempDir()}, &assets.Assets{Kernel: "vmlinuz"}, "l1.cpio.gz", t.TempDir())
	if cmd := strings.Join(args, " "); strings.Contains(cmd, "hubport") || strings.Contains(cmd, "q35") {
		t.Errorf("a lab without the pair has it: %s", cmd)
	}
}
