package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/lab/labtest"
)

const (
	mqTap       = "viomq0"
	mqPairs     = 4
	mqIperfBase = 5301 // the host's iperf3 servers: one per guest CPU
)

// mqGuest drives a 4-pair virtio NIC from 4 CPUs. Linux's virtio_net
// turns on as many pairs as it has CPUs by default (there is no ethtool in
// the initramfs to do it by hand; the queue count in sysfs says what it
// did) and maps each CPU to its own transmit queue (XPS). Debian's
// iperf3 (3.12) runs all its streams on one thread, so iperf3 -P 4 alone
// would leave from one CPU and one queue: the guest runs one iperf3 -P 2
// per CPU, pinned with taskset, to its own server port, in each
// direction. A multi-queue TAP sends a flow's frames back on the queue
// the guest sent it on, so the receive queues follow.
var mqGuest = `
check() { if [ "$2" = 0 ]; then echo "CHECK $1 ok $3"; else echo "CHECK $1 fail $3"; fi; }
echo "CPUS $(nproc)"
ip link set eth0 up && ip addr add ` + guestIP + `/24 dev eth0
rxq=$(ls -d /sys/class/net/eth0/queues/rx-* | wc -l); txq=$(ls -d /sys/class/net/eth0/queues/tx-* | wc -l)
[ "$rxq" = ` + fmt.Sprint(mqPairs) + ` ] && [ "$txq" = ` + fmt.Sprint(mqPairs) + ` ]; check queues $? "rx=$rxq tx=$txq"
echo "XPS $(cat /sys/class/net/eth0/queues/tx-*/xps_cpus 2>/dev/null | tr '\n' ' ')"
! dmesg | grep -i -q 'fail to set num of queue'; check pairs-set $? "$(dmesg | grep -i virtio_net | tail -1)"
timeout 60 ping -c 3 -W 5 ` + hostIP + ` > /tmp/ping 2>&1; check ping $? "$(tail -1 /tmp/ping)"
for dir in tx rx; do
	flag=; [ $dir = rx ] && flag=-R
	pids=
	for i in 0 1 2 3; do
		taskset -c $i timeout 120 iperf3 -c ` + hostIP + ` -p $((` + fmt.Sprint(mqIperfBase) + `+i)) -P 2 -t 3 -f m $flag > /tmp/ip-$dir-$i 2>&1 &
		pids="$pids $!"
	done
	i=0
	for p in $pids; do
		wait $p; check iperf-$dir-$i $? "$(grep 'SUM.*receiver' /tmp/ip-$dir-$i | grep -o '[0-9.]* Mbits/sec')"
		i=$((i+1))
	done
done
grep -E 'virtio[0-9]+-(input|output)\.[0-9]+' /proc/interrupts | while read -r l; do echo "VIRQ $l"; done
echo VIO-GUEST-DONE
poweroff -f
`

// TestNetMultiQueue: a stock Linux guest with 4 vCPUs and a virtio NIC
// with 4 queue pairs on a multi-queue TAP (--net tap=NAME,queues=4) runs
// iperf3 both ways from every CPU to servers on the lab host. Every
// receive and transmit queue must have carried frames by vio's per-queue
// counters (--stats), and every queue's own MSI-X vector must have fired
// by the guest's /proc/interrupts. First, a TAP that is not multi-queue
// must be refused with a sentence that says how to make one.
func TestNetMultiQueue(t *testing.T) {
	initrd, _ := labtest.Guest{
		Script:   mqGuest,
		Modules:  []string{"virtio_pci", "virtio_net"},
		Programs: []string{"/usr/bin/iperf3"},
		Inline:   true,
	}.Build(t)

	// A single-queue TAP cannot take 4 queues: refused before the guest
	// boots, in a sentence naming the remedy.
	single := "viomq1"
	run(t, "ip", "tuntap", "add", single, "mode", "tap")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // a VM that boots instead is a failure, not a hang
	out, err := exec.CommandContext(ctx, vioBin, vioArgs(t, initrd, "--cpus", "4", "--net", "tap="+single+",queues=4")[1:]...).CombinedOutput()
	cancel()
	exec.Command("ip", "link", "del", single).Run()
	if err == nil || !strings.Contains(string(out), "multi_queue") {
		t.Errorf("4 queues on a single-queue TAP: %v, want a refusal naming multi_queue:\n%s", err, out)
	}

	run(t, "ip", "tuntap", "add", mqTap, "mode", "tap", "multi_queue")
	defer exec.Command("ip", "link", "del", mqTap).Run()
	run(t, "ip", "addr", "add", hostIP+"/24", "dev", mqTap)
	run(t, "ip", "link", "set", mqTap, "up")
	for i := range mqPairs {
		srv := exec.Command("iperf3", "-s", "-B", hostIP, "-p", fmt.Sprint(mqIperfBase+i))
		if err := srv.Start(); err != nil {
			t.Fatalf("the host's iperf3 server: %v", err)
		}
		defer func() { srv.Process.Kill(); srv.Wait() }()
	}

	start := time.Now()
	console, stats := runSerial(t, 12*time.Minute, vioArgs(t, initrd, "--cpus", fmt.Sprint(mqPairs),
		"--net", fmt.Sprintf("tap=%s,mac=52:54:00:12:34:58,queues=%d", mqTap, mqPairs), "--stats")...)
	t.Logf("the guest's run took %v", time.Since(start).Round(time.Second))
	r := readReport(t, console, "CPUS ", "XPS ", "VIRQ ")
	checks := []string{"queues", "pairs-set", "ping"}
	for _, dir := range []string{"tx", "rx"} {
		for i := range mqPairs {
			checks = append(checks, fmt.Sprintf("iperf-%s-%d", dir, i))
		}
	}
	r.expect(t, checks...)
	if r.value("CPUS") != fmt.Sprint(mqPairs) {
		t.Errorf("the guest has %q CPUs, want %d", r.value("CPUS"), mqPairs)
	}

	// vio's counters: every queue of every pair carried frames, and the
	// driver's commands (the pair count among them) were all accepted.
	all := lastStats(t, stats)
	var nic struct {
		Device map[string]float64 `json:"device"`
		Queues []struct {
			RxFrames, RxBytes, TxFrames, TxBytes, RxInterrupts, TxInterrupts uint64
		} `json:"queues"`
	}
	if err := json.Unmarshal(all["net0"], &nic); err != nil {
		t.Fatalf("--stats net0: %v (%s)", err, all["net0"])
	}
	if len(nic.Queues) != mqPairs {
		t.Fatalf("--stats net0 has %d queue pairs, want %d: %s", len(nic.Queues), mqPairs, all["net0"])
	}
	for i, q := range nic.Queues {
		t.Logf("net0 pair %d: rx %d frames %d bytes %d interrupts, tx %d frames %d bytes %d interrupts",
			i, q.RxFrames, q.RxBytes, q.RxInterrupts, q.TxFrames, q.TxBytes, q.TxInterrupts)
		if q.RxFrames == 0 || q.TxFrames == 0 {
			t.Errorf("queue pair %d carried rx %d, tx %d frames: every queue should have carried traffic", i, q.RxFrames, q.TxFrames)
		}
	}
	if nic.Device["CtrlCommands"] == 0 || nic.Device["CtrlErrors"] != 0 {
		t.Errorf("control queue: %v commands, %v refused; the driver's pair count should have been accepted", nic.Device["CtrlCommands"], nic.Device["CtrlErrors"])
	}

	// The guest's view: each queue's vector fired.
	cpus, _ := strconv.Atoi(r.value("CPUS"))
	fired := map[string]uint64{}
	for _, l := range r.values["VIRQ"] {
		f := strings.Fields(l)
		if len(f) < 2+cpus || cpus == 0 {
			continue
		}
		var n uint64
		for _, c := range f[1 : 1+cpus] {
			v, _ := strconv.ParseUint(c, 10, 64)
			n += v
		}
		name := f[len(f)-1]
		fired[name[strings.IndexByte(name, '-')+1:]] += n
	}
	for i := range mqPairs {
		for _, dir := range []string{"input", "output"} {
			name := fmt.Sprintf("%s.%d", dir, i)
			if fired[name] == 0 {
				t.Errorf("the guest's /proc/interrupts shows no interrupt on %s (vectors seen: %v)", name, fired)
			}
		}
	}
}
