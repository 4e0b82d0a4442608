// Package demo is vio's demo (`make demo`): a stock Debian kernel booted by
// vio with a virtio disk, a virtio NIC on a TAP device and virtio-rng. The
// guest checks each step and reports evidence; after vio exits, the host
// checks that evidence against what it can see for itself (the guest's file
// read out of the disk image, the TAP's packet counters), so the demo fails
// loudly instead of claiming what did not happen.
package demo

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/viovmm/vio/lab/assets"
	"github.com/viovmm/vio/lab/labtest"
)

//go:embed guest.sh
var guestScript string

// Modules are the guest kernel modules the demo needs. ext4 serves ext2
// (Debian's kernel has no ext2.ko) and brings crc32c through its soft
// dependencies.
var Modules = []string{"virtio_pci", "virtio_blk", "virtio_net", "virtio_rng", "ext4"}

const (
	diskSize = 64 << 20
	tapName  = "viodemo0"
	hostAddr = "169.254.77.1/24"
)

// Prepared names the files a demo run uses, all in one directory.
type Prepared struct {
	Dir    string
	Kernel string
	Initrd string
	Disk   string
}

// Prepare builds the guest (initramfs with the given modules) and a fresh
// sparse disk image in dir. It needs the lab's assets (the Debian kernel
// and busybox); `vio-lab assets` fetches them.
func Prepare(a *assets.Assets, dir string, modules []string) (*Prepared, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	initrd, _, err := labtest.Guest{Script: guestScript, Modules: modules}.BuildIn(a, dir)
	if err != nil {
		return nil, fmt.Errorf("building the demo guest: %w", err)
	}
	p := &Prepared{Dir: dir, Kernel: a.Kernel, Initrd: initrd, Disk: filepath.Join(dir, "demo-disk.img")}
	os.Remove(p.Disk)
	f, err := os.Create(p.Disk)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return p, f.Truncate(diskSize)
}

// Load finds a prepared demo in dir (the lab run of the demo gets the
// directory, not the structure).
func Load(dir string) (*Prepared, error) {
	a, err := assets.Load(assets.DefaultDir())
	if err != nil {
		return nil, err
	}
	p := &Prepared{Dir: dir, Kernel: a.Kernel, Initrd: filepath.Join(dir, "initramfs.cpio.gz"), Disk: filepath.Join(dir, "demo-disk.img")}
	for _, f := range []string{p.Initrd, p.Disk} {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("the demo in %s is not prepared: %w", dir, err)
		}
	}
	return p, nil
}

// StepError is a demo step that failed, on the guest's side or the
// host's.
type StepError struct {
	Step, Why string
}

func (e *StepError) Error() string { return fmt.Sprintf("demo step %q failed: %s", e.Step, e.Why) }

// Run boots the prepared demo with the vio binary vio, streaming the
// guest's console to out, then checks the evidence. It needs root (it
// creates a TAP device) and a KVM that boots Linux at speed. It returns
// nil only if every step happened and the host confirmed it.
func Run(ctx context.Context, p *Prepared, vio string, out io.Writer) error {
	if err := run("ip", "tuntap", "add", tapName, "mode", "tap"); err != nil {
		return &StepError{"net", fmt.Sprintf("cannot create the TAP device %s: %v", tapName, err)}
	}
	defer run("ip", "link", "del", tapName)
	if err := run("ip", "addr", "add", hostAddr, "dev", tapName); err != nil {
		return &StepError{"net", err.Error()}
	}
	if err := run("ip", "link", "set", tapName, "up"); err != nil {
		return &StepError{"net", err.Error()}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	// One vCPU: a two-vCPU guest inside the lab's emulated machine has
	// been seen to take more than ten minutes to reach its init when the
	// host's two cores are shared (suite runs), and the demo is about I/O.
	cmd := exec.CommandContext(ctx, vio, "run", "--kernel", p.Kernel, "--initrd", p.Initrd,
		"--cpus", "1", "--memory", "256M", "--disk", "path="+p.Disk, "--net", "tap="+tapName,
		"--rng", "--cmdline", "console=ttyS0 quiet panic=-1")
	var console bytes.Buffer
	cmd.Stdout = io.MultiWriter(out, &console)
	cmd.Stderr = cmd.Stdout
	runErr := cmd.Run()
	if ctx.Err() != nil {
		return &StepError{"boot", "the guest did not power off within 10 minutes"}
	}
	ev := parseEvidence(console.String())
	if ev.failed != nil {
		return ev.failed
	}
	if runErr != nil {
		return &StepError{"poweroff", fmt.Sprintf("vio did not exit cleanly: %v", runErr)}
	}
	if !ev.done {
		return &StepError{"boot", "the guest never finished its steps (no DEMO-DONE on its console)"}
	}
	return verify(p, ev, out)
}

// evidence is what the guest reported.
type evidence struct {
	diskSHA256  string
	pingReplies int
	done        bool
	failed      *StepError
}

func parseEvidence(console string) evidence {
	var ev evidence
	sc := bufio.NewScanner(strings.NewReader(console))
	for sc.Scan() {
		l := strings.TrimRight(sc.Text(), "\r")
		i := strings.Index(l, "DEMO-")
		if i < 0 {
			continue
		}
		l = l[i:]
		switch {
		case strings.HasPrefix(l, "DEMO-FAIL "):
			step, why, _ := strings.Cut(strings.TrimPrefix(l, "DEMO-FAIL "), ": ")
			if ev.failed == nil {
				ev.failed = &StepError{step, "in the guest: " + why}
			}
		case strings.HasPrefix(l, "DEMO-DISK "):
			ev.diskSHA256 = field(l, "sha256")
		case strings.HasPrefix(l, "DEMO-NET "):
			ev.pingReplies, _ = strconv.Atoi(field(l, "replies"))
		case l == "DEMO-DONE":
			ev.done = true
		}
	}
	return ev
}

func field(line, key string) string {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	return ""
}

// verify checks the guest's evidence against what the host sees.
func verify(p *Prepared, ev evidence, out io.Writer) error {
	fmt.Fprintln(out, "=== host side: checking what the guest reported")
	if ev.diskSHA256 == "" {
		return &StepError{"disk", "the guest reported no file hash"}
	}
	if b, err := exec.Command("e2fsck", "-fn", p.Disk).CombinedOutput(); err != nil {
		return &StepError{"disk", fmt.Sprintf("e2fsck finds the guest's filesystem damaged: %v\n%s", err, b)}
	}
	data, err := exec.Command("debugfs", "-R", "cat /demo.bin", p.Disk).Output()
	if err != nil {
		return &StepError{"disk", fmt.Sprintf("debugfs cannot read /demo.bin from the image: %v", err)}
	}
	sum := sha256.Sum256(data)
	if got := hex.EncodeToString(sum[:]); got != ev.diskSHA256 || len(data) != 4<<20 {
		return &StepError{"disk", fmt.Sprintf("the image holds %d bytes with sha256 %s; the guest wrote 4 MiB with sha256 %s", len(data), got, ev.diskSHA256)}
	}
	fmt.Fprintf(out, "    disk: the host read /demo.bin out of %s (debugfs): 4 MiB, sha256 %s, the same as the guest's; e2fsck clean\n", filepath.Base(p.Disk), ev.diskSHA256[:16])
	// The TAP's counters are read while it still exists (Run deletes it
	// after verify returns).
	rx, err := os.ReadFile("/sys/class/net/" + tapName + "/statistics/rx_packets")
	if err != nil {
		return &StepError{"net", err.Error()}
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(rx)))
	if n < ev.pingReplies || ev.pingReplies == 0 {
		return &StepError{"net", fmt.Sprintf("the TAP device received %d packets from the guest, which reported %d ping replies", n, ev.pingReplies)}
	}
	fmt.Fprintf(out, "    net: the host's TAP %s received %d packets from the guest; the guest got %d ping replies\n", tapName, n, ev.pingReplies)
	fmt.Fprintln(out, "=== demo passed: every step happened and the host confirmed it")
	return nil
}

func run(argv ...string) error {
	b, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(argv, " "), err, bytes.TrimSpace(b))
	}
	return nil
}
