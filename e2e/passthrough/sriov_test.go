package passthrough

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/viovmm/vio/lab/labtest"
	"github.com/viovmm/vio/sriov"
)

// srGuest uses an NVMe VF passed through with the stock nvme driver: it
// writes a pattern at sriov_off MiB of the namespace (which the lab's
// SR-IOV controller shares between all its controllers), runs fio
// --verify on the 12 MiB after it, and then waits for the test to stop
// its VM (vio ctl shutdown): the VF stays held for as long as the test
// needs to look.
const srGuest = `
check() { if [ "$2" = 0 ]; then echo "CHECK $1 ok $3"; else echo "CHECK $1 fail $3"; fi; }
off=$(sed -n 's/.*sriov_off=\([0-9]*\).*/\1/p' /proc/cmdline)
i=0; while [ -z "$(ls /sys/class/nvme 2>/dev/null)" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
c=$(ls /sys/class/nvme | head -1)
ns=/dev/${c}n1
i=0; while [ ! -b $ns ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
[ -b "$ns" ]; check nvme $? "$c $(cat /sys/class/nvme/$c/model 2>/dev/null | tr -s ' ')"
[ -n "$off" ]; check offset $? "$off MiB"
dd if=/dev/urandom of=/tmp/p bs=4096 count=16 2>/dev/null
dd if=/tmp/p of=$ns bs=4096 seek=$((off*256)) conv=fsync 2>/dev/null; check pattern-write $?
echo "SRSUM $(sha256sum /tmp/p | cut -d' ' -f1)"
echo "SRSTART"
fio --name=sr --filename=$ns --offset=$((off+1))M --size=12M --rw=randwrite --bs=4k --ioengine=libaio --iodepth=8 \
	--direct=1 --verify=crc32c --do_verify=1 --verify_fatal=1 > /tmp/fio.log 2>&1
check fio $? "$(grep -o 'IOPS=[^,]*' /tmp/fio.log | head -2 | tr '\n' ' ')"
echo "SRIRQ $(grep -c nvme /proc/interrupts) $(grep nvme /proc/interrupts | awk '{s=0; for (i=2; i<=NF && $i ~ /^[0-9]+$/; i++) s+=$i; t+=s} END {print t}')"
echo "SRDONE"
while :; do sleep 60; done
`

// srTagLine is a line the guest tags for the test (SRSUM, SRIRQ...).
var srTagLine = regexp.MustCompile(`(?m)^(SR[A-Z0-9]*) (.*)$`)

// srVM is one vio guest on a VF.
type srVM struct {
	name, vf, sock, serial string
	off                    int // MiB
	cmd                    *exec.Cmd
	out                    bytes.Buffer
	done                   chan error
}

// TestSRIOVNVMe: `vio sriov enable` gives the lab's SR-IOV NVMe
// controller two VFs on vfio-pci with their secondary controllers
// online; two vio guests, one per VF, run fio --verify at once on
// disjoint regions of the shared namespace; meanwhile `vio sriov list`
// names the VM holding each VF and a third vio asking for a held VF is
// refused with the sentence naming the holder; once both VMs are gone
// the VFs are free, L1's own nvme driver reads each guest's pattern
// through the PF, and `vio sriov disable` leaves no VFs.
func TestSRIOVNVMe(t *testing.T) {
	pf := findSRIOVNVMe(t)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute) // two L2 guests at once on L1's 2 vCPUs
	defer cancel()
	vio := func(args ...string) (string, error) {
		out, err := exec.CommandContext(ctx, vioBin, args...).CombinedOutput()
		return string(out), err
	}
	if out, err := vio("sriov", "enable", pf, "2"); err != nil {
		t.Fatalf("vio sriov enable %s 2: %v\n%s", pf, err, out)
	} else {
		t.Logf("vio sriov enable %s 2:\n%s", pf, out)
	}
	defer func() {
		if out, err := vio("sriov", "disable", pf); err != nil {
			t.Errorf("vio sriov disable %s (cleanup): %v\n%s", pf, err, out)
		}
	}()
	p := listPF(t, pf)
	if p.NumVFs != 2 || len(p.VFs) != 2 {
		t.Fatalf("after enable, %s has %d VFs (%d listed), want 2", pf, p.NumVFs, len(p.VFs))
	}
	for _, v := range p.VFs {
		if v.Driver != "vfio-pci" || v.Group == "" || v.HeldBy != nil {
			t.Errorf("VF %s after enable: driver %q, group %q, held by %v; want vfio-pci, a group, free", v.BDF, v.Driver, v.Group, v.HeldBy)
		}
		if v.Secondary == nil || !v.Secondary.Online || v.Secondary.NVQ < 2 || v.Secondary.NVI < 1 {
			t.Errorf("VF %s's secondary controller: %+v (note %q), want online with 2 VQ and 1 VI or more", v.BDF, v.Secondary, p.NVMeNote)
		}
	}
	if p.VFs[0].Group == p.VFs[1].Group {
		t.Errorf("both VFs are in IOMMU group %s: they could not go to two VMs", p.VFs[0].Group)
	}
	if t.Failed() {
		return
	}

	initrd, tools := labtest.Guest{Script: srGuest, Modules: []string{"nvme"}, Programs: []string{"/usr/bin/fio"}}.Build(t)
	a := labtest.Assets(t)
	dir := t.TempDir()
	vms := []*srVM{
		{name: "a", vf: p.VFs[0].BDF, off: 8},
		{name: "b", vf: p.VFs[1].BDF, off: 32},
	}
	for _, m := range vms {
		m.sock = filepath.Join(dir, m.name+".sock")
		m.serial = filepath.Join(dir, m.name+".log")
		m.cmd = exec.CommandContext(ctx, vioBin, "run", "--kernel", a.Kernel, "--initrd", initrd, "--memory", "256M",
			"--cmdline", fmt.Sprintf("console=ttyS0 panic=-1 quiet sriov_off=%d", m.off), "--serial", "file="+m.serial, "--stats",
			"--api-socket", m.sock, "--device", "path=/sys/bus/pci/devices/"+m.vf, "--disk", "path="+tools+",readonly=on")
		m.cmd.Stdout, m.cmd.Stderr = &m.out, &m.out
		if err := m.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		m.done = make(chan error, 1)
		go func() { m.done <- m.cmd.Wait() }()
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		for _, m := range vms {
			if out, err := vio("ctl", "--api-socket", m.sock, "shutdown"); err != nil {
				t.Logf("vio ctl shutdown of VM %s: %v %s", m.name, err, out)
				m.cmd.Process.Kill()
			}
		}
		for _, m := range vms {
			select {
			case <-m.done:
			case <-time.After(time.Minute):
				t.Errorf("VM %s did not exit within a minute of vio ctl shutdown", m.name)
				m.cmd.Process.Kill()
				<-m.done
			}
		}
	}
	defer stop()

	// Both guests up and at their fio: the VMs hold their VFs.
	waitConsoles(t, vms, "SRSTART", 8*time.Minute)
	if t.Failed() {
		return
	}
	p = listPF(t, pf)
	for i, m := range vms {
		h := p.VFs[i].HeldBy
		if h == nil || h.PID != m.cmd.Process.Pid || h.Name != m.sock {
			t.Errorf("while VM %s (pid %d, %s) runs on %s, vio sriov list says it is held by %v", m.name, m.cmd.Process.Pid, m.sock, m.vf, h)
		}
	}
	if out, err := vio("sriov", "list"); err == nil {
		t.Logf("vio sriov list while both VMs run:\n%s", out)
	}
	// A third vio asking for VM a's VF.
	// Its own deadline: were it let through, its guest would wait for
	// an NVMe controller forever.
	third, cancelThird := context.WithTimeout(ctx, 2*time.Minute)
	b, err := exec.CommandContext(third, vioBin, "run", "--kernel", a.Kernel, "--initrd", initrd, "--memory", "64M", "--cmdline", "console=ttyS0 panic=-1",
		"--device", "path=/sys/bus/pci/devices/"+vms[0].vf).CombinedOutput()
	cancelThird()
	out := string(b)
	want := fmt.Sprintf("%s is in use by VM %s (pid %d): stop that VM first", vms[0].vf, vms[0].sock, vms[0].cmd.Process.Pid)
	if err == nil || !strings.Contains(out, want) {
		t.Errorf("a third vio on a held VF: %v\n%s\nwant the sentence %q", err, out, want)
	} else {
		t.Logf("the third vio was refused: %s", strings.TrimSpace(out))
	}
	if out, err := vio("sriov", "disable", pf); err == nil || !strings.Contains(out, "is in use by VM") {
		t.Errorf("vio sriov disable with both VFs held: %v\n%s", err, out)
	}

	waitConsoles(t, vms, "SRDONE", 10*time.Minute)
	stop()
	sums := map[string]string{}
	for _, m := range vms {
		console, _ := os.ReadFile(m.serial)
		for _, c := range checkLine.FindAllStringSubmatch(string(console), -1) {
			t.Logf("VM %s: %s %s %s", m.name, c[1], c[2], c[3])
			if c[2] != "ok" {
				t.Errorf("VM %s: guest check %s failed: %s", m.name, c[1], c[3])
			}
		}
		if n := strings.Count(string(console), "CHECK nvme "); n != 1 {
			// The guest has panic=-1: a second start of its script is a
			// reboot nobody asked for.
			t.Errorf("VM %s ran its script %d times (it rebooted); console:\n%s\nvio:\n%s", m.name, n, console, m.out.String())
		}
		if !strings.Contains(string(console), "CHECK fio ok") {
			t.Errorf("VM %s did not say CHECK fio ok:\n%s\nvio:\n%s", m.name, console, m.out.String())
		}
		for _, tag := range srTagLine.FindAllStringSubmatch(string(console), -1) {
			if strings.HasPrefix(tag[1], "SR") {
				t.Logf("VM %s: %s %s", m.name, tag[1], tag[2])
			}
			if tag[1] == "SRSUM" {
				sums[m.name] = strings.TrimSpace(tag[2])
			}
		}
		for _, x := range regexp.MustCompile(`"mmio": (\d+)`).FindAllStringSubmatch(m.out.String(), -1) {
			t.Logf("VM %s: %s MMIO exits to vio (fio moved 3072 I/Os of 4 KiB)", m.name, x[1])
		}
	}

	p = listPF(t, pf)
	for _, v := range p.VFs {
		if v.HeldBy != nil {
			t.Errorf("VF %s is still held by %v after both VMs exited", v.BDF, v.HeldBy)
		}
	}
	// L1's nvme driver on the PF sees what each guest wrote through its VF.
	if ns := pfNamespace(t, pf); ns != "" {
		for _, m := range vms {
			out, err := exec.Command("sh", "-c", fmt.Sprintf("dd if=%s bs=4096 skip=%d count=16 iflag=direct 2>/dev/null | sha256sum", ns, m.off*256)).Output()
			got := strings.Fields(string(out) + " ")[0]
			if err != nil || sums[m.name] == "" || got != sums[m.name] {
				t.Errorf("the PF reads %q at %d MiB (%v); VM %s wrote %q there through its VF", got, m.off, err, m.name, sums[m.name])
			}
		}
	}

	if out, err := vio("sriov", "disable", pf); err != nil {
		t.Fatalf("vio sriov disable %s: %v\n%s", pf, err, out)
	}
	if p = listPF(t, pf); p.NumVFs != 0 || len(p.VFs) != 0 {
		t.Errorf("after disable, %s has %d VFs (%d listed)", pf, p.NumVFs, len(p.VFs))
	}
}

// listPF runs vio sriov list --json and returns PF pf's entry.
func listPF(t *testing.T, pf string) sriov.PF {
	t.Helper()
	out, err := exec.Command(vioBin, "sriov", "list", "--json").Output()
	if err != nil {
		t.Fatalf("vio sriov list --json: %v", err)
	}
	var pfs []sriov.PF
	if err := json.Unmarshal(out, &pfs); err != nil {
		t.Fatalf("vio sriov list --json printed no JSON list (%v):\n%s", err, out)
	}
	for _, p := range pfs {
		if p.BDF == pf {
			return p
		}
	}
	t.Fatalf("vio sriov list --json does not list %s:\n%s", pf, out)
	return sriov.PF{}
}

// waitConsoles waits until every VM's console has a line starting with
// tag, failing the test if a VM exits first or the deadline passes. It
// polls the console files: the guests have no other way to say so.
func waitConsoles(t *testing.T, vms []*srVM, tag string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		all := true
		for _, m := range vms {
			select {
			case err := <-m.done:
				m.done <- err // for stop's wait
				console, _ := os.ReadFile(m.serial)
				t.Errorf("VM %s exited (%v) before its guest said %s:\n%s\nvio:\n%s", m.name, err, tag, console, m.out.String())
				return
			default:
			}
			console, _ := os.ReadFile(m.serial)
			if !regexp.MustCompile(`(?m)^` + tag + `\b`).Match(console) {
				all = false
			}
		}
		if all {
			return
		}
		if time.Now().After(deadline) {
			for _, m := range vms {
				console, _ := os.ReadFile(m.serial)
				t.Logf("VM %s console:\n%s", m.name, console)
				// SIGQUIT makes vio print every goroutine and exit: where
				// it stood is the account of a silent guest.
				m.cmd.Process.Signal(syscall.SIGQUIT)
				select {
				case err := <-m.done:
					m.done <- err
					t.Logf("VM %s's vio after SIGQUIT (%v):\n%s", m.name, err, m.out.String())
				case <-time.After(30 * time.Second):
					t.Logf("VM %s's vio did not exit on SIGQUIT", m.name)
				}
			}
			t.Errorf("the guests did not all say %s within %v", tag, limit)
			return
		}
		time.Sleep(200 * time.Millisecond) // polling files the guests write
	}
}

// findSRIOVNVMe returns the PCI address of an NVMe controller with
// SR-IOV (the lab's second controller).
func findSRIOVNVMe(t *testing.T) string {
	devs, _ := filepath.Glob("/sys/bus/pci/devices/*")
	for _, d := range devs {
		c, err := os.ReadFile(filepath.Join(d, "class"))
		if err != nil || strings.TrimSpace(string(c)) != "0x010802" {
			continue
		}
		if _, err := os.Stat(filepath.Join(d, "sriov_totalvfs")); err == nil {
			return filepath.Base(d)
		}
	}
	t.Skip("no NVMe controller with SR-IOV here: the lab's L1 has one")
	return ""
}

// pfNamespace returns the block device of the PF's first namespace in
// L1: nvmeXnY, or with native multipath the nvmeXnY its path nvmeXcZnY
// belongs to.
func pfNamespace(t *testing.T, pf string) string {
	t.Helper()
	paths, _ := filepath.Glob("/sys/bus/pci/devices/" + pf + "/nvme/nvme*/nvme*n*")
	re := regexp.MustCompile(`^nvme(\d+)(c\d+)?n(\d+)$`)
	for _, p := range paths {
		if m := re.FindStringSubmatch(filepath.Base(p)); m != nil {
			ns := "/dev/nvme" + m[1] + "n" + m[3]
			if _, err := os.Stat(ns); err == nil {
				return ns
			}
		}
	}
	t.Errorf("no namespace of %s under L1's nvme driver (%v)", pf, paths)
	return ""
}
