package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/viovmm/vio/lab/labtest"
)

// The guest and the lab host talk over a TAP device with link-local
// addresses: the lab VM has no network of its own, so nothing leaves it.
const (
	tapName   = "viotap0"
	hostIP    = "169.254.100.1"
	guestIP   = "169.254.100.2"
	tcpPort   = 5001
	tcpBytes  = 4 << 20
	knownOff  = 1 << 20
	knownText = "vio-known-offset-pattern"
)

// virtioGuest exercises every paravirtual device with the stock Debian
// drivers and reports "CHECK name ok|fail detail" lines on the serial port.
var virtioGuest = `
check() { if [ "$2" = 0 ]; then echo "CHECK $1 ok $3"; else echo "CHECK $1 fail $3"; fi; }
# vda: ext4 with checksummed files and fio's verification
mkfs.ext4 -q -F /dev/vda; check mkfs $?
mkdir -p /mnt && mount -t ext4 /dev/vda /mnt; check mount $?
dd if=/dev/urandom of=/mnt/data bs=1M count=4 2>/dev/null
a=$(sha256sum /mnt/data | cut -d' ' -f1)
umount /mnt && echo 3 > /proc/sys/vm/drop_caches && mount -t ext4 /dev/vda /mnt
b=$(sha256sum /mnt/data | cut -d' ' -f1)
[ "$a" = "$b" ]; check ext4-checksum $? "$a"
fio --name=verify --filename=/mnt/fio --size=4M --rw=randwrite --bs=4k --ioengine=psync \
	--verify=crc32c --do_verify=1 --verify_fatal=1 --numjobs=1 > /tmp/fio.log 2>&1
check fio-verify $? "$(grep -o 'err= *[0-9]*' /tmp/fio.log | head -1)"
umount /mnt; check umount $?
# vdb is read-only
echo x | dd of=/dev/vdb bs=512 count=1 conv=fsync 2>/dev/null
[ $? != 0 ]; check readonly $?
# vdc: a pattern at a known offset, then a discard of its second half
printf '%s' "` + knownText + `" | dd of=/dev/vdc bs=512 seek=$((` + fmt.Sprint(knownOff) + `/512)) conv=fsync 2>/dev/null; check known-offset $?
blkdiscard -o $((16<<20)) -l $((16<<20)) /dev/vdc; check discard $?
# rng
n=$(dd if=/dev/hwrng bs=64 count=1 2>/dev/null | wc -c); [ "$n" = 64 ]; check hwrng $? "$(cat /sys/class/misc/hw_random/rng_current)"
# console: echo back one line the host sends
# (hold the port open first: the driver discards input for a closed port)
exec 3< /dev/hvc0
echo console-ready > /dev/hvc0
read -t 60 -r line <&3; echo "console-echo:$line" > /dev/hvc0; [ -n "$line" ]; check console-read $? "$line"
exec 3<&-
# network
ip link set eth0 up && ip addr add ` + guestIP + `/24 dev eth0
timeout 60 ping -c 3 -W 5 ` + hostIP + ` > /dev/null; check ping $?
dd if=/dev/urandom of=/tmp/tcp bs=1M count=` + fmt.Sprint(tcpBytes>>20) + ` 2>/dev/null
echo "TCPSUM $(sha256sum /tmp/tcp | cut -d' ' -f1)"
timeout 120 nc ` + hostIP + ` ` + fmt.Sprint(tcpPort) + ` < /tmp/tcp; check tcp-send $?
timeout 120 iperf3 -c ` + hostIP + ` -t 3 -f m > /tmp/ip1 2>&1; check iperf-tx $? "$(grep receiver /tmp/ip1 | grep -o '[0-9.]* Mbits/sec')"
timeout 120 iperf3 -c ` + hostIP + ` -t 3 -f m -R > /tmp/ip2 2>&1; check iperf-rx $? "$(grep receiver /tmp/ip2 | grep -o '[0-9.]* Mbits/sec')"
echo VIO-GUEST-DONE
poweroff -f
`

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func allocatedBytes(t *testing.T, file string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(file, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// TestVirtioDevices: a guest with three virtio disks (ext4, read-only,
// raw pattern + discard), a NIC on a TAP device, virtio-rng and a virtio
// console, all with Debian's stock drivers; results checked from both sides.
func TestVirtioDevices(t *testing.T) {
	dir := t.TempDir()
	ext4, ro, pat := filepath.Join(dir, "ext4.img"), filepath.Join(dir, "ro.img"), filepath.Join(dir, "pattern.img")
	for _, f := range []string{ext4, ro} {
		run(t, "truncate", "-s", "128M", f)
	}
	// The pattern disk starts fully allocated so the discard shows.
	run(t, "dd", "if=/dev/urandom", "of="+pat, "bs=1M", "count=32", "status=none")
	before := allocatedBytes(t, pat)

	run(t, "ip", "tuntap", "add", tapName, "mode", "tap")
	defer exec.Command("ip", "link", "del", tapName).Run()
	run(t, "ip", "addr", "add", hostIP+"/24", "dev", tapName)
	run(t, "ip", "link", "set", tapName, "up")

	// The host ends of the network checks: a TCP sink that hashes what
	// it gets, and an iperf3 server.
	tcpSum := hashSink(t, fmt.Sprintf("%s:%d", hostIP, tcpPort), tcpBytes)
	iperf := exec.Command("iperf3", "-s", "-B", hostIP)
	if err := iperf.Start(); err != nil {
		t.Fatal(err)
	}
	defer iperf.Process.Kill()

	initrd, tools := labtest.Guest{
		Script:   virtioGuest,
		Modules:  []string{"virtio_pci", "virtio_blk", "virtio_net", "virtio_rng", "virtio_console", "ext4"},
		Programs: []string{"/usr/sbin/mkfs.ext4", "/usr/bin/fio", "/usr/bin/iperf3", "/usr/sbin/blkdiscard"},
	}.Build(t)
	serial := filepath.Join(dir, "serial.log")
	args := vioArgs(t, initrd, "--cpus", "2", "--rng",
		"--disk", "path="+ext4+",serial=vio-ext4",
		"--disk", "path="+ro+",readonly=on",
		"--disk", "path="+pat,
		"--disk", "path="+tools+",readonly=on",
		"--net", "tap="+tapName+",mac=52:54:00:12:34:56",
		"--serial", "file="+serial, "--console", "tty", "--stats")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cmd := quitOnDeadline(exec.CommandContext(ctx, args[0], args[1:]...)) // a hang dumps its goroutines
	// The virtio console is vio's stdin/stdout: answer the guest's
	// "console-ready" with one line.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var consoleOut, stats bytes.Buffer
	cmd.Stderr = &stats
	consoleDone := make(chan struct{})
	go func() {
		defer close(consoleDone)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			consoleOut.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "console-ready") {
				io.WriteString(stdin, "console-in\n")
			}
		}
	}()
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	<-consoleDone
	err = cmd.Wait()
	t.Logf("vio ran for %v", time.Since(start).Round(time.Second))
	log, _ := os.ReadFile(serial)
	if err != nil {
		t.Fatalf("vio: %v\nvirtio console:\n%s\nserial:\n%s", err, consoleOut.String(), log)
	}

	r := readReport(t, log)
	r.expect(t, "mkfs", "mount", "ext4-checksum", "fio-verify", "umount", "readonly",
		"known-offset", "discard", "hwrng", "console-read", "ping", "tcp-send", "iperf-tx", "iperf-rx")
	if !strings.Contains(consoleOut.String(), "console-echo:console-in") {
		t.Errorf("virtio console: no echo of the host's line; got %q", consoleOut.String())
	}
	expectSum(t, "TCP transfer", tcpSum, r.value("TCPSUM"))

	// vio's own counters agree that the I/O went through the devices.
	counters := lastStats(t, stats.Bytes())
	var vcpus []map[string]any
	if err := json.Unmarshal(counters["vcpus"], &vcpus); err != nil || len(vcpus) != 2 {
		t.Errorf("--stats: want counters for 2 vCPUs, got %s (%v)", counters["vcpus"], err)
	}
	for _, c := range []struct{ dev, field string }{
		{"disk0", "Writes"}, {"disk0", "Reads"}, {"disk0", "Flushes"}, {"disk0", "Interrupts"},
		{"disk2", "Discards"}, {"net0", "TxFrames"}, {"net0", "RxFrames"}, {"net0", "Interrupts"},
	} {
		var dev struct {
			Device map[string]any `json:"device"`
		}
		json.Unmarshal(counters[c.dev], &dev)
		if n, _ := dev.Device[c.field].(float64); n == 0 {
			t.Errorf("vio's counters: %s %s = 0", c.dev, c.field)
		}
	}

	// The host's view of the disks after poweroff.
	if out, err := exec.Command("e2fsck", "-fn", ext4).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn: %v\n%s", err, out)
	}
	f, err := os.Open(pat)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := make([]byte, len(knownText))
	if _, err := f.ReadAt(got, knownOff); err != nil || string(got) != knownText {
		t.Errorf("host read %q at offset %d, want %q (%v)", got, knownOff, knownText, err)
	}
	if after := allocatedBytes(t, pat); after > before-8<<20 {
		t.Errorf("discard of 16 MiB freed too little: allocated %d -> %d bytes", before, after)
	}
}
