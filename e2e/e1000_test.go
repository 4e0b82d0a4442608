package e2e

import (
	"fmt"
	"os/exec"
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
	sink := hashSink(t, fmt.Sprintf("%s:%d", hostIP, e1000SinkTCP), e1000Bytes)
	sent := randomSource(t, fmt.Sprintf("%s:%d", hostIP, e1000SrcTCP), e1000Bytes)

	initrd := labtest.Initramfs(t, e1000Guest, "e1000")
	log, stats := runSerial(t, 8*time.Minute, vioArgs(t, initrd, "--cpus", "2",
		"--net", "tap="+e1000Tap+",mac=52:54:00:12:34:57,model=e1000", "--stats")...)
	r := readReport(t, log, "IRQ ", "STATS ", "e1000")
	r.expect(t, "driver", "no-virtio", "link", "ping", "tcp-send", "tcp-recv-nc")
	expectSum(t, "guest → host", sink, r.value("TXSUM"))
	if got := r.value("RXSUM"); got != sent {
		t.Errorf("host → guest: guest got %q, host sent %q", got, sent)
	}

	nic := deviceCounters(t, stats, "net0")
	for _, f := range []string{"TxFrames", "RxFrames", "TxBytes", "RxBytes", "Interrupts", "RegReads", "RegWrites"} {
		if nic[f] == 0 {
			t.Errorf("vio's counters: net0 %s = 0", f)
		}
	}
	if nic["RxBytes"] < e1000Bytes || nic["TxBytes"] < e1000Bytes {
		t.Errorf("vio's byte counters %v are below the %d bytes moved each way", nic, e1000Bytes)
	}
}
