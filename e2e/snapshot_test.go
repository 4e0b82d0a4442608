package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/api"
	"github.com/viovmm/vio/lab/labtest"
)

// counterScript is the guest half of TestSnapshotRestore: once a second it
// appends the next number to /mnt/count on an ext4 disk, syncs, checks that
// the file holds exactly 1..n, and reports "VIO-COUNT n good|bad <date>"
// on the serial console; a line typed on the console is echoed back.
const counterScript = `
mkdir -p /mnt && mount -t ext4 /dev/vda /mnt || { echo VIO-MOUNT-FAILED; poweroff -f; }
echo VIO-GUEST-UP
n=0
while true; do
	n=$((n+1))
	echo $n >> /mnt/count
	sync
	ok=bad; [ "$(seq 1 $n | md5sum)" = "$(md5sum < /mnt/count)" ] && ok=good
	echo "VIO-COUNT $n $ok $(date +%s)"
	if read -t 1 line; then echo "VIO-ECHO $line"; fi
done
`

// count is one counter line from the guest.
type count struct {
	n     int
	good  bool
	date  int64     // the guest's CLOCK_REALTIME, s
	hostT time.Time // when the host read the line
}

// vioProc is a vio process whose serial console the test reads.
type vioProc struct {
	cmd    *exec.Cmd
	counts chan count
	echoes chan string
	stdin  io.WriteCloser
}

func startVio(t *testing.T, ctx context.Context, args ...string) *vioProc {
	t.Helper()
	p := &vioProc{cmd: exec.CommandContext(ctx, vioBin, args...), counts: make(chan count, 1000), echoes: make(chan string, 10)}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	p.cmd.Stderr = os.Stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.kill() })
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			if i := strings.Index(line, "VIO-ECHO "); i >= 0 {
				p.echoes <- line[i+len("VIO-ECHO "):]
			}
			f := strings.Fields(line)
			if len(f) == 4 && f[0] == "VIO-COUNT" {
				n, err1 := strconv.Atoi(f[1])
				d, err2 := strconv.ParseInt(f[3], 10, 64)
				if err1 == nil && err2 == nil {
					p.counts <- count{n: n, good: f[2] == "good", date: d, hostT: time.Now()}
				}
			}
		}
		close(p.counts)
	}()
	return p
}

func (p *vioProc) kill() {
	if p.cmd.Process != nil {
		p.cmd.Process.Kill()
		p.cmd.Wait()
	}
}

// next returns the next counter line, failing the test at the deadline.
func (p *vioProc) next(t *testing.T, ctx context.Context) count {
	t.Helper()
	select {
	case c, ok := <-p.counts:
		if !ok {
			t.Fatal("vio's console closed: the process ended")
		}
		if !c.good {
			t.Fatalf("the guest found /mnt/count not to hold 1..%d", c.n)
		}
		return c
	case <-ctx.Done():
		t.Fatal("no counter line before the deadline")
	}
	return count{}
}

func apiClient(t *testing.T, ctx context.Context, sock string, exited func() bool) *api.Client {
	t.Helper()
	cl := api.NewClient(sock)
	t.Cleanup(cl.Close)
	for {
		if _, err := cl.Do(ctx, http.MethodGet, "vmm.ping", nil); err == nil {
			return cl
		}
		if exited() || ctx.Err() != nil {
			t.Fatal("vio did not come up on its API socket")
		}
		time.Sleep(20 * time.Millisecond) // polling a socket that is not there yet, as Kata does
	}
}

func put(t *testing.T, ctx context.Context, cl *api.Client, endpoint string, body string) {
	t.Helper()
	var b []byte
	if body != "" {
		b = []byte(body)
	}
	if _, err := cl.Do(ctx, http.MethodPut, endpoint, b); err != nil {
		t.Fatalf("%s: %v", endpoint, err)
	}
}

func vmState(t *testing.T, ctx context.Context, cl *api.Client) string {
	t.Helper()
	b, err := cl.Do(ctx, http.MethodGet, "vm.info", nil)
	if err != nil {
		t.Fatal(err)
	}
	var info struct{ State string }
	json.Unmarshal(b, &info)
	return info.State
}

// checkContinues reads the first counter lines of a restored guest: the
// counter goes on from the snapshot's (not from 1), keeps counting with
// the file checked by the guest each time, and the guest's wall clock is
// the host's again (kvmclock moved on by the time since the pause).
func checkContinues(t *testing.T, ctx context.Context, p *vioProc, atSnapshot int, downtime time.Duration) int {
	t.Helper()
	first := p.next(t, ctx)
	t.Logf("first count after restore: %d (last before the snapshot: %d); guest date %d, host %d, after %v down",
		first.n, atSnapshot, first.date, first.hostT.Unix(), downtime.Round(time.Second))
	if first.n <= atSnapshot || first.n > atSnapshot+2 {
		t.Fatalf("the restored guest counts from %d; the snapshot was taken at %d", first.n, atSnapshot)
	}
	last := first
	for last.n < first.n+3 {
		c := p.next(t, ctx)
		if c.n != last.n+1 {
			t.Fatalf("count %d after %d", c.n, last.n)
		}
		last = c
	}
	if lag := last.hostT.Unix() - last.date; lag > 3 || lag < -3 {
		t.Errorf("the guest's wall clock is %d s off the host's after %v of downtime", lag, downtime.Round(time.Second))
	}
	return last.n
}

// TestSnapshotRestore boots one Debian guest that counts on its serial
// console and into a file on an ext4 virtio disk, pauses it, snapshots it
// and kills vio; then restores the snapshot twice in new processes (vio
// --api-socket with vm.restore + vm.resume, then vio run --restore), with
// the disk put back as it was at the snapshot each time. Each time the
// counter goes on from the snapshot, the file keeps growing with the
// right content, the console works both ways and the wall clock is right.
func TestSnapshotRestore(t *testing.T) {
	a := labtest.Assets(t)
	initrd := labtest.Initramfs(t, counterScript, "virtio_pci", "virtio_blk", "ext4")
	dir := t.TempDir()
	disk, diskAtSnap, snapDir := filepath.Join(dir, "data.img"), filepath.Join(dir, "data-at-snapshot.img"), filepath.Join(dir, "snap")
	run(t, "mkfs.ext4", "-q", "-F", disk, "64M")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	// The original: boot, count to 3, pause, snapshot, kill.
	sock := filepath.Join(dir, "a.sock")
	orig := startVio(t, ctx, "--api-socket", sock)
	cl := apiClient(t, ctx, sock, func() bool { return orig.cmd.ProcessState != nil })
	put(t, ctx, cl, "vm.create", `{
  "payload": {"kernel": "`+a.Kernel+`", "initramfs": "`+initrd+`", "cmdline": "console=ttyS0 panic=-1 quiet"},
  "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
  "memory": {"size": `+strconv.Itoa(guestMemMiB<<20)+`},
  "disks": [{"path": "`+disk+`"}],
  "serial": {"mode": "Tty"}, "console": {"mode": "Off"}
}`)
	put(t, ctx, cl, "vm.boot", "")
	var c count
	for c.n < 3 {
		c = orig.next(t, ctx)
	}
	put(t, ctx, cl, "vm.pause", "")
	start := time.Now()
	put(t, ctx, cl, "vm.snapshot", `{"destination_url": "file://`+snapDir+`"}`)
	t.Logf("vm.snapshot took %v", time.Since(start).Round(time.Millisecond))
	if vmState(t, ctx, cl) != "Paused" {
		t.Fatal("the VM is not paused after vm.snapshot")
	}
	// A line may have been on its way out when the vCPU stopped.
	for drained := false; !drained; {
		select {
		case more := <-orig.counts:
			c = more
		default:
			drained = true
		}
	}
	atSnapshot := c.n
	pausedAt := time.Now()
	if _, err := cl.Do(ctx, http.MethodPut, "vm.snapshot", []byte(`{"destination_url": "file://`+snapDir+`"}`)); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("a second snapshot into the same directory: %v", err)
	}
	orig.kill()
	var st, mst syscallStat
	statFile(t, filepath.Join(snapDir, "memory"), &mst)
	statFile(t, filepath.Join(snapDir, "state"), &st)
	t.Logf("snapshot at count %d: memory file %d MiB, %d MiB allocated; state %d bytes",
		atSnapshot, mst.size>>20, mst.alloc>>20, st.size)
	// The disk is not part of the snapshot: keep it as it was.
	run(t, "cp", "--sparse=always", disk, diskAtSnap)

	// Restore 1: vio --api-socket, vm.restore, vm.resume.
	sock = filepath.Join(dir, "b.sock")
	first := startVio(t, ctx, "--api-socket", sock)
	cl = apiClient(t, ctx, sock, func() bool { return first.cmd.ProcessState != nil })
	start = time.Now()
	put(t, ctx, cl, "vm.restore", `{"source_url": "file://`+snapDir+`", "prefault": false}`)
	t.Logf("vm.restore took %v", time.Since(start).Round(time.Millisecond))
	if s := vmState(t, ctx, cl); s != "Paused" {
		t.Fatalf("state %q after vm.restore, want Paused", s)
	}
	put(t, ctx, cl, "vm.resume", "")
	checkContinues(t, ctx, first, atSnapshot, time.Since(pausedAt))
	first.kill()

	// Restore 2, from the same snapshot and the disk as it was then:
	// vio run --restore, the console's input included.
	run(t, "cp", "--sparse=always", diskAtSnap, disk)
	down := time.Since(pausedAt)
	second := startVio(t, ctx, "run", "--restore", "file://"+snapDir)
	last := checkContinues(t, ctx, second, atSnapshot, down)
	fmt.Fprintln(second.stdin, "hello-after-restore")
	select {
	case e := <-second.echoes:
		if e != "hello-after-restore" {
			t.Errorf("the guest echoed %q", e)
		}
	case <-ctx.Done():
		t.Fatal("the guest never echoed the line sent to its serial console")
	}
	for c := second.next(t, ctx); c.n < last+2; c = second.next(t, ctx) {
	}
	second.kill()

	// The disk, read on the host: the numbers 1..m, where m is at least
	// the last count the guest reported (it syncs before reporting).
	out, err := exec.Command("debugfs", "-R", "cat /count", disk).Output()
	if err != nil {
		t.Fatalf("debugfs: %v", err)
	}
	lines := strings.Fields(string(out))
	for i, l := range lines {
		if l != strconv.Itoa(i+1) {
			t.Fatalf("line %d of /count on the disk is %q", i+1, l)
		}
	}
	if len(lines) < last+2 {
		t.Errorf("/count on the disk has %d lines; the guest reported %d", len(lines), last+2)
	}
}

type syscallStat struct{ size, alloc int64 }

func statFile(t *testing.T, name string, s *syscallStat) {
	t.Helper()
	fi, err := os.Stat(name)
	if err != nil {
		t.Fatal(err)
	}
	s.size, s.alloc = fi.Size(), allocatedBytes(t, name)
}
