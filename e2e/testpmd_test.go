package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/viovmm/vio/lab/labtest"
)

// TestTestpmd's network: the guest's vhost-user NIC is one port of DPDK's
// testpmd, a TAP in L1 (made by testpmd's net_tap) the other; testpmd
// forwards every frame from one port out of the other (io forwarding).
// Link-local addresses, in a subnet of their own: nothing leaves L1.
const (
	pmdTap      = "viopmd0"
	pmdTapMAC   = "02:00:00:66:00:01" // pinned: the guest's ARP entry outlives a testpmd restart
	pmdHostIP   = "169.254.102.1"
	pmdGuestIP  = "169.254.102.2"
	pmdGuestMAC = "52:54:00:12:34:66"
	pmdSinkTCP  = 5041 // guest → L1, hashed
	pmdSrcTCP   = 5042 // L1 → guest, hashed
	pmdIperf    = 5243
	pmdBackTCP  = 5044 // served only once the restarted testpmd forwards
	pmdBytes    = 4 << 20
)

// testpmdGuest pings L1 through testpmd, sends and fetches 4 MiB (each
// checked by SHA-256 on the other end), runs iperf3 both ways, then asks
// for testpmd's kill and restart (TP-KILL-NOW) and waits for L1's "back",
// which L1 serves only once the new testpmd forwards: the reconnection
// is then proven by a TCP exchange and a ping through the new process.
var testpmdGuest = `
check() { if [ "$2" = 0 ]; then echo "CHECK $1 ok $3"; else echo "CHECK $1 fail $3"; fi; }
H=` + pmdHostIP + `
ip link set lo up
ip link set eth0 up && ip addr add ` + pmdGuestIP + `/24 dev eth0
# The first ARP may go out before testpmd's forwarding sees the rings:
# ping until L1 answers, within a minute.
i=0; until ping -c 1 -W 1 $H >/dev/null 2>&1; do i=$((i+1)); [ $i -ge 60 ] && break; done
timeout 60 ping -c 5 -W 5 $H > /tmp/ping 2>&1; check ping $? "$(tail -1 /tmp/ping)"
dd if=/dev/urandom of=/tmp/tx bs=1M count=` + fmt.Sprint(pmdBytes>>20) + ` 2>/dev/null
echo "TXSUM $(sha256sum /tmp/tx | cut -d' ' -f1)"
timeout 180 nc $H ` + fmt.Sprint(pmdSinkTCP) + ` < /tmp/tx; check tcp-send $?
timeout 180 nc $H ` + fmt.Sprint(pmdSrcTCP) + ` > /tmp/rx < /dev/null; check tcp-recv $?
echo "RXSUM $(sha256sum /tmp/rx | cut -d' ' -f1) $(wc -c < /tmp/rx)"
for dir in send recv; do
	flag=; [ $dir = recv ] && flag=-R
	timeout 60 iperf3 -c $H -p ` + fmt.Sprint(pmdIperf) + ` -t 3 -f m $flag > /tmp/ip 2>&1
	check iperf-$dir $? "$(awk '/receiver/ {print $7, $8}' /tmp/ip)"
done
echo TP-KILL-NOW
# Until L1 has restarted testpmd the port is refused (the old testpmd may
# still forward) or silent (none does): try for two minutes.
end=$(( $(date +%s) + 120 )); n=0; r=
while [ "$(date +%s)" -lt $end ]; do
	n=$((n+1))
	r=$(timeout 5 nc $H ` + fmt.Sprint(pmdBackTCP) + ` < /dev/null 2>/dev/null)
	[ "$r" = back ] && break
	sleep 1
done
[ "$r" = back ]; check after-restart $? "tries=$n"
timeout 60 ping -c 5 -W 5 $H > /tmp/ping 2>&1; check ping-after-restart $? "$(tail -1 /tmp/ping)"
echo VIO-GUEST-DONE
poweroff -f
`

// TestTestpmd: vio as the vhost-user front-end of DPDK's testpmd
// (net_vhost, which listens; vio connects), a stock Debian guest behind
// it. The guest pings L1 through testpmd, moves 4 MiB each way (checked
// by SHA-256 on the far end) and runs iperf3 both ways; testpmd's own
// port counters must show the bytes (its second witness that the traffic
// went through DPDK). Then testpmd is SIGKILLed while the guest's NIC is
// up and another started on the same socket: vio reconnects, and a TCP
// exchange and a ping go through the new testpmd, whose counters say so.
func TestTestpmd(t *testing.T) {
	if _, err := exec.LookPath("dpdk-testpmd"); err != nil {
		t.Fatalf("dpdk-testpmd is not installed: run scripts/setup-host (Debian packages dpdk-dev, librte-net-vhost23, librte-net-tap23): %v", err)
	}
	initrd, _ := labtest.Guest{
		Script:   testpmdGuest,
		Modules:  []string{"virtio_pci", "virtio_net"},
		Programs: []string{"/usr/bin/iperf3"},
		Inline:   true, // the guest has no disk for a tools disk
	}.Build(t)
	withLabRetry(t, func(t *testing.T) string { return testpmdRun(t, initrd) })
}

// testpmdRun is one boot of TestTestpmd; it returns what it saw when a
// lab hazard voided the run, else "".
func testpmdRun(t *testing.T, initrd string) (hazard string) {
	sock := filepath.Join(t.TempDir(), "pmd.sock")
	pmd := startTestpmd(t, sock)
	sink := hashSink(t, net.JoinHostPort(pmdHostIP, strconv.Itoa(pmdSinkTCP)), pmdBytes)
	sent := randomSource(t, net.JoinHostPort(pmdHostIP, strconv.Itoa(pmdSrcTCP)), pmdBytes)
	iperf := exec.Command("iperf3", "-s", "-B", pmdHostIP, "-p", strconv.Itoa(pmdIperf))
	if err := iperf.Start(); err != nil {
		t.Fatalf("L1's iperf3 server: %v", err)
	}
	defer func() { iperf.Process.Kill(); iperf.Wait() }()

	a := labtest.Assets(t)
	args := []string{vioBin, "run", "--kernel", a.Kernel, "--initrd", initrd,
		"--memory", "size=" + strconv.Itoa(guestMemMiB) + "M,shared=on",
		"--cmdline", "console=ttyS0 panic=-1 quiet", "--cpus", "1",
		"--net", "vhost_user=on,socket=" + sock + ",mac=" + pmdGuestMAC,
		// -v: the front-end's loss and reconnection are logged at info.
		"--serial", "tty", "--stats", "-v"}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var before map[int]portStats
	began := time.Now()
	console, stderr, err, hazard := hazardRun(t, ctx, args, func(line string) {
		if before == nil && strings.Contains(line, "TP-KILL-NOW") {
			before = pmd.stats(t)
			// SIGKILL: testpmd tells vio nothing; its socket just
			// closes, and its TAP goes with it.
			pmd.kill()
			killed := time.Now()
			pmd = startTestpmd(t, sock)
			serveBack(t)
			t.Logf("testpmd killed %v into the run; the new one forwarded %v later", killed.Sub(began).Round(time.Second), time.Since(killed).Round(10*time.Millisecond))
		}
	})
	if hazard != "" {
		return hazard
	}
	if err != nil {
		t.Fatalf("vio: %v\nstderr:\n%s\nserial:\n%s", err, stderr.String(), console.String())
	}
	after := pmd.stats(t)
	pmd.quit(t)

	r := readReport(t, console.Bytes())
	r.expect(t, "ping", "tcp-send", "tcp-recv", "iperf-send", "iperf-recv", "after-restart", "ping-after-restart")
	expectSum(t, "guest → L1 through testpmd", sink, r.value("TXSUM"))
	if got := r.value("RXSUM"); got != sent {
		t.Errorf("L1 → guest through testpmd: guest got %q, L1 sent %q", got, sent)
	}
	if before == nil {
		t.Fatalf("the guest never asked for testpmd's restart (no TP-KILL-NOW); serial:\n%s", console.String())
	}
	// testpmd's counters: port 0 is the guest's (vhost), port 1 the TAP.
	// Before the kill, each direction's 4 MiB (and iperf3's) crossed both
	// ports; after it, the exchange and the pings crossed the new one.
	t.Logf("testpmd's port counters before the kill: %v; the restarted one's at the end: %v", before, after)
	for _, c := range []struct {
		what string
		got  int64
		want int64
	}{
		{"before the kill: guest → testpmd bytes (port 0 RX)", before[0].rxBytes, pmdBytes},
		{"before the kill: testpmd → TAP bytes (port 1 TX)", before[1].txBytes, pmdBytes},
		{"before the kill: TAP → testpmd bytes (port 1 RX)", before[1].rxBytes, pmdBytes},
		{"before the kill: testpmd → guest bytes (port 0 TX)", before[0].txBytes, pmdBytes},
		// 5 pings and the "back" connection's segments each way.
		{"after the restart: guest → testpmd packets (port 0 RX)", after[0].rxPackets, 6},
		{"after the restart: testpmd → guest packets (port 0 TX)", after[0].txPackets, 6},
	} {
		if c.got < c.want {
			t.Errorf("testpmd's counters, %s: %d, want at least %d", c.what, c.got, c.want)
		}
	}
	// vio's account of the outage (its -v log lines about the back-end).
	for _, l := range strings.Split(stderr.String(), "\n") {
		if strings.Contains(l, "vhost-user back-end") {
			t.Logf("vio: %s", l)
		}
	}
	if !strings.Contains(stderr.String(), "vhost-user back-end reconnected") {
		t.Errorf("vio did not log a reconnection to the restarted testpmd; stderr:\n%s", stderr.String())
	}
	if strings.Contains(stderr.String(), "needs a reset") {
		t.Errorf("vio gave up on the vhost-user NIC; stderr:\n%s", stderr.String())
	}
	return ""
}

// serveBack answers every TCP connection to pmdBackTCP with "back": the
// guest's sign that the restarted testpmd forwards.
func serveBack(t *testing.T) {
	ln, err := net.Listen("tcp", net.JoinHostPort(pmdHostIP, strconv.Itoa(pmdBackTCP)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "back\n")
			c.Close()
		}
	}()
}

// pmdProc is a testpmd in interactive mode: the test sends it commands on
// its stdin and reads their answers from its stdout (line-buffered by
// stdbuf, since testpmd's printf output to a pipe would otherwise sit in
// a buffer).
type pmdProc struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	done    chan struct{} // closed when stdout ends
	changed chan struct{} // signalled on each line
	mu      sync.Mutex
	out     bytes.Buffer // stdout and stderr, as they came
}

// startTestpmd starts testpmd with the guest's port (net_vhost, a server
// on sock) and L1's (net_tap, pmdTap), forwarding between them, and
// returns once it forwards, with the TAP addressed and up. No hugepages
// (--no-huge: enough for net_vhost), no PCI; its two lcores on L1's last
// CPU, since the forwarding one polls without pause and the guest's vCPU
// should keep the other. A killed testpmd's socket file is removed first
// (testpmd cannot bind over it).
func startTestpmd(t *testing.T, sock string) *pmdProc {
	t.Helper()
	os.Remove(sock)
	cpu := runtime.NumCPU() - 1
	cmd := exec.Command("stdbuf", "-oL", "dpdk-testpmd",
		"--no-pci", "--no-huge", "-m", "128", "--no-shconf", "--file-prefix", "vio-e2e-pmd",
		"--lcores", fmt.Sprintf("0@%d,1@%d", cpu, cpu),
		"--vdev", "net_vhost0,iface="+sock+",queues=1",
		"--vdev", "net_tap0,iface="+pmdTap,
		"--", "-i", "--auto-start", "--forward-mode=io", "--total-num-mbufs=4096")
	p := &pmdProc{cmd: cmd, done: make(chan struct{}), changed: make(chan struct{}, 1)}
	var err error
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = p
	if err := cmd.Start(); err != nil {
		t.Fatalf("dpdk-testpmd: %v", err)
	}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.Write(append(sc.Bytes(), '\n'))
		}
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("testpmd's output:\n%s", p.output())
		}
	})
	// Its first answer means it is up: the ports are started (the TAP
	// exists) and forwarding runs.
	p.stats(t)
	run(t, "ip", "link", "set", pmdTap, "address", pmdTapMAC)
	run(t, "ip", "addr", "add", pmdHostIP+"/24", "dev", pmdTap)
	run(t, "ip", "link", "set", pmdTap, "up")
	return p
}

// Write collects testpmd's output and wakes a waiting reader.
func (p *pmdProc) Write(b []byte) (int, error) {
	p.mu.Lock()
	p.out.Write(b)
	p.mu.Unlock()
	select {
	case p.changed <- struct{}{}:
	default:
	}
	return len(b), nil
}

func (p *pmdProc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// portStats are one port's counters from "show port stats".
type portStats struct{ rxPackets, rxBytes, txPackets, txBytes int64 }

func (s portStats) String() string {
	return fmt.Sprintf("{rx %d pkts %d B, tx %d pkts %d B}", s.rxPackets, s.rxBytes, s.txPackets, s.txBytes)
}

// portBlock is one port's block of "show port stats all" (other threads'
// event lines may come between its lines).
var portBlock = regexp.MustCompile(`(?s)NIC statistics for port (\d+).*?RX-packets: +(\d+) .*?RX-bytes: +(\d+)\n.*?TX-packets: +(\d+) .*?TX-bytes: +(\d+)\n`)

// stats asks testpmd for both ports' counters and waits for the answer.
func (p *pmdProc) stats(t *testing.T) map[int]portStats {
	t.Helper()
	from := len(p.output())
	if _, err := io.WriteString(p.stdin, "show port stats all\n"); err != nil {
		t.Fatalf("testpmd's stdin: %v\n%s", err, p.output())
	}
	deadline := time.After(2 * time.Minute) // EAL's start-up at the lab's emulated speed
	for {
		ms := portBlock.FindAllStringSubmatch(p.output()[from:], -1)
		if len(ms) >= 2 {
			s := map[int]portStats{}
			for _, m := range ms {
				n, _ := strconv.Atoi(m[1])
				v := make([]int64, 4)
				for i := range v {
					v[i], _ = strconv.ParseInt(m[2+i], 10, 64)
				}
				s[n] = portStats{v[0], v[1], v[2], v[3]}
			}
			return s
		}
		select {
		case <-p.changed:
		case <-p.done:
			t.Fatalf("testpmd exited without its port counters:\n%s", p.output())
		case <-deadline:
			t.Fatalf("testpmd did not answer \"show port stats all\" within 2 minutes:\n%s", p.output())
		}
	}
}

// quit ends testpmd the ordinary way; one that does not is killed.
func (p *pmdProc) quit(t *testing.T) {
	t.Helper()
	io.WriteString(p.stdin, "quit\n")
	select {
	case <-p.done:
	case <-time.After(time.Minute):
		t.Errorf("testpmd did not quit within a minute")
	}
	p.kill()
}

// kill is SIGKILL, and waits for the process (its TAP is gone after).
func (p *pmdProc) kill() {
	if p.cmd.ProcessState == nil {
		p.cmd.Process.Kill()
		p.cmd.Wait()
	}
}
