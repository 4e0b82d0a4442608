package e2e

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/viovmm/vio/lab/labtest"
)

// sandboxGuest writes on both disks and reboots; in its second life (the
// VM rebuilt by vio, which reopens every file, now confined) it reads
// back what the first wrote and what the qcow2 disk's backing file holds.
const sandboxGuest = `
if [ "$(dd if=/dev/vda bs=6 count=1 2>/dev/null)" = "BOOT-1" ]; then
	w=$(dd if=/dev/vdb bs=512 skip=2048 count=1 2>/dev/null | head -c 9)
	b=$(dd if=/dev/vdb bs=9 count=1 2>/dev/null)
	echo "VIO-SANDBOX boot=2 written=$w base=$b"
	poweroff -f
fi
printf BOOT-1 | dd of=/dev/vda conv=fsync 2>/dev/null
printf WRITTEN-1 | dd of=/dev/vdb bs=512 seek=2048 conv=fsync 2>/dev/null
b=$(dd if=/dev/vdb bs=9 count=1 2>/dev/null)
echo "VIO-SANDBOX boot=1 base=$b"
reboot -f
`

// TestSandbox: vio confines itself by default. A guest does disk I/O on a
// raw disk and on a qcow2 disk over a backing file, reboots, and does it
// again in the VM vio rebuilds under its seccomp filter and Landlock
// ruleset (every file reopened, the backing file included); the API
// socket is still removed at exit. Then the filter is shown to bite: with
// VIO_SANDBOX_SELFTEST vio makes a forbidden call once confined and is
// stopped with a report naming it, or killed by the kernel in kill mode.
func TestSandbox(t *testing.T) {
	dir := t.TempDir()
	raw, base, top := filepath.Join(dir, "raw.img"), filepath.Join(dir, "base.raw"), filepath.Join(dir, "top.qcow2")
	if err := os.WriteFile(raw, make([]byte, 4<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(base, append([]byte("BASE-DATA"), make([]byte, 4<<20-9)...), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", top)
	initrd := labtest.Initramfs(t, sandboxGuest, "virtio_pci", "virtio_blk")
	sock := filepath.Join(dir, "api.sock")

	t.Run("workload", func(t *testing.T) {
		out, err := runVMM(t, 5*time.Minute, vioArgs(t, initrd, "-v", "--sandbox=on", "--rng", "--api-socket", sock,
			"--disk", "path="+raw+",format=raw", "--disk", "path="+top+",format=qcow2")...)
		if err != nil {
			t.Fatalf("vio: %v\n%s", err, out)
		}
		on := regexp.MustCompile(`msg="sandbox on" mode=on seccomp=true syscalls=\d+ landlock_abi=(\d+)`).FindStringSubmatch(out)
		if on == nil {
			t.Fatalf("vio did not report its sandbox on:\n%s", out)
		}
		t.Logf("sandbox: %s", on[0])
		if on[1] == "0" {
			// The lab's L1 kernel decides; say what it said.
			t.Logf("no Landlock in this kernel: %s", regexp.MustCompile(`msg="sandbox: [^"]*"`).FindString(out))
		}
		for _, want := range []string{"VIO-SANDBOX boot=1 base=BASE-DATA", "VIO-SANDBOX boot=2 written=WRITTEN-1 base=BASE-DATA"} {
			if !strings.Contains(out, want) {
				t.Errorf("the guest did not say %q:\n%s", want, out)
			}
		}
		if strings.Contains(out, "SIGSYS") {
			t.Errorf("a system call was refused:\n%s", out)
		}
		if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the API socket outlived vio: %v", err)
		}
	})

	bites := func(t *testing.T, extra ...string) (string, *os.ProcessState) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		args := vioArgs(t, initrd, append(extra, "--disk", "path="+raw+",format=raw")...)
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.Env = append(os.Environ(), "VIO_SANDBOX_SELFTEST=1")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("vio with a forbidden call: %v, want it stopped\n%s", err, out.String())
		}
		return out.String(), cmd.ProcessState
	}
	t.Run("bites", func(t *testing.T) {
		out, st := bites(t, "--sandbox=on")
		if st.ExitCode() != 2 || !strings.Contains(out, "SIGSYS: bad system call") || !strings.Contains(out, "rax    0x8b\n") {
			t.Fatalf("exit status %d, want 2 with a report of sysfs (0x8b):\n%s", st.ExitCode(), out)
		}
		if strings.Contains(out, "the sandbox let it through") {
			t.Fatalf("the forbidden call ran:\n%s", out)
		}
	})
	t.Run("kill", func(t *testing.T) {
		out, st := bites(t, "--sandbox=kill")
		if ws := st.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGSYS {
			t.Fatalf("vio ended with %v, want killed by SIGSYS:\n%s", st, out)
		}
	})
}
