package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/viovmm/vio/api"
	"github.com/viovmm/vio/lab/labtest"
)

// The vhost-net scenario's network in L1: a multi-queue TAP for the
// traffic run, a single-queue one for the migration.
const (
	vhTap        = "viovh0"
	vhMigTap     = "viovh1"
	vhHostIP     = "10.0.78.1"
	vhGuestIP    = "10.0.78.2"
	vhMigHostIP  = "10.0.79.1"
	vhMigGuestIP = "10.0.79.2"
	vhUpPort     = 5481 // the guest sends vhXfer bytes here
	vhDownPort   = 5482 // the host sends vhXfer bytes from here
	vhIperfPort  = 5483
	vhStreamPort = 5484 // the migration guest's numbered lines
	vhXfer       = 32 << 20
	// vhPauseAt is how far into the guest's upload the VM is paused.
	vhPauseAt = 8 << 20
	// vhStall is how long the VM stays paused mid-stream.
	vhStall = time.Second
)

// vhGuest checks the data path from the guest's side: ping, a hashed
// transfer each way (the host checks the hashes), iperf3 each way, and
// that the driver runs both queue pairs (which it asks for through the
// control queue, served by vio while the kernel serves the rings).
var vhGuest = `
check() { if [ "$2" = 0 ]; then echo "CHECK $1 ok $3"; else echo "CHECK $1 fail $3"; fi; }
ip link set eth0 up && ip addr add ` + vhGuestIP + `/24 dev eth0
rxq=$(ls -d /sys/class/net/eth0/queues/rx-* | wc -l)
[ "$rxq" = 2 ]; check queues $? "rx=$rxq"
timeout 60 ping -c 3 -W 5 ` + vhHostIP + ` > /tmp/ping 2>&1; check ping $? "$(tail -1 /tmp/ping)"
head -c ` + strconv.Itoa(vhXfer) + ` /dev/urandom > /tmp/up
echo "UPSUM $(sha256sum /tmp/up | cut -d' ' -f1)"
timeout 300 nc ` + vhHostIP + ` ` + strconv.Itoa(vhUpPort) + ` < /tmp/up; check upload $?
rm /tmp/up
echo "DOWNSUM $(timeout 300 nc ` + vhHostIP + ` ` + strconv.Itoa(vhDownPort) + ` | sha256sum | cut -d' ' -f1)"
for dir in tx rx; do
	flag=; [ $dir = rx ] && flag=-R
	timeout 120 iperf3 -c ` + vhHostIP + ` -p ` + strconv.Itoa(vhIperfPort) + ` -t 3 -f m $flag > /tmp/ip-$dir 2>&1
	check iperf-$dir $? "$(grep 'receiver' /tmp/ip-$dir | grep -o '[0-9.]* Mbits/sec')"
done
echo VIO-GUEST-DONE
poweroff -f
`

// TestVhostNet: a stock Linux guest with a virtio NIC whose rings the
// kernel's vhost-net serves (--net tap=NAME,vhost=on, two queue pairs):
// ping, a 32 MiB transfer each way whose SHA-256 both sides compare,
// iperf3 each way with L1; mid-upload the VM is paused and snapshotted
// (which stops the kernel's rings, saves their bases and restarts them
// there; no byte may arrive meanwhile) and resumed, and the upload must
// still hash right. vio's --stats must say
// the kernel carried the frames. Then a guest streaming numbered lines
// over TCP moves to another vio on the same host (local migration, RAM
// by memfd) with vhost=on on both sides: the stream must go on after the
// hop with every line once and in order. Last, a guest downloading 32 MiB
// at a steady pace moves to another vio over TCP (pre-copy, the kernel
// logging the pages it writes): the SHA-256 the guest computes of what it
// received must be the host's. A vhost=on NIC without a TAP is refused in
// one sentence first.
func TestVhostNet(t *testing.T) {
	// The lab loads vhost_net into L1 with its other modules.
	if _, err := os.Stat("/dev/vhost-net"); err != nil {
		t.Fatalf("the lab has no /dev/vhost-net (%v): lab.go's modulesL1 should load vhost_net", err)
	}
	// Refused before anything boots, naming the TAP it needs.
	out, err := exec.Command(vioBin, "run", "--kernel", labtest.Assets(t).Kernel, "--net", "user=on,vhost=on").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "vhost=on needs a TAP") {
		t.Errorf("vhost=on with user=on: %v, want a refusal naming the TAP:\n%s", err, out)
	}
	t.Run("traffic", testVhostNetTraffic)
	t.Run("local-migration", testVhostNetMigration)
	t.Run("precopy-migration", testVhostNetPrecopy)
}

func testVhostNetTraffic(t *testing.T) {
	initrd, _ := labtest.Guest{
		Script:   vhGuest,
		Modules:  []string{"virtio_pci", "virtio_net"},
		Programs: []string{"/usr/bin/iperf3"},
		Inline:   true,
	}.Build(t)
	run(t, "ip", "tuntap", "add", vhTap, "mode", "tap", "multi_queue")
	t.Cleanup(func() { exec.Command("ip", "link", "del", vhTap).Run() })
	run(t, "ip", "addr", "add", vhHostIP+"/24", "dev", vhTap)
	run(t, "ip", "link", "set", vhTap, "up")
	srv := exec.Command("iperf3", "-s", "-B", vhHostIP, "-p", strconv.Itoa(vhIperfPort))
	if err := srv.Start(); err != nil {
		t.Fatalf("the host's iperf3 server: %v", err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()

	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	sock := filepath.Join(t.TempDir(), "api.sock")
	up := receiveHashed(t, fmt.Sprintf("%s:%d", vhHostIP, vhUpPort))
	downSum := sendHashed(t, fmt.Sprintf("%s:%d", vhHostIP, vhDownPort))
	snap := t.TempDir()
	paused := make(chan string, 1) // what the pause mid-stream saw, or why it failed
	go func() { paused <- pauseMidStream(ctx, sock, snap, up) }()

	console, stats := runSerial(t, 12*time.Minute, vioArgs(t, initrd, "--cpus", "2", "--api-socket", sock, "--sandbox-allow", snap,
		"--net", "tap="+vhTap+",mac=52:54:00:12:34:78,queues=2,vhost=on", "--stats")...)
	r := readReport(t, console, "UPSUM ", "DOWNSUM ")
	r.expect(t, "queues", "ping", "upload", "iperf-tx", "iperf-rx")
	cancel()
	if got := <-paused; strings.HasPrefix(got, "fail: ") {
		t.Error(got)
	} else {
		t.Log(got)
	}
	if sum := up.sum(); r.value("UPSUM") != sum {
		t.Errorf("upload: the guest sent data hashing to %q, the host received %d bytes hashing to %s", r.value("UPSUM"), up.n.Load(), sum)
	}
	if r.value("DOWNSUM") != downSum {
		t.Errorf("download: the host sent data hashing to %s, the guest received data hashing to %q", downSum, r.value("DOWNSUM"))
	}

	// vio's counters: the kernel served both pairs, started again after
	// the pause; vio served the control queue (the driver's pair count).
	all := lastStats(t, stats)
	var nic struct {
		Device struct {
			DataPath     string `json:"data_path"`
			RingStarts   uint64 `json:"ring_starts"`
			CtrlCommands uint64 `json:"ctrl_commands"`
			CtrlErrors   uint64 `json:"ctrl_errors"`
			Forwarded    uint64 `json:"forwarded_interrupts"`
		} `json:"device"`
	}
	if err := json.Unmarshal(all["net0"], &nic); err != nil {
		t.Fatalf("--stats net0: %v (%s)", err, all["net0"])
	}
	t.Logf("--stats net0: %s", all["net0"])
	d := nic.Device
	if d.DataPath != "vhost-net" {
		t.Errorf("--stats net0 data_path %q, want vhost-net", d.DataPath)
	}
	// Both pairs at activation, and again after the snapshot, which
	// stopped them (vm.pause alone stops the vCPUs, as for vio's own
	// devices, whose workers drain what is queued).
	if d.RingStarts < 4 {
		t.Errorf("the kernel's rings were started %d times, want at least 4 (both pairs at activation, both again after the snapshot mid-stream)", d.RingStarts)
	}
	if d.CtrlCommands == 0 || d.CtrlErrors != 0 {
		t.Errorf("control queue: %d commands, %d refused; the driver's pair count should have been accepted", d.CtrlCommands, d.CtrlErrors)
	}
}

// hashedReceiver is the host's end of the guest's upload.
type hashedReceiver struct {
	n       atomic.Int64
	pauseAt chan struct{} // closed when vhPauseAt bytes have arrived
	done    chan string   // the hash of what arrived
}

// receiveHashed accepts one connection on addr and hashes vhXfer bytes.
func receiveHashed(t *testing.T, addr string) *hashedReceiver {
	t.Helper()
	l, err := net.Listen("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	r := &hashedReceiver{pauseAt: make(chan struct{}), done: make(chan string, 1)}
	go func() {
		c, err := l.Accept()
		if err != nil {
			r.done <- "accept: " + err.Error()
			return
		}
		defer c.Close()
		h := sha256.New()
		buf := make([]byte, 64<<10)
		signalled := false
		for r.n.Load() < vhXfer {
			k, err := c.Read(buf[:min(len(buf), int(vhXfer-r.n.Load()))])
			h.Write(buf[:k])
			if r.n.Add(int64(k)) >= vhPauseAt && !signalled {
				close(r.pauseAt)
				signalled = true
			}
			if err != nil {
				break
			}
		}
		r.done <- hex.EncodeToString(h.Sum(nil))
	}()
	return r
}

// sum waits for the upload's hash (the guest has reported by then).
func (r *hashedReceiver) sum() string {
	select {
	case s := <-r.done:
		return s
	case <-time.After(time.Minute):
		return "(the upload did not end)"
	}
}

// sendHashed serves vhXfer random bytes to one connection on addr and
// returns their hash.
func sendHashed(t *testing.T, addr string) string {
	t.Helper()
	data := make([]byte, vhXfer)
	rand.Read(data)
	sum := sha256.Sum256(data)
	l, err := net.Listen("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		c.Write(data)
		c.Close()
	}()
	return hex.EncodeToString(sum[:])
}

// pauseMidStream pauses the VM once the upload is vhPauseAt bytes in,
// takes a snapshot into dir (which stops the kernel's rings, saves where
// they stopped and starts them again from there), checks that nothing
// arrives while the VM is paused, and resumes it. It returns what it
// saw, prefixed "fail: " if it went wrong.
func pauseMidStream(ctx context.Context, sock, dir string, up *hashedReceiver) string {
	select {
	case <-up.pauseAt:
	case <-ctx.Done():
		return "fail: the upload never reached the pause point"
	}
	cl := api.NewClient(sock)
	defer cl.Close()
	if _, err := cl.Do(ctx, http.MethodPut, "vm.pause", nil); err != nil {
		return "fail: vm.pause: " + err.Error()
	}
	resumed := false
	defer func() {
		if !resumed { // a failed snapshot must not leave the guest paused
			cl.Do(ctx, http.MethodPut, "vm.resume", nil)
		}
	}()
	// What the kernel had sent before the pause reaches the socket within
	// moments; from then on a paused VM sends nothing. The stall is a
	// time the test lets pass, not a wait for an event.
	time.Sleep(vhStall / 5)
	before := up.n.Load()
	t0 := time.Now()
	if _, err := cl.Do(ctx, http.MethodPut, "vm.snapshot", []byte(`{"destination_url": "file://`+dir+`"}`)); err != nil {
		return "fail: vm.snapshot: " + err.Error()
	}
	took := time.Since(t0)
	time.Sleep(vhStall)
	after := up.n.Load()
	resumed = true
	if _, err := cl.Do(ctx, http.MethodPut, "vm.resume", nil); err != nil {
		return "fail: vm.resume: " + err.Error()
	}
	if after != before {
		return fmt.Sprintf("fail: %d bytes of the upload arrived while the VM was paused: the kernel's rings did not stop", after-before)
	}
	return fmt.Sprintf("paused at %d bytes of the upload, snapshot in %v, %v more: nothing arrived meanwhile; resumed", before, took.Round(time.Millisecond), vhStall)
}

// vhMigScript streams numbered lines to the host (as migDiskPrelude),
// then runs the migration guest program, whose reports migrateHops reads.
func vhMigScript() string {
	return `ip link set eth0 up && ip addr add ` + vhMigGuestIP + `/24 dev eth0
( i=0; while :; do i=$((i+1)); echo $i; sleep 0.1; done ) | nc ` + vhMigHostIP + ` ` + strconv.Itoa(vhStreamPort) + ` &
exec ` + migGuest + ` 64
`
}

func testVhostNetMigration(t *testing.T) {
	if migGuest == "" {
		t.Fatal("VIO_MIGGUEST is not set: run through TestMain")
	}
	labRetry(t, func(t *testing.T, reset *labReset) {
		a := labtest.Assets(t)
		dir := t.TempDir()
		run(t, "ip", "tuntap", "add", vhMigTap, "mode", "tap")
		t.Cleanup(func() { exec.Command("ip", "link", "del", vhMigTap).Run() })
		run(t, "ip", "addr", "add", vhMigHostIP+"/24", "dev", vhMigTap)
		run(t, "ip", "link", "set", vhMigTap, "up")
		stream := serveNetStream(t, fmt.Sprintf("%s:%d", vhMigHostIP, vhStreamPort))
		initrd, _ := labtest.Guest{
			Script:   vhMigScript(),
			Modules:  []string{"virtio_pci", "virtio_net"},
			Programs: []string{migGuest},
			Inline:   true,
		}.Build(t)
		ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
		defer cancel()
		vios := [2]*hopVio{startHopVio(t, ctx, dir, "a"), startHopVio(t, ctx, dir, "b")}
		put(t, ctx, vios[0].cl, "vm.create", `{
	  "payload": {"kernel": "`+a.Kernel+`", "initramfs": "`+initrd+`", "cmdline": "console=ttyS0 panic=-1 quiet"},
	  "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
	  "memory": {"size": 268435456, "shared": true},
	  "net": [{"id": "n0", "tap": "`+vhMigTap+`", "mac": "52:54:00:12:34:79", "vhost_net": true}],
	  "serial": {"mode": "Tty"}, "console": {"mode": "Off"}
	}`)
		put(t, ctx, vios[0].cl, "vm.boot", "")
		var last migLine
		for range 3 {
			last = vios[0].p.next(t, ctx, "a")
		}
		stream.waitLines(t, ctx, 10, "before the hop")
		var afterHop int
		figs := migrateHops(t, ctx, vios, last, hopPlan{
			reset: reset,
			hops:  1,
			local: true,
			url:   func(hop int) string { return "unix:" + filepath.Join(dir, "mig"+strconv.Itoa(hop)+".sock") },
			check: func(m map[string]string) string {
				if m["reason"] != "local" {
					return "not a local migration"
				}
				if why := stream.check(); why != "" {
					return "the guest's TCP stream: " + why
				}
				afterHop = stream.count()
				return ""
			},
		})
		t.Logf("LOCAL MIGRATION with vhost=on: %s", hopSummary(figs, 0))
		// The destination's kernel rings carry the stream on.
		stream.waitLines(t, ctx, afterHop+20, "after the hop")
		if why := stream.check(); why != "" {
			t.Fatalf("the guest's TCP stream: %s", why)
		}
		stream.mu.Lock()
		t.Logf("the guest's TCP stream: one connection, %d lines in order (%d after the hop), longest silence %v",
			stream.lines, stream.lines-afterHop, stream.maxGap.Round(time.Millisecond))
		stream.mu.Unlock()
	})
}

// The pre-copy scenario's ports: the host sends vhXfer bytes paced over
// about vhPaceTime on the first, the guest sends back their hash on the
// second.
const (
	vhPaceDownPort = 5485
	vhSumPort      = 5486
	vhPaceTime     = 20 * time.Second
	vhPaceChunk    = 64 << 10
)

func vhPrecopyScript() string {
	return `ip link set eth0 up && ip addr add ` + vhMigGuestIP + `/24 dev eth0
( nc ` + vhMigHostIP + ` ` + strconv.Itoa(vhPaceDownPort) + ` | sha256sum | cut -d' ' -f1 | nc ` + vhMigHostIP + ` ` + strconv.Itoa(vhSumPort) + ` ) &
exec ` + migGuest + ` 64
`
}

// pacedSender serves vhXfer random bytes to one connection at a steady
// pace (the guest's receive buffers are written throughout a migration's
// pre-copy) and closes started once a few MiB are out.
type pacedSender struct {
	sum     string
	started chan struct{}
	sent    atomic.Int64
}

func sendPaced(t *testing.T, addr string) *pacedSender {
	t.Helper()
	data := make([]byte, vhXfer)
	rand.Read(data)
	h := sha256.Sum256(data)
	s := &pacedSender{sum: hex.EncodeToString(h[:]), started: make(chan struct{})}
	l, err := net.Listen("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		// The pace is the workload's, not a synchronization.
		tick := time.NewTicker(vhPaceTime / time.Duration(vhXfer/vhPaceChunk))
		defer tick.Stop()
		for off := 0; off < vhXfer; off += vhPaceChunk {
			<-tick.C
			if _, err := c.Write(data[off : off+vhPaceChunk]); err != nil {
				return
			}
			if s.sent.Add(vhPaceChunk) == 4<<20 {
				close(s.started)
			}
		}
	}()
	return s
}

// receiveLine accepts one connection on addr and returns its first line.
func receiveLine(t *testing.T, addr string) <-chan string {
	t.Helper()
	l, err := net.Listen("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	out := make(chan string, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		// One line: the guest's nc may keep the connection open.
		line, _ := bufio.NewReader(io.LimitReader(c, 256)).ReadString('\n')
		out <- strings.TrimSpace(line)
	}()
	return out
}

func testVhostNetPrecopy(t *testing.T) {
	if migGuest == "" {
		t.Fatal("VIO_MIGGUEST is not set: run through TestMain")
	}
	labRetry(t, func(t *testing.T, reset *labReset) {
		a := labtest.Assets(t)
		dir := t.TempDir()
		run(t, "ip", "tuntap", "add", vhMigTap, "mode", "tap")
		t.Cleanup(func() { exec.Command("ip", "link", "del", vhMigTap).Run() })
		run(t, "ip", "addr", "add", vhMigHostIP+"/24", "dev", vhMigTap)
		run(t, "ip", "link", "set", vhMigTap, "up")
		down := sendPaced(t, fmt.Sprintf("%s:%d", vhMigHostIP, vhPaceDownPort))
		sum := receiveLine(t, fmt.Sprintf("%s:%d", vhMigHostIP, vhSumPort))
		initrd, _ := labtest.Guest{
			Script:   vhPrecopyScript(),
			Modules:  []string{"virtio_pci", "virtio_net"},
			Programs: []string{migGuest},
			Inline:   true,
		}.Build(t)
		ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
		defer cancel()
		vios := [2]*hopVio{startHopVio(t, ctx, dir, "a"), startHopVio(t, ctx, dir, "b")}
		put(t, ctx, vios[0].cl, "vm.create", `{
	  "payload": {"kernel": "`+a.Kernel+`", "initramfs": "`+initrd+`", "cmdline": "console=ttyS0 panic=-1 quiet"},
	  "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
	  "memory": {"size": 268435456},
	  "net": [{"id": "n0", "tap": "`+vhMigTap+`", "mac": "52:54:00:12:34:7a", "vhost_net": true}],
	  "serial": {"mode": "Tty"}, "console": {"mode": "Off"}
	}`)
		put(t, ctx, vios[0].cl, "vm.boot", "")
		var last migLine
		for range 3 {
			last = vios[0].p.next(t, ctx, "a")
		}
		select {
		case <-down.started:
		case <-ctx.Done():
			t.Fatal("the guest's download did not start")
		}
		atHop := down.sent.Load()
		figs := migrateHops(t, ctx, vios, last, hopPlan{
			reset: reset,
			hops:  1,
			url:   func(int) string { return "tcp:127.0.0.1:0" },
			check: func(m map[string]string) string {
				if m["reason"] == "local" || m["data_pages"] == "0" {
					return "no RAM was copied"
				}
				return ""
			},
		})
		t.Logf("PRE-COPY MIGRATION with vhost=on, %d of %d bytes of the download sent when it began: %s", atHop, vhXfer, hopSummary(figs, 0))
		select {
		case got := <-sum:
			if got != down.sum {
				t.Fatalf("the guest received a download hashing to %q, the host sent %s: pages the kernel wrote were lost or stale", got, down.sum)
			}
			t.Logf("the guest's download across the hop hashes right (%s)", got)
		case <-ctx.Done():
			t.Fatalf("the guest did not report its download's hash (%d of %d bytes sent)", down.sent.Load(), vhXfer)
		}
	})
}
