package e2e

import (
	"bufio"
	"cmp"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/viovmm/vio/lab/labtest"
	"github.com/viovmm/vio/loader/loadertest"
)

const guestMemMiB = 256

// vioArgs is the common part of a vio command line for the lab's kernel.
func vioArgs(t *testing.T, initrd string, extra ...string) []string {
	a := labtest.Assets(t)
	return append([]string{vioBin, "run", "--kernel", a.Kernel, "--initrd", initrd,
		"--memory", strconv.Itoa(guestMemMiB) + "M", "--cmdline", "console=ttyS0 panic=-1 quiet"}, extra...)
}

// TestVioBoot boots the Debian kernel with 1 and 2 vCPUs, as a bzImage and
// as an ELF vmlinux: the guest must
// reach its /init, see the CPUs and memory it was given and use kvm-clock,
// and its poweroff must make vio exit 0.
func TestVioBoot(t *testing.T) {
	initrd := labtest.Initramfs(t, guestScript)
	// The same kernel as an uncompressed ELF vmlinux, which vio boots
	// without running the decompressor.
	bz, err := os.ReadFile(labtest.Assets(t).Kernel)
	if err != nil {
		t.Fatal(err)
	}
	elf, err := loadertest.Vmlinux(bz)
	if err != nil {
		t.Fatal(err)
	}
	vmlinux := filepath.Join(t.TempDir(), "vmlinux")
	if err := os.WriteFile(vmlinux, elf, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		cpus   int
		kernel string
	}{{"1cpu", 1, ""}, {"2cpu", 2, ""}, {"vmlinux-2cpu", 2, vmlinux}} {
		cpus := c.cpus
		t.Run(c.name, func(t *testing.T) {
			args := vioArgs(t, initrd, "--cpus", strconv.Itoa(cpus))
			if c.kernel != "" {
				args[3] = c.kernel // after "run --kernel"
			}
			// The SMBIOS identity: vio's defaults, or what --platform
			// sets (a NoCloud seed in the serial, as cloud-init reads it).
			wantVendor, wantProduct, wantSerial, wantUUID := "vio", "vio virtual machine", "", ""
			if c.name == "2cpu" {
				wantVendor, wantProduct, wantSerial, wantUUID = "Example Corp", "Box 9", "ds=nocloud;h=vm1", "01234567-89ab-4def-8123-456789abcdef"
				args = append(args, "--platform", "manufacturer="+wantVendor+",product_name="+wantProduct+",serial_number="+wantSerial+",uuid="+wantUUID)
			}
			out, err := runVMM(t, 4*time.Minute, args...)
			if err != nil {
				t.Fatalf("vio: %v\n%s", err, out)
			}
			gotCPUs, memKB, clock := facts(t, out)
			if gotCPUs != strconv.Itoa(cpus) {
				t.Errorf("guest saw %s CPUs, want %d", gotCPUs, cpus)
			}
			if clock != "kvm-clock" {
				t.Errorf("guest clocksource %s, want kvm-clock", clock)
			}
			// MemTotal is RAM less what the kernel keeps for itself.
			kb, _ := strconv.Atoi(memKB)
			if kb > guestMemMiB<<10 || kb < guestMemMiB<<10*3/4 {
				t.Errorf("guest MemTotal %d kB for %d MiB of RAM", kb, guestMemMiB)
			}
			vendor, product, serial, uuid := dmi(t, out)
			if vendor != wantVendor || product != wantProduct || serial != wantSerial {
				t.Errorf("guest DMI vendor %q product %q serial %q, want %q %q %q", vendor, product, serial, wantVendor, wantProduct, wantSerial)
			}
			if wantUUID == "" && !uuidV4.MatchString(uuid) || wantUUID != "" && uuid != wantUUID {
				t.Errorf("guest DMI product_uuid %q, want %s", uuid, cmp.Or(wantUUID, "a random version 4 UUID"))
			}
		})
	}
}

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// TestVioPanic: a guest kernel panic is reported as such (exit status 3),
// even though panic=-1 makes the guest ask for a reboot right after.
func TestVioPanic(t *testing.T) {
	initrd := labtest.Initramfs(t, "echo VIO-GUEST-PANICKING\necho c > /proc/sysrq-trigger\nsleep 60\n")
	out, err := runVMM(t, 4*time.Minute, vioArgs(t, initrd, "--on-reboot", "restart")...)
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 3 || !strings.Contains(out, "guest kernel panicked") {
		t.Fatalf("want exit status 3 with a panic report, got %v; output:\n%s", err, out)
	}
}

// TestVioReboot: with --on-reboot=exit a guest reboot ends vio cleanly;
// with restart the guest boots again (seen twice on the serial console),
// and vio stops cleanly on SIGTERM.
func TestVioReboot(t *testing.T) {
	initrd := labtest.Initramfs(t, "echo VIO-GUEST-BOOTED\nreboot -f\nsleep 60\n")
	t.Run("exit", func(t *testing.T) {
		args := vioArgs(t, initrd, "--on-reboot", "exit")
		out, err := runVMM(t, 4*time.Minute, args...)
		if err == nil && !strings.Contains(out, "VIO-GUEST-BOOTED") && strings.Contains(out, "triple fault") {
			// Seen once in CI (2026-12-07): a reset 3 s before the boot
			// normally ends, with nothing on the console. Under the
			// default --on-reboot=restart such a reset just boots again;
			// here it ends the run, so it is reported and run once more,
			// as LAB.md asks of lab hazards. Twice in a row fails.
			t.Logf("lab hazard: the guest triple-faulted before its /init ran; booting once more. vio said:\n%s", out)
			out, err = runVMM(t, 4*time.Minute, args...)
		}
		if err != nil || !strings.Contains(out, "VIO-GUEST-BOOTED") || !strings.Contains(out, "guest rebooted") {
			t.Fatalf("want a clean exit after one boot, got %v; output:\n%s", err, out)
		}
	})
	t.Run("restart", func(t *testing.T) {
		if os.Getenv("VIO_TEST_REBOOT_RESTART") == "" {
			// Seen hanging in the lab in 1 (likely 2) of 5 suite runs on
			// 2026-12-05: after SIGTERM the vio process never exited, not
			// even when killed at the 6-minute deadline, which points at
			// a thread stuck in L1's KVM (nested SVM under TCG). Until
			// that is understood it would turn a whole suite red: it runs
			// on request only, and the skip shows in every summary.
			t.Skip("hangs intermittently in the lab (vio unkillable after SIGTERM during a restart): set VIO_TEST_REBOOT_RESTART=1 to run it")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
		defer cancel()
		args := vioArgs(t, initrd, "--on-reboot", "restart", "--shutdown-timeout", "0")
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// The console stream outlives each VM: count the boots in it,
		// and stop vio at the second.
		boots := 0
		sc := bufio.NewScanner(out)
		for boots < 2 && sc.Scan() {
			if strings.Contains(sc.Text(), "VIO-GUEST-BOOTED") {
				boots++
			}
		}
		cmd.Process.Signal(syscall.SIGTERM)
		go io.Copy(io.Discard, out)
		err = cmd.Wait()
		if boots < 2 {
			t.Fatalf("saw %d boots before the deadline (%v)", boots, ctx.Err())
		}
		if err != nil {
			t.Fatalf("vio did not stop cleanly on SIGTERM: %v", err)
		}
	})
}

// buttonGuest waits for the ACPI power button (the button driver turns
// the press into a KEY_POWER input event) and then powers off, as an init
// system does; ignoreGuest never looks.
const (
	buttonGuest = `for d in /sys/class/input/input*; do
	[ "$(cat $d/name)" = "Power Button" ] && ev=/dev/input/$(basename $d/event*)
done
[ -n "$ev" ] || { echo "VIO-GUEST no power button"; ls /sys/class/input; }
# Open the event device before saying so: evdev gives an event only to
# readers that have it open when it happens.
exec 3< "$ev"
echo VIO-GUEST-WAITING
head -c 24 <&3 > /dev/null
echo VIO-GUEST-BUTTON
sync
poweroff -f
`
	ignoreGuest = "echo VIO-GUEST-WAITING\nsleep 600\n"
)

// TestGracefulStop: SIGTERM presses the guest's power button; a guest
// that powers off makes vio exit 0, one that ignores the button is stopped
// after --shutdown-timeout with exit status 1 and a message saying so.
func TestGracefulStop(t *testing.T) {
	for _, c := range []struct {
		name, script, timeout string
		modules               []string
		wantExit              int
		want                  string
	}{
		{"powers-off", buttonGuest, "2m", []string{"button", "evdev"}, 0, "VIO-GUEST-BUTTON"},
		{"ignores", ignoreGuest, "3s", nil, 1, "did not power off within 3s of the power button"},
	} {
		t.Run(c.name, func(t *testing.T) {
			initrd := labtest.Initramfs(t, c.script, c.modules...)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			args := vioArgs(t, initrd, "--shutdown-timeout", c.timeout)
			cmd := exec.CommandContext(ctx, args[0], args[1:]...)
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr strings.Builder
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var console strings.Builder
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				console.WriteString(sc.Text() + "\n")
				if strings.Contains(sc.Text(), "VIO-GUEST-WAITING") {
					break
				}
			}
			cmd.Process.Signal(syscall.SIGTERM)
			for sc.Scan() {
				console.WriteString(sc.Text() + "\n")
			}
			err = cmd.Wait()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			all := console.String() + stderr.String()
			if ctx.Err() != nil || code != c.wantExit || !strings.Contains(all, c.want) {
				t.Fatalf("exit status %d (%v), want %d and %q; console and stderr:\n%s", code, ctx.Err(), c.wantExit, c.want, all)
			}
		})
	}
}
