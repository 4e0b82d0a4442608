package e2e

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/lab/labtest"
)

// vhostUserGuest runs the same fio job (random 4k writes at iodepth 16
// through libaio, crc32c-verified) in rounds for about 25 s on /dev/vda.
// After the first round it prints VU-KILL-NOW, on which the host SIGKILLs
// the disk's back-end and starts another: the rounds after must go on
// with no error. FIOROUNDS counts failed rounds; IOPS is the last round's.
var vhostUserGuest = `
check() { if [ "$2" = 0 ]; then echo "CHECK $1 ok $3"; else echo "CHECK $1 fail $3"; fi; }
end=$(( $(date +%s) + 25 )); n=0; fails=0
while [ "$(date +%s)" -lt "$end" ] || [ "$n" -lt 3 ]; do
	fio --name=vu --filename=/dev/vda --size=8M --rw=randwrite --bs=4k --ioengine=libaio --iodepth=16 \
		--direct=1 --verify=crc32c --do_verify=1 --verify_fatal=1 > /tmp/fio.log 2>&1 || fails=$((fails+1))
	grep -q 'err= *0' /tmp/fio.log || fails=$((fails+1))
	n=$((n+1))
	[ "$n" = 1 ] && echo VU-KILL-NOW
	[ "$n" -ge 40 ] && break
done
echo "IOPS $(grep -o 'IOPS=[0-9.]*[kM]*' /tmp/fio.log | head -1 | cut -d= -f2)"
check fio-verify $fails "rounds=$n $(grep -o 'err= *[0-9]*' /tmp/fio.log | head -1)"
echo VIO-GUEST-DONE
poweroff -f
`

// vhostUserBaseline is one round of the same job, for vio's own
// virtio-blk on the same image.
var vhostUserBaseline = `
check() { if [ "$2" = 0 ]; then echo "CHECK $1 ok $3"; else echo "CHECK $1 fail $3"; fi; }
fio --name=vu --filename=/dev/vda --size=8M --rw=randwrite --bs=4k --ioengine=libaio --iodepth=16 \
	--direct=1 --verify=crc32c --do_verify=1 --verify_fatal=1 > /tmp/fio.log 2>&1
check fio-verify $? "$(grep -o 'err= *[0-9]*' /tmp/fio.log | head -1)"
echo "IOPS $(grep -o 'IOPS=[0-9.]*[kM]*' /tmp/fio.log | head -1 | cut -d= -f2)"
echo VIO-GUEST-DONE
poweroff -f
`

// startQSDExport starts qemu-storage-daemon exporting img as
// vhost-user-blk on sock, which it gets as an already listening fd 3 (so
// vio can connect as soon as this returns; no polling for the socket
// file). A stale socket file from a killed daemon is replaced.
func startQSDExport(t *testing.T, img, sock string) *exec.Cmd {
	t.Helper()
	os.Remove(sock)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	lf, err := l.File()
	l.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	cmd := exec.Command("qemu-storage-daemon",
		"--blockdev", "driver=file,node-name=f,filename="+img,
		"--export", "type=vhost-user-blk,id=e,node-name=f,addr.type=fd,addr.str=3,writable=on")
	cmd.ExtraFiles = []*os.File{lf}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("qemu-storage-daemon: %v", err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd
}

// TestVhostUserFrontend boots a guest whose disk qemu-storage-daemon
// serves through vio's vhost-user front-end, SIGKILLs the daemon while
// fio runs and starts it again on the same socket: fio must finish every
// round with err=0 (the guest never sees the outage as an error). The
// same job then runs on vio's own virtio-blk over the same image, and
// both IOPS figures go to the log.
func TestVhostUserFrontend(t *testing.T) {
	if _, err := exec.LookPath("qemu-storage-daemon"); err != nil {
		t.Skipf("qemu-storage-daemon is not installed in the lab: %v", err)
	}
	dir := t.TempDir()
	img, sock := filepath.Join(dir, "vu.raw"), filepath.Join(dir, "vu.sock")
	run(t, "truncate", "-s", "64M", img)
	a := labtest.Assets(t)
	guest := func(script string) (string, string) {
		return labtest.Guest{
			Script:   script,
			Modules:  []string{"virtio_pci", "virtio_blk"},
			Programs: []string{"/usr/bin/fio"},
		}.Build(t)
	}
	args := func(initrd, tools string, disk string, extra ...string) []string {
		return append([]string{vioBin, "run", "--kernel", a.Kernel, "--initrd", initrd,
			"--memory", "size=" + strconv.Itoa(guestMemMiB) + "M,shared=on",
			"--cmdline", "console=ttyS0 panic=-1 quiet", "--cpus", "2",
			"--disk", disk, "--disk", "path=" + tools + ",readonly=on"}, extra...)
	}

	qsd := startQSDExport(t, img, sock)
	initrd, tools := guest(vhostUserGuest)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	vargs := args(initrd, tools, "vhost_user=on,socket="+sock, "--serial", "tty")
	cmd := quitOnDeadline(exec.CommandContext(ctx, vargs[0], vargs[1:]...))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var console bytes.Buffer
	killed := false
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		console.WriteString(sc.Text() + "\n")
		if !killed && strings.Contains(sc.Text(), "VU-KILL-NOW") {
			// SIGKILL mid-run: the daemon finishes nothing it had taken.
			qsd.Process.Kill()
			qsd.Wait()
			qsd = startQSDExport(t, img, sock)
			killed = true
			t.Logf("qemu-storage-daemon killed and restarted %v into the run", time.Since(start).Round(time.Second))
		}
	}
	err = cmd.Wait()
	t.Logf("vio ran for %v", time.Since(start).Round(time.Second))
	if err != nil {
		t.Fatalf("vio: %v\nstderr:\n%s\nserial:\n%s", err, stderr.String(), console.String())
	}
	if !killed {
		t.Errorf("the guest never asked for the kill (no VU-KILL-NOW)")
	}
	r := readReport(t, console.Bytes())
	r.expect(t, "fio-verify")
	if strings.Contains(stderr.String(), "needs a reset") {
		t.Errorf("vio reset the vhost-user disk; stderr:\n%s", stderr.String())
	}
	vuIOPS := r.value("IOPS")

	// The same job on vio's own virtio-blk over the same image.
	qsd.Process.Kill()
	qsd.Wait()
	initrd, tools = guest(vhostUserBaseline)
	console2, _ := runSerial(t, 5*time.Minute, args(initrd, tools, "path="+img+",format=raw")...)
	r2 := readReport(t, console2)
	r2.expect(t, "fio-verify")
	t.Logf("fio randwrite 4k iodepth 16 IOPS: vhost-user (qemu-storage-daemon) %s, vio virtio-blk %s", vuIOPS, r2.value("IOPS"))
}
