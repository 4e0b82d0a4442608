package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/lab/labtest"
)

const (
	e1000Tap     = "vioe1000"
	e1000SinkTCP = 5011 // guest → host
	e1000SrcTCP  = 5012 // host → guest
	e1000Bytes   = 2 << 20
)

// e1000Guest uses the emulated NIC with the stock e1000 driver alone.
var e1000Guest = `
check() { if [ "$2" = 0 ]; then echo "CHECK $1 ok $3"; else echo "CHECK $1 fail $3"; fi; }
drv=$(basename "$(readlink /sys/class/net/eth0/device/driver)")
[ "$drv" = e1000 ]; check driver $? "$drv"
[ ! -d /sys/module/virtio_net ]; check no-virtio $?
ip link set eth0 up && ip addr add ` + guestIP + `/24 dev eth0
i=0; while [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" != 1 ] && [ $i -lt 30 ]; do sleep 1; i=$((i+1)); done
[ "$(cat /sys/class/net/eth0/carrier)" = 1 ]; check link $? "$(cat /sys/class/net/eth0/speed)Mb/s after ${i}s"
timeout 60 ping -c 3 -W 5 ` + hostIP + ` > /tmp/ping 2>&1; check ping $? "$(tail -1 /tmp/ping)"
dd if=/dev/urandom of=/tmp/tx bs=1M count=` + fmt.Sprint(e1000Bytes>>20) + ` 2>/dev/null
echo "TXSUM $(sha256sum /tmp/tx | cut -d' ' -f1)"
timeout 180 nc ` + hostIP + ` ` + fmt.Sprint(e1000SinkTCP) + ` < /tmp/tx; check tcp-send $?
timeout 180 nc ` + hostIP + ` ` + fmt.Sprint(e1000SrcTCP) + ` > /tmp/rx < /dev/null; check tcp-recv-nc $?
echo "RXSUM $(sha256sum /tmp/rx | cut -d' ' -f1) $(wc -c < /tmp/rx)"
echo "IRQ $(grep eth0 /proc/interrupts | tr -s ' ')"
echo "STATS $(cat /sys/class/net/eth0/statistics/rx_packets) $(cat /sys/class/net/eth0/statistics/tx_packets) $(cat /sys/class/net/eth0/statistics/rx_errors)"
echo VIO-GUEST-DONE
poweroff -f
`

// TestE1000Network: a Debian guest with no virtio drivers gets a network
// through the emulated Intel 82540EM: link, ping, and a checksummed TCP
// transfer each way over a TAP device, checked from both sides.
func TestE1000Network(t *testing.T) {
	run(t, "ip", "tuntap", "add", e1000Tap, "mode", "tap")
	defer exec.Command("ip", "link", "del", e1000Tap).Run()
	run(t, "ip", "addr", "add", hostIP+"/24", "dev", e1000Tap)
	run(t, "ip", "link", "set", e1000Tap, "up")

	sink, err := net.Listen("tcp", fmt.Sprintf("%s:%d", hostIP, e1000SinkTCP))
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	sinkSum := make(chan string, 1)
	go func() {
		c, err := sink.Accept()
		if err != nil {
			sinkSum <- "accept: " + err.Error()
			return
		}
		defer c.Close()
		h := sha256.New()
		n, err := io.CopyN(h, c, e1000Bytes)
		if err != nil {
			sinkSum <- fmt.Sprintf("after %d bytes: %v", n, err)
			return
		}
		sinkSum <- hex.EncodeToString(h.Sum(nil))
	}()
	src, err := net.Listen("tcp", fmt.Sprintf("%s:%d", hostIP, e1000SrcTCP))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	payload := make([]byte, e1000Bytes)
	rand.Read(payload)
	sum := sha256.Sum256(payload)
	srcSum := hex.EncodeToString(sum[:])
	go func() {
		c, err := src.Accept()
		if err != nil {
			return
		}
		c.Write(payload)
		c.Close()
	}()

	initrd := labtest.Initramfs(t, e1000Guest, "e1000")
	serial := filepath.Join(t.TempDir(), "serial.log")
	args := vioArgs(t, initrd, "--cpus", "2",
		"--net", "tap="+e1000Tap+",mac=52:54:00:12:34:57,model=e1000",
		"--serial", "file="+serial, "--stats")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var stats bytes.Buffer
	cmd.Stderr = &stats
	start := time.Now()
	err = cmd.Run()
	t.Logf("vio ran for %v", time.Since(start).Round(time.Second))
	log, _ := os.ReadFile(serial)
	if err != nil {
		t.Fatalf("vio: %v\nstderr:\n%s\nserial:\n%s", err, stats.String(), log)
	}

	checks := map[string]string{}
	var txSum, rxSum string
	checkLine := regexp.MustCompile(`^CHECK (\S+) (ok|fail) ?(.*)$`)
	sc := bufio.NewScanner(bytes.NewReader(log))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if m := checkLine.FindStringSubmatch(line); m != nil {
			checks[m[1]] = m[2]
			t.Logf("guest: %s %s %s", m[1], m[2], m[3])
		}
		if s, ok := strings.CutPrefix(line, "TXSUM "); ok {
			txSum = s
		}
		if s, ok := strings.CutPrefix(line, "RXSUM "); ok {
			rxSum = s
		}
		if strings.HasPrefix(line, "IRQ ") || strings.HasPrefix(line, "STATS ") || strings.Contains(line, "e1000") {
			t.Logf("guest: %s", line)
		}
	}
	for _, name := range []string{"driver", "no-virtio", "link", "ping", "tcp-send", "tcp-recv-nc"} {
		if checks[name] != "ok" {
			t.Errorf("guest check %s: %q", name, checks[name])
		}
	}
	if !strings.Contains(string(log), "VIO-GUEST-DONE") {
		t.Errorf("guest did not finish; serial:\n%s", log)
	}
	select {
	case s := <-sinkSum:
		if s != txSum {
			t.Errorf("guest → host: host hashed %s, guest sent %s", s, txSum)
		}
	default:
		t.Error("guest → host: the host never got the guest's data")
	}
	if want := fmt.Sprintf("%s %d", srcSum, e1000Bytes); rxSum != want {
		t.Errorf("host → guest: guest got %q, host sent %q", rxSum, want)
	}

	var counters map[string]json.RawMessage
	if err := json.Unmarshal(stats.Bytes(), &counters); err != nil {
		t.Fatalf("--stats output is not JSON: %v\n%s", err, stats.String())
	}
	var nic struct {
		Device map[string]float64 `json:"device"`
	}
	if err := json.Unmarshal(counters["net0"], &nic); err != nil {
		t.Fatalf("--stats net0: %v (%s)", err, counters["net0"])
	}
	t.Logf("e1000 counters: %v", nic.Device)
	for _, f := range []string{"TxFrames", "RxFrames", "TxBytes", "RxBytes", "Interrupts", "RegReads", "RegWrites"} {
		if nic.Device[f] == 0 {
			t.Errorf("vio's counters: net0 %s = 0", f)
		}
	}
	if nic.Device["RxBytes"] < e1000Bytes || nic.Device["TxBytes"] < e1000Bytes {
		t.Errorf("vio's byte counters %v are below the %d bytes moved each way", nic.Device, e1000Bytes)
	}
}
