package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
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

// TestSandbox: vio confines itself with --sandbox=on, and jails itself with --jail. A guest does disk I/O on a
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

	// Jailed: the same workload, with vio's VM process in new
	// namespaces, chrooted into the VM's files, as nobody. While the
	// guest runs its second life (a VM rebuilt inside the jail, /dev/kvm,
	// the disks and the backing file reopened there as nobody), the test
	// reads the jailed process's uid and mount namespace from /proc.
	t.Run("jail", func(t *testing.T) {
		const nobody = 65534
		jdir := filepath.Join(dir, "jail")
		if err := os.Mkdir(jdir, 0o755); err != nil {
			t.Fatal(err)
		}
		jraw, jbase, jtop := filepath.Join(jdir, "raw.img"), filepath.Join(jdir, "base.raw"), filepath.Join(jdir, "top.qcow2")
		if err := os.WriteFile(jraw, make([]byte, 4<<20), 0o644); err != nil {
			t.Fatal(err)
		}
		run(t, "cp", base, jbase)
		run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", jtop)
		// The jailed VMM reads the initramfs again at the reboot, as
		// nobody: it must be nobody's to read, as the disks must be.
		jinitrd := filepath.Join(jdir, "initramfs.cpio.gz")
		run(t, "cp", initrd, jinitrd)
		for _, f := range []string{jdir, jraw, jbase, jtop, jinitrd} {
			if err := os.Chown(f, nobody, nobody); err != nil {
				t.Fatal(err)
			}
		}
		jsock := filepath.Join(jdir, "api.sock")
		args := vioArgs(t, jinitrd, "-v", "--jail", "uid=65534,gid=65534", "--sandbox=on", "--rng", "--api-socket", jsock,
			"--disk", "path="+jraw+",format=raw", "--disk", "path="+jtop+",format=qcow2")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		pr, pw := io.Pipe()
		cmd.Stdout, cmd.Stderr = pw, pw
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var out strings.Builder
		var seen string // what /proc showed of the jailed process
		scanned := make(chan struct{})
		go func() {
			defer close(scanned)
			sc := bufio.NewScanner(pr)
			for sc.Scan() {
				out.WriteString(sc.Text() + "\n")
				if seen == "" && strings.Contains(sc.Text(), "VIO-SANDBOX boot=1") {
					seen = jailedProcess(cmd.Process.Pid)
				}
			}
		}()
		err := cmd.Wait()
		pw.Close()
		<-scanned
		if err != nil {
			t.Fatalf("jailed vio: %v\n%s", err, out.String())
		}
		t.Logf("the jailed VMM: %s", seen)
		if want := fmt.Sprintf("uid=%d/%d/%d/%d gid=%d/%d/%d/%d capeff=0000000000000000 own-mount-ns=true", nobody, nobody, nobody, nobody, nobody, nobody, nobody, nobody); seen != want {
			t.Errorf("the jailed VMM: %s, want %s", seen, want)
		}
		for _, want := range []string{"VIO-SANDBOX boot=1 base=BASE-DATA", "VIO-SANDBOX boot=2 written=WRITTEN-1 base=BASE-DATA"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("the guest did not say %q:\n%s", want, out.String())
			}
		}
		if strings.Contains(out.String(), "SIGSYS") {
			t.Errorf("a system call was refused:\n%s", out.String())
		}
		if left, _ := filepath.Glob(filepath.Join(os.TempDir(), "vio-jail-*")); len(left) != 0 {
			t.Errorf("jail directories left behind: %v", left)
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

// jailedProcess describes the child of pid (vio's jailed VMM) from /proc:
// its real, effective, saved and filesystem uids and gids, its effective
// capabilities, and whether its mount namespace differs from pid's.
func jailedProcess(pid int) string {
	var child string
	var status []byte
	procs, _ := filepath.Glob("/proc/[0-9]*/status")
	for _, f := range procs {
		b, err := os.ReadFile(f)
		if err == nil && regexp.MustCompile(`(?m)^PPid:\s+`+fmt.Sprint(pid)+`$`).Match(b) {
			if child != "" {
				return "more than one child of " + fmt.Sprint(pid)
			}
			child, status = filepath.Base(filepath.Dir(f)), b
		}
	}
	if child == "" {
		return "no child of " + fmt.Sprint(pid)
	}
	field := func(name string) string {
		for _, l := range strings.Split(string(status), "\n") {
			if v, ok := strings.CutPrefix(l, name+":"); ok {
				return strings.Join(strings.Fields(v), "/")
			}
		}
		return "?"
	}
	ns := func(p string) string { l, _ := os.Readlink("/proc/" + p + "/ns/mnt"); return l }
	return fmt.Sprintf("uid=%s gid=%s capeff=%s own-mount-ns=%v", field("Uid"), field("Gid"), field("CapEff"),
		ns(child) != "" && ns(child) != ns(fmt.Sprint(pid)))
}
