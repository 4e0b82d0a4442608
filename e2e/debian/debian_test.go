package debian

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	debimage "github.com/viovmm/vio/lab/debian"
)

// Deadlines. A full boot of Debian (systemd, udev, cloud-init's four
// stages in Python) runs at the nested lab's emulated speed: from starting
// the VMM to systemd's "running", vio took 106 s and 230 s in two labs and
// QEMU 110 s (2026-12-07, a 2-core machine with other labs running, so
// the spread is mostly load); vio's SIGTERM stop took 8 s, and copying the
// overlay out for e2fsck 94-170 s. Generous margins: these bound a hang,
// they are not speed assertions.
const (
	bootDeadline   = 25 * time.Minute // vio or QEMU started → systemd running
	reportDeadline = 5 * time.Minute  // systemd running → the report's end
	// bootSilence ends a boot whose console printed nothing for that long:
	// the slowest boots seen print a line at least every 2 minutes.
	bootSilence = 8 * time.Minute
	// QEMU's boot takes 1-2 minutes in a quiet lab: twelve minutes is
	// a boot that stopped (see bootQEMU).
	qemuBootDeadline = 12 * time.Minute
	shutdownWait     = 5 * time.Minute // vio's --shutdown-timeout
	exitDeadline     = shutdownWait + 2*time.Minute
)

const (
	guestHost   = "viodeb"
	guestUser   = "tester"
	guestSerial = "VIO-DEBIAN-0042"
)

// reportScript runs once the guest's boot is over (cloud-init's runcmd
// starts it as a transient service, so that it can wait for the boot to
// end without waiting for itself) and writes what the test checks to the
// serial console, each line marked VIOREPORT and a key.
const reportScript = `#!/bin/sh
exec >/dev/ttyS0 2>&1
r() { sed "s/^/VIOREPORT $1 /"; }
echo "VIOREPORT state $(systemctl is-system-running --wait)"
systemctl --failed --no-legend --plain | r failed
echo "VIOREPORT hostname $(hostname)"
echo "VIOREPORT id $(id ` + guestUser + ` 2>&1)"
echo "VIOREPORT key $(head -1 /home/` + guestUser + `/.ssh/authorized_keys 2>&1)"
dmidecode -t system | r dmi
grep -E 'ttyS0|i8042' /proc/interrupts | r irq
echo "VIOREPORT uptime $(cut -d' ' -f1 /proc/uptime)"
systemd-analyze 2>&1 | head -1 | r analyze
systemd-analyze blame 2>&1 | head -6 | r blame
cloud-init status --long 2>&1 | r cloudinit
echo "VIOREPORT end"
`

// userData is the #cloud-config: a host name, a user with an SSH key, and
// the report.
func userData(key string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "#cloud-config\nhostname: %s\nusers:\n  - name: %s\n    shell: /bin/bash\n    ssh_authorized_keys:\n      - %s\n", guestHost, guestUser, key)
	b.WriteString("write_files:\n  - path: /usr/local/sbin/vio-report\n    permissions: '0755'\n    content: |\n")
	for _, l := range strings.Split(strings.TrimRight(reportScript, "\n"), "\n") {
		b.WriteString("      " + l + "\n")
	}
	b.WriteString("runcmd:\n  - [systemd-run, --no-block, --unit=vio-report, /usr/local/sbin/vio-report]\n")
	return b.String()
}

func authorizedKey(t *testing.T) string {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))) + " vio-test"
}

func writeSeed(t *testing.T, dir, userData, instance string) (ud, md string) {
	ud, md = filepath.Join(dir, "user-data"), filepath.Join(dir, "meta-data")
	if err := os.WriteFile(ud, []byte(userData), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(md, []byte("instance-id: "+instance+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return ud, md
}

// overlay makes a qcow2 overlay over the cached image in dir: the boot
// writes there and the cache is never written.
func overlay(t *testing.T, dir, name string) string {
	if imagePath == "" {
		t.Fatal("no Debian image: VIO_DEBIAN_IMAGE is unset (TestMain builds it on the host)")
	}
	p := filepath.Join(dir, name)
	out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", imagePath, p).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	return p
}

func newUUID(t *testing.T) string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	b[6], b[8] = b[6]&0x0f|0x40, b[8]&0x3f|0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// guest is a running VMM with its console.
type guest struct {
	cmd     *exec.Cmd
	con     *console
	stderr  strings.Builder
	start   time.Time
	exited  chan struct{} // closed when the process has been waited for
	waitErr error         // its exit, once exited is closed
}

func startGuest(t *testing.T, argv ...string) *guest {
	t.Logf("running %s", strings.Join(argv, " "))
	g := &guest{cmd: exec.Command(argv[0], argv[1:]...), exited: make(chan struct{})}
	out, err := g.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	g.cmd.Stderr = &g.stderr
	g.start = time.Now()
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	g.con = newConsole(out)
	go func() { g.waitErr = g.cmd.Wait(); close(g.exited) }()
	t.Cleanup(func() {
		select {
		case <-g.exited:
		default:
			g.cmd.Process.Kill()
			<-g.exited
		}
	})
	return g
}

// failure is a failure message with the console's tail and stderr.
func (g *guest) failure(format string, args ...any) string {
	return fmt.Sprintf(format, args...) + fmt.Sprintf("\n--- the console's last 60 lines:\n%s\n--- stderr:\n%s", g.con.tail(60), g.stderr.String())
}

// waitReport waits for the report's state line (its time is the boot
// time) and its end.
func (g *guest) waitReport() (time.Duration, error) {
	i, at, err := g.con.waitForLive("VIOREPORT state ", 0, bootDeadline, bootSilence)
	if err != nil {
		return 0, err
	}
	if _, _, err := g.con.waitFor("VIOREPORT end", i, reportDeadline); err != nil {
		return 0, err
	}
	return at.Sub(g.start), nil
}

// logReport logs the boot time and what the report says of the boot.
func (g *guest) logReport(t *testing.T, who string) {
	_, at, _ := g.con.waitFor("VIOREPORT state ", 0, 0)
	t.Logf("%s: systemd reported %q %.1f s after %s started", who, g.con.prefixed("VIOREPORT state")[0], at.Sub(g.start).Seconds(), who)
	// blame: the slowest units, to say where two VMMs' boots differ.
	for _, k := range []string{"analyze", "blame", "cloudinit", "uptime"} {
		for _, l := range g.con.prefixed("VIOREPORT " + k) {
			t.Logf("%s: %s: %s", who, k, l)
		}
	}
}

// bootAndReport waits for the report and logs it, failing the test if
// there is none.
func (g *guest) bootAndReport(t *testing.T, who string) time.Duration {
	boot, err := g.waitReport()
	if err != nil {
		t.Fatal(g.failure("%s: %v", who, err))
	}
	g.logReport(t, who)
	return boot
}

// TestDebianBoot boots the Debian image as a user would: vio with the disk
// and a cloud-init seed and nothing else (no --kernel: vio follows the
// image's grub.cfg), then the same image under QEMU with SeaBIOS and the
// image's own GRUB, and compares their boot times. On vio it checks what
// the guest reports (systemd running with no failed unit, cloud-init's
// host name and user, vio's SMBIOS identity, ISA interrupts), then stops
// it with SIGTERM (the ACPI power button), which must end in the guest's
// own power-off and vio's exit 0, and checks the root file system is
// clean with e2fsck on the host. (A guest that ignores the button is
// TestGracefulStop's case in e2e.)
func TestDebianBoot(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatal("qemu-system-x86_64 is not installed: run scripts/setup-host")
	}
	key := authorizedKey(t)
	var vioBoot, qemuBoot time.Duration
	t.Run("vio", func(t *testing.T) { vioBoot = bootVio(t, key) })
	t.Run("qemu", func(t *testing.T) { qemuBoot = bootQEMU(t, key) })
	if vioBoot > 0 && qemuBoot > 0 {
		t.Logf("boot to systemd running (same image, same lab run): vio %.1f s, QEMU %.1f s", vioBoot.Seconds(), qemuBoot.Seconds())
		fmt.Printf("debian: boot to systemd running: vio %.1f s, QEMU %.1f s (nested lab: compare only side by side)\n", vioBoot.Seconds(), qemuBoot.Seconds())
	}
}

// vioRun is one boot of the image under vio, run to its end: the boot
// and the report, then SIGTERM and vio's exit.
type vioRun struct {
	g          *guest
	dir, disk  string
	uuid       string
	boot       time.Duration
	bootErr    error  // no report (the console's tail is in failure)
	silent     string // the guest fell silent: vio's goroutine dump (SIGQUIT)
	stopWait   time.Duration
	exitInTime bool
}

// runVio boots the image under vio and, once the guest has reported,
// presses its power button (SIGTERM) and waits for vio to exit.
func runVio(t *testing.T, key string) *vioRun {
	r := &vioRun{dir: t.TempDir(), uuid: newUUID(t)}
	r.disk = overlay(t, r.dir, "vio.qcow2")
	ud, md := writeSeed(t, r.dir, userData(key), "vio-debian-"+r.uuid[:8])
	r.g = startGuest(t, vioBin, "run",
		"--disk", "path="+r.disk+",format=qcow2,backing=allow",
		"--cloud-init", "user-data="+ud+",meta-data="+md,
		"--memory", "1G", "--cpus", "2",
		"--platform", "serial_number="+guestSerial+",uuid="+r.uuid,
		"--shutdown-timeout", shutdownWait.String())
	r.boot, r.bootErr = r.g.waitReport()
	if errors.Is(r.bootErr, errSilent) {
		// Where were the vCPUs? A Go program answers SIGQUIT with every
		// goroutine's stack on stderr, then exits.
		r.g.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-r.g.exited:
		case <-time.After(30 * time.Second):
		}
		r.labReset() // kills it if the dump did not end it; stderr is complete after
		r.silent = vcpuGoroutines(r.g.stderr.String())
	}
	if r.bootErr != nil {
		return r
	}
	stopped := time.Now()
	if err := r.g.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.g.exited:
		r.exitInTime = true
	case <-time.After(exitDeadline):
	}
	r.stopWait = time.Since(stopped)
	return r
}

// labReset reports whether vio restarted the guest after a triple fault:
// in this lab, nested guests reset on their own (QEMU's too, see
// bootQEMU), and vio, as a PC does, boots them again.
// A vio still running by then (no report, or no exit in time) is killed
// first: its stderr is read only once it has exited.
func (r *vioRun) labReset() bool {
	select {
	case <-r.g.exited:
	default:
		r.g.cmd.Process.Kill()
		<-r.g.exited
	}
	return strings.Contains(r.g.stderr.String(), "guest triple-faulted")
}

// bootVio is TestDebianBoot's vio half: a run to its end (runVio), made
// once more if the lab reset the guest, then the checks of what the
// guest reported, of its stop and of its file system.
func bootVio(t *testing.T, key string) time.Duration {
	r := runVio(t, key)
	if r.silent != "" {
		// Seen on 2026-12-07 in a lab running four labs on two CPUs: the
		// console stopped mid-line 10 s into the kernel (the i8042 probe)
		// and stayed silent for 25 minutes. Whether the lab froze the
		// guest's CPUs or vio stopped them is not known; the dump says
		// where vio's vCPU threads were. Reported, and made once more: a
		// hang of vio's making repeats and fails.
		t.Logf("the guest fell silent (%v); running the whole boot once more. vio's vCPU goroutines:\n%s", r.bootErr, r.silent)
		r = runVio(t, key)
	} else if r.labReset() {
		// Seen on 2026-12-07: vCPU 1 reset at 15.9 s of the kernel, and
		// in another run during the shutdown, as QEMU's guest reset in a
		// third. Reported, and the whole run made once more (LAB.md).
		t.Logf("lab hazard: the guest triple-faulted and vio restarted it; running the whole boot once more. vio said:\n%s", r.g.stderr.String())
		r = runVio(t, key)
	}
	g, boot := r.g, r.boot
	if r.bootErr != nil {
		t.Fatal(g.failure("vio: %v", r.bootErr))
	}
	g.logReport(t, "vio")
	rep := func(k string) []string { return g.con.prefixed("VIOREPORT " + k) }
	uuid, dir, disk := r.uuid, r.dir, r.disk
	t.Run("running", func(t *testing.T) {
		if s := rep("state"); len(s) != 1 || s[0] != "running" {
			t.Errorf("systemctl is-system-running --wait: %q, want running", s)
		}
	})
	t.Run("no-failed-units", func(t *testing.T) {
		if f := rep("failed"); len(f) > 0 {
			t.Errorf("systemctl --failed lists:\n%s", strings.Join(f, "\n"))
		}
	})
	t.Run("cloud-init", func(t *testing.T) {
		if h := rep("hostname"); len(h) != 1 || h[0] != guestHost {
			t.Errorf("hostname %q, want %q (from user-data)", h, guestHost)
		}
		if id := rep("id"); len(id) != 1 || !strings.Contains(id[0], "("+guestUser+")") {
			t.Errorf("id %s: %q, want the user cloud-init created", guestUser, id)
		}
		if k := rep("key"); len(k) != 1 || k[0] != key {
			t.Errorf("%s's authorized_keys: %q, want %q", guestUser, k, key)
		}
	})
	t.Run("smbios", func(t *testing.T) {
		dmi := strings.Join(rep("dmi"), "\n")
		for _, want := range []string{"Manufacturer: vio", "Product Name: vio virtual machine",
			"Serial Number: " + guestSerial, "UUID: " + uuid} {
			if !strings.Contains(strings.ToLower(dmi), strings.ToLower(want)) {
				t.Errorf("dmidecode -t system lacks %q:\n%s", want, dmi)
			}
		}
	})
	// The done-when of the full (not hardware-reduced) ACPI platform: the
	// legacy devices' interrupts where a PC has them.
	t.Run("isa-irqs-ttyS0-4-i8042-1", func(t *testing.T) {
		irqs := rep("irq")
		for _, d := range []struct{ dev, irq string }{{"ttyS0", "4"}, {"i8042", "1"}} {
			got := isaIRQ(irqs, d.dev)
			if got != d.irq {
				t.Errorf("%s is on IRQ %q in /proc/interrupts, want %s (a PC's ISA interrupt; needs vio's full ACPI platform); its lines:\n%s",
					d.dev, got, d.irq, strings.Join(irqs, "\n"))
			}
		}
	})

	// Graceful stop: SIGTERM pressed the power button (runVio); systemd
	// shut down and powered off; vio exits 0.
	t.Run("graceful-stop", func(t *testing.T) {
		if !r.exitInTime {
			t.Fatal(g.failure("vio did not exit within %v of SIGTERM", exitDeadline))
		}
		err := g.waitErr
		t.Logf("vio exited %.1f s after SIGTERM (%v)", r.stopWait.Seconds(), err)
		if err != nil {
			t.Error(g.failure("vio after SIGTERM: %v, want exit status 0", err))
		}
		for _, want := range []string{"System Power Off", "reboot: Power down"} {
			if !g.con.contains(want) {
				t.Error(g.failure("the guest's console lacks %q: no normal shutdown", want))
			}
		}
	})
	t.Run("fsck", func(t *testing.T) { checkClean(t, dir, disk) })
	return boot
}

// isaIRQ is the interrupt number of the /proc/interrupts line naming dev.
func isaIRQ(lines []string, dev string) string {
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) > 1 && f[len(f)-1] == dev {
			return strings.TrimSuffix(f[0], ":")
		}
	}
	return "(none)"
}

var dumpFeatures = regexp.MustCompile(`(?m)^Filesystem features:(.*)$`)

// checkClean converts the boot's overlay to a raw disk and checks its
// root partition: e2fsck -fn finds nothing, and the journal needs no
// recovery (the guest unmounted it).
func checkClean(t *testing.T, dir, disk string) {
	raw := filepath.Join(dir, "after.raw")
	if out, err := exec.Command("qemu-img", "convert", "-f", "qcow2", "-O", "raw", disk, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v: %s", err, out)
	}
	defer os.Remove(raw)
	part := fmt.Sprintf("%s?offset=%d", raw, debimage.RootStart)
	out, err := exec.Command("dumpe2fs", "-h", part).CombinedOutput()
	if err != nil {
		t.Fatalf("dumpe2fs -h: %v: %s", err, out)
	}
	m := dumpFeatures.FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("dumpe2fs -h shows no features:\n%s", out)
	}
	if strings.Contains(m[1], "needs_recovery") {
		t.Errorf("the root file system needs journal recovery after the graceful stop: features%s", m[1])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err = exec.CommandContext(ctx, "e2fsck", "-fn", part).CombinedOutput()
	if err != nil {
		t.Errorf("e2fsck -fn on the root partition: %v:\n%s", err, out)
	} else {
		t.Logf("e2fsck -fn: %s", strings.TrimSpace(lastLine(string(out))))
	}
}

func lastLine(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return l[len(l)-1]
}

// bootQEMU boots the same image (an overlay of its own) under QEMU with
// SeaBIOS, which runs the image's GRUB, and a cidata ISO from genisoimage.
//
// The lab's nested guests sometimes reset on their own early in the boot,
// or stop making progress (both seen on 2026-12-07 under QEMU, in two runs
// after one that passed in 110 s: the console stopped mid-line 6 s into
// the kernel and QEMU exited 0, as -no-reboot makes it on a reset; and a
// boot that had not reached systemd after 15 minutes). QEMU is the
// yardstick here, so either is reported with the console's tail and the
// boot run once more on a fresh overlay, as LAB.md asks of lab hazards; a
// second one fails.
func bootQEMU(t *testing.T, key string) time.Duration {
	var g *guest
	for attempt := 1; ; attempt++ {
		g = startQEMU(t, key)
		_, _, err := g.con.waitFor("VIOREPORT state ", 0, qemuBootDeadline)
		if err == nil {
			break
		}
		if attempt > 1 {
			t.Fatal(g.failure("QEMU: %v", err))
		}
		t.Logf("lab hazard: QEMU's guest did not boot (%v); booting once more. Console's last lines:\n%s\n--- stderr:\n%s", err, g.con.tail(15), g.stderr.String())
		g.cmd.Process.Kill()
		<-g.exited
	}
	boot := g.bootAndReport(t, "QEMU")
	if s := g.con.prefixed("VIOREPORT state"); len(s) != 1 || s[0] != "running" {
		t.Errorf("QEMU: systemctl is-system-running --wait: %q, want running; failed units: %q", s, g.con.prefixed("VIOREPORT failed"))
	}
	if h := g.con.prefixed("VIOREPORT hostname"); len(h) != 1 || h[0] != guestHost {
		t.Errorf("QEMU: hostname %q, want %q", h, guestHost)
	}
	for _, l := range g.con.prefixed("VIOREPORT irq") {
		t.Logf("QEMU: /proc/interrupts: %s", l)
	}
	return boot
}

// startQEMU starts QEMU on a fresh overlay and seed.
func startQEMU(t *testing.T, key string) *guest {
	dir := t.TempDir()
	disk := overlay(t, dir, "qemu.qcow2")
	uuid := newUUID(t)
	ud, md := writeSeed(t, dir, userData(key), "qemu-debian-"+uuid[:8])
	iso := filepath.Join(dir, "seed.iso")
	if out, err := exec.Command("genisoimage", "-quiet", "-output", iso, "-volid", "cidata", "-joliet", "-rock", ud, md).CombinedOutput(); err != nil {
		t.Fatalf("genisoimage: %v: %s", err, out)
	}
	return startGuest(t, "qemu-system-x86_64", "-enable-kvm", "-cpu", "host", "-m", "1G", "-smp", "2",
		"-nographic", "-nic", "none", "-no-reboot",
		"-drive", "file="+disk+",format=qcow2,if=virtio",
		"-drive", "file="+iso+",format=raw,if=virtio,readonly=on")
}

// vcpuGoroutines is the part of a Go goroutine dump about vCPU threads:
// each goroutine whose stack runs vcpu.(*Runner).loop, and a count.
func vcpuGoroutines(dump string) string {
	var b strings.Builder
	n, inRun := 0, 0
	for _, g := range strings.Split(dump, "\n\n") {
		if !strings.Contains(g, "vcpu.(*Runner).loop") {
			continue
		}
		n++
		if strings.Contains(g, "kvm.(*VCPU).Run") {
			inRun++
		}
		b.WriteString(g)
		b.WriteString("\n\n")
	}
	return fmt.Sprintf("%d vCPU goroutines, %d inside KVM_RUN\n%s", n, inRun, b.String())
}
