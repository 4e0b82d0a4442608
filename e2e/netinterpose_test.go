package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/viovmm/vio/lab/labtest"
	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/bond"
	"github.com/viovmm/vio/netdev/ids"
	"github.com/viovmm/vio/netdev/pcap"
	"github.com/viovmm/vio/netdev/socket"
	"github.com/viovmm/vio/netdev/tap"
	"github.com/viovmm/vio/netdev/vswitch"
)

// The interposers and the bond of docs/network.md, each checked on a
// stock guest against a witness that is not vio: tcpdump and the hashes
// of both ends for the pcap mirror, the peer's own record of what reached
// it for the IPS hook, iperf3 and hashes through a switch that is killed
// for the bond.

// nicStats are one NIC's counters from vio's --stats JSON: the device's
// and its back-end stack's.
type nicStats struct {
	Device  map[string]float64 `json:"device"`
	Backend struct {
		Pcap *pcap.Stats `json:"pcap"`
		IDS  *ids.Stats  `json:"ids"`
		Bond *bond.Stats `json:"bond"`
	} `json:"backend"`
}

// vioNICs returns every NIC's counters from the --stats JSON at the end
// of vio's stderr, by device name.
func vioNICs(t *testing.T, stderr []byte) map[string]nicStats {
	t.Helper()
	all := lastStats(t, stderr)
	nics := map[string]nicStats{}
	for name, raw := range all {
		if !strings.HasPrefix(name, "net") {
			continue
		}
		var n nicStats
		if err := json.Unmarshal(raw, &n); err != nil {
			t.Fatalf("--stats of %s: %v (%s)", name, err, raw)
		}
		nics[name] = n
	}
	return nics
}

// TestInterposeLab's network. NIC P (net0) is on a TAP in L1 and mirrors
// into a pcap file; NIC S (net1) is a socket whose peer is the test's
// responder (10.0.0.100, as in TestSwitchLab), behind an IPS hook whose
// inspector is the test too.
const (
	ipTap       = "viopcap0"
	ipHostIP    = "169.254.103.1"
	ipGuestIP   = "169.254.103.2"
	ipPcapMAC   = "52:54:00:00:03:01"
	ipIPSMAC    = "52:54:00:00:03:02"
	ipIPSGuest  = "10.0.0.5"
	ipSinkTCP   = 5051 // guest → L1, hashed
	ipSrcTCP    = 5052 // L1 → guest, hashed
	ipBytes     = 4 << 20
	ipPings     = 24   // the numbered sequence of echo requests through the IPS
	ipSizeBase  = 100  // request k carries ipSizeBase+k data bytes: its number
	ipMarkOut   = 0xee // the inspector drops echo requests from the guest filled with it
	ipMarkIn    = 0xdd // ... and echo replies to the guest filled with it
	ipPlainFill = 0x5a
)

// ipMark is the fill of echo request k: every 4th from the first is
// marked for the inspector on its way out, every 4th from the third on
// its way back (as a reply), the rest pass.
func ipMark(k int) byte {
	switch k % 4 {
	case 1:
		return ipMarkOut
	case 3:
		return ipMarkIn
	}
	return ipPlainFill
}

// interposeGuest finds its NICs by MAC, sends and fetches 4 MiB through
// the mirrored one (each hashed on both ends), then sends the numbered
// echo requests through the inspected one, all at once, each with its
// own fill; it reports IPSGOT k for each that got its reply.
var interposeGuest = func() string {
	var fills []string
	for k := 1; k <= ipPings; k++ {
		fills = append(fills, fmt.Sprintf("%02x", ipMark(k)))
	}
	return `
check() { if [ "$2" = 0 ]; then echo "CHECK $1 ok $3"; else echo "CHECK $1 fail $3"; fi; }
ifof() { for i in /sys/class/net/*; do [ "$(cat $i/address)" = "$1" ] && echo ${i##*/}; done; }
H=` + ipHostIP + `
ip link set lo up
P=$(ifof ` + ipPcapMAC + `); S=$(ifof ` + ipIPSMAC + `)
echo "NICS pcap=$P ips=$S"
ip link set $P up && ip addr add ` + ipGuestIP + `/24 dev $P
ip link set $S up && ip addr add ` + ipIPSGuest + `/24 dev $S
i=0; until ping -c 1 -W 1 $H >/dev/null 2>&1; do i=$((i+1)); [ $i -ge 60 ] && break; done
dd if=/dev/urandom of=/tmp/tx bs=1M count=` + fmt.Sprint(ipBytes>>20) + ` 2>/dev/null
echo "TXSUM $(sha256sum /tmp/tx | cut -d' ' -f1)"
timeout 180 nc $H ` + fmt.Sprint(ipSinkTCP) + ` < /tmp/tx; check tcp-send $?
timeout 180 nc $H ` + fmt.Sprint(ipSrcTCP) + ` > /tmp/rx < /dev/null; check tcp-recv $?
echo "RXSUM $(sha256sum /tmp/rx | cut -d' ' -f1) $(wc -c < /tmp/rx)"
# The responder (through the inspector, which passes unmarked pings).
i=0; until ping -c 1 -W 1 10.0.0.100 >/dev/null 2>&1; do i=$((i+1)); [ $i -ge 60 ] && break; done
ping -c 1 -W 5 10.0.0.100 >/dev/null 2>&1; check ips-reach $?
k=0; pids=
for fill in ` + strings.Join(fills, " ") + `; do
	k=$((k+1))
	(ping -c 1 -W 8 -s $((` + fmt.Sprint(ipSizeBase) + `+k)) -p $fill 10.0.0.100 >/dev/null 2>&1 && echo "IPSGOT $k") &
	pids="$pids $!"
done
# Polling, since the shell is PID 1 and reaps orphans, which ends a plain
# wait early.
for p in $pids; do i=0; while kill -0 $p 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; done
echo IPS-DONE
echo VIO-GUEST-DONE
poweroff -f
`
}()

// echoFill is the fill byte of an echo request or reply whose data past
// busybox ping's 4-byte timestamp (8 bytes, to be safe) is one byte
// repeated; ok is false for anything else.
func echoFill(frame []byte) (typ uint8, fill byte, ok bool) {
	pkt := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.NoCopy)
	icmp, _ := pkt.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
	if icmp == nil || len(icmp.Payload) <= 8 {
		return 0, 0, false
	}
	p := icmp.Payload[8:]
	for _, b := range p {
		if b != p[0] {
			return 0, 0, false
		}
	}
	return icmp.TypeCode.Type(), p[0], true
}

// inspector is an IPS inspector (netdev/ids's protocol): it drops echo
// requests from the guest filled with ipMarkOut and echo replies to it
// filled with ipMarkIn, and passes everything else.
type inspector struct {
	mu                          sync.Mutex
	messages, passed            int
	droppedOut, droppedIn       int
	verdictless, protocolErrors int
}

// serve inspects every connection on l (a guest reboot reconnects).
func (in *inspector) serve(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			r := bufio.NewReader(c)
			for {
				m, err := ids.ReadMessage(r)
				if err != nil {
					if errors.Is(err, ids.ErrProtocol) {
						in.mu.Lock()
						in.protocolErrors++
						in.mu.Unlock()
					}
					return
				}
				typ, fill, ok := echoFill(m.Frame)
				dropOut := ok && m.Dir == ids.DirFromGuest && typ == layers.ICMPv4TypeEchoRequest && fill == ipMarkOut
				dropIn := ok && m.Dir == ids.DirToGuest && typ == layers.ICMPv4TypeEchoReply && fill == ipMarkIn
				in.mu.Lock()
				in.messages++
				switch {
				case m.Flags&ids.FlagVerdict == 0:
					in.verdictless++
				case dropOut:
					in.droppedOut++
				case dropIn:
					in.droppedIn++
				default:
					in.passed++
				}
				in.mu.Unlock()
				if m.Flags&ids.FlagVerdict != 0 {
					if _, err := c.Write(ids.AppendVerdict(nil, m.ID, dropOut || dropIn)); err != nil {
						return
					}
				}
			}
		}()
	}
}

// TestInterposeLab: a stock guest with two NICs. Through the first, whose
// back-end (a TAP in L1) carries a pcap mirror, it sends and fetches 4
// MiB, each checked by SHA-256 on both ends; the capture must open in
// tcpdump -r, hold as many frames as the NIC moved, and the TCP payload of
// both transfers reassembled from it alone must hash to the same SHA-256:
// not one frame of them is missing. Through the second, a socket to the
// test's responder behind an IPS hook (ids_mode=ips) whose inspector is
// the test, it sends a numbered sequence of pings, some filled with a
// marker the inspector drops on the way out, some with one it drops on
// the way back: the responder must get exactly the requests not dropped
// on the way out, the guest exactly the replies to the unmarked ones, and
// vio's IPS counters must agree with the inspector's verdicts.
func TestInterposeLab(t *testing.T) {
	for _, p := range []string{"tcpdump", "ip"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("%s is not installed: run scripts/setup-host", p)
		}
	}
	initrd := labtest.Initramfs(t, interposeGuest, "virtio_pci", "virtio_net")
	withLabRetry(t, func(t *testing.T) string { return interposeRun(t, initrd) })
}

// interposeRun is one boot of TestInterposeLab; it returns what voided
// the run when a lab hazard did, else "".
func interposeRun(t *testing.T, initrd string) (hazard string) {
	dir := t.TempDir()
	capture := filepath.Join(dir, "p.pcap")

	run(t, "ip", "tuntap", "add", ipTap, "mode", "tap")
	defer exec.Command("ip", "link", "del", ipTap).Run()
	run(t, "ip", "addr", "add", ipHostIP+"/24", "dev", ipTap)
	run(t, "ip", "link", "set", ipTap, "up")
	sink := hashSink(t, net.JoinHostPort(ipHostIP, strconv.Itoa(ipSinkTCP)), ipBytes)
	sent := randomSource(t, net.JoinHostPort(ipHostIP, strconv.Itoa(ipSrcTCP)), ipBytes)

	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	// The IPS NIC's peer: the responder, on each connection vio makes.
	var reqMu sync.Mutex
	requests := map[int]byte{} // data size → fill, of each echo request that reached the responder
	peer, err := net.Listen("unix", filepath.Join(dir, "peer.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	go func() {
		for {
			c, err := peer.Accept()
			if err != nil {
				return
			}
			sc := socket.New(c, socket.Options{})
			defer sc.Close()
			// The responder ends with its connection (a dead socket
			// would have it spin) or with the run.
			rctx, rcancel := context.WithCancel(ctx)
			go func() {
				defer rcancel()
				select {
				case <-sc.Dead():
				case <-rctx.Done():
				}
			}()
			r := &responder{c: sc, mac: net.HardwareAddr{0x52, 0x54, 0, 0, 1, 3}, onEcho: func(p []byte) {
				if len(p) > 8 {
					reqMu.Lock()
					requests[len(p)] = p[len(p)-1]
					reqMu.Unlock()
				}
			}}
			go r.run(t, rctx)
		}
	}()
	insp := &inspector{}
	il, err := net.Listen("unix", filepath.Join(dir, "ips.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer il.Close()
	go insp.serve(il)

	args := vioArgs(t, initrd, "--cpus", "1", "--serial", "tty", "--stats",
		"--net", "tap="+ipTap+",mac="+ipPcapMAC+",pcap="+capture,
		"--net", "socket="+filepath.Join(dir, "peer.sock")+",mac="+ipIPSMAC+",ids="+filepath.Join(dir, "ips.sock")+",ids_mode=ips")
	console, stderr, err, hazard := hazardRun(t, ctx, args, func(string) {})
	if hazard != "" {
		return hazard
	}
	if err != nil {
		t.Fatalf("vio: %v\nstderr:\n%s\nserial:\n%s", err, stderr.String(), console.String())
	}
	r := readReport(t, console.Bytes(), "NICS ")
	r.expect(t, "tcp-send", "tcp-recv", "ips-reach")
	expectSum(t, "guest → L1 through the mirrored NIC", sink, r.value("TXSUM"))
	if got := r.value("RXSUM"); got != sent {
		t.Errorf("L1 → guest through the mirrored NIC: guest got %q, L1 sent %q", got, sent)
	}
	nics := vioNICs(t, stderr.Bytes())

	// The mirror: tcpdump reads the capture, and it holds every frame.
	var mirrored, inspected *nicStats
	for name, n := range nics {
		t.Logf("%s: device %v, back-end %s", name, n.Device, mustJSON(n.Backend))
		if n.Backend.Pcap != nil {
			mirrored = &n
		}
		if n.Backend.IDS != nil {
			inspected = &n
		}
	}
	if mirrored == nil || inspected == nil {
		t.Fatalf("vio's --stats lack the mirror's or the IPS hook's counters:\n%s", stderr.String())
	}
	checkCapture(t, capture, *mirrored, r.value("TXSUM"), sent)

	// The IPS: the guest got exactly the unmarked replies, the responder
	// exactly the requests not marked for the way out.
	var wantGot, gotGot, wantReq, gotReq []int
	for k := 1; k <= ipPings; k++ {
		if ipMark(k) == ipPlainFill {
			wantGot = append(wantGot, k)
		}
		if ipMark(k) != ipMarkOut {
			wantReq = append(wantReq, k)
		}
	}
	for _, v := range r.values["IPSGOT"] {
		k, _ := strconv.Atoi(v)
		gotGot = append(gotGot, k)
	}
	reqMu.Lock()
	for size, fill := range requests {
		if k := size - ipSizeBase; k >= 1 && k <= ipPings {
			gotReq = append(gotReq, k)
			if fill != ipMark(k) {
				t.Errorf("echo request %d reached the responder filled with %#x, want %#x", k, fill, ipMark(k))
			}
		}
	}
	reqMu.Unlock()
	slices.Sort(gotGot)
	slices.Sort(gotReq)
	t.Logf("IPS: the guest got replies to %v; the responder got requests %v", gotGot, gotReq)
	if !strings.Contains(console.String(), "IPS-DONE") {
		t.Errorf("the guest never finished its pings through the IPS")
	}
	if !slices.Equal(gotGot, wantGot) {
		t.Errorf("through the IPS the guest got replies to pings %v, want exactly the unmarked %v", gotGot, wantGot)
	}
	if !slices.Equal(gotReq, wantReq) {
		t.Errorf("through the IPS the responder got echo requests %v, want exactly those not marked for the way out %v", gotReq, wantReq)
	}
	insp.mu.Lock()
	defer insp.mu.Unlock()
	st := inspected.Backend.IDS
	t.Logf("inspector: %d messages, %d passed, %d requests and %d replies dropped, %d without a verdict wanted, %d protocol errors; vio's hook: %+v",
		insp.messages, insp.passed, insp.droppedOut, insp.droppedIn, insp.verdictless, insp.protocolErrors, *st)
	marked := 0
	for k := 1; k <= ipPings; k++ {
		if ipMark(k) != ipPlainFill {
			marked++
		}
	}
	if insp.droppedOut+insp.droppedIn != marked || insp.droppedOut == 0 || insp.droppedIn == 0 {
		t.Errorf("the inspector dropped %d requests and %d replies, want the %d marked pings' split between both", insp.droppedOut, insp.droppedIn, marked)
	}
	if insp.verdictless != 0 || insp.protocolErrors != 0 {
		t.Errorf("in IPS mode vio sent %d messages wanting no verdict and %d malformed ones", insp.verdictless, insp.protocolErrors)
	}
	if st.Dropped != uint64(insp.droppedOut+insp.droppedIn) || st.Passed != uint64(insp.passed) || st.Inspected != uint64(insp.messages) {
		t.Errorf("vio's IPS counters (inspected %d, passed %d, dropped %d) disagree with the inspector's verdicts (%d messages, %d passed, %d dropped)",
			st.Inspected, st.Passed, st.Dropped, insp.messages, insp.passed, insp.droppedOut+insp.droppedIn)
	}
	if st.Timeouts != 0 || st.Overflow != 0 || st.Down != 0 {
		t.Errorf("vio's IPS hook dropped frames the inspector never judged: %d timeouts, %d overflows, %d while it was down", st.Timeouts, st.Overflow, st.Down)
	}
	return ""
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// checkCapture checks the mirror's file: tcpdump reads it, it holds as
// many frames as the NIC moved both ways, and both hashed transfers
// reassembled from it alone hash as their ends said.
func checkCapture(t *testing.T, capture string, nic nicStats, guestSent, l1Sent string) {
	t.Helper()
	out, err := exec.Command("tcpdump", "-nn", "-q", "-r", capture).CombinedOutput()
	if err != nil {
		t.Fatalf("tcpdump -r %s: %v\n%s", capture, err, out)
	}
	tcpdumpFrames := 0
	for _, l := range strings.Split(string(out), "\n") {
		if l != "" && !strings.HasPrefix(l, "reading from file") {
			tcpdumpFrames++
		}
	}
	f, err := os.Open(capture)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	pr, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatalf("the capture is not a pcap file: %v", err)
	}
	var frames [][]byte
	for {
		data, ci, err := pr.ReadPacketData()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("reading the capture after %d frames: %v", len(frames), err)
		}
		if ci.CaptureLength != ci.Length {
			t.Errorf("capture frame %d was cut: %d of %d bytes", len(frames)+1, ci.CaptureLength, ci.Length)
		}
		frames = append(frames, data)
	}
	moved := nic.Device["TxFrames"] + nic.Device["RxFrames"]
	t.Logf("the capture holds %d frames (tcpdump read %d); the NIC moved %.0f (%.0f sent, %.0f received); the mirror: %+v",
		len(frames), tcpdumpFrames, moved, nic.Device["TxFrames"], nic.Device["RxFrames"], *nic.Backend.Pcap)
	if tcpdumpFrames != len(frames) {
		t.Errorf("tcpdump read %d frames from the capture, gopacket %d", tcpdumpFrames, len(frames))
	}
	if float64(len(frames)) != moved {
		t.Errorf("the capture holds %d frames, but the NIC moved %.0f", len(frames), moved)
	}
	if nic.Backend.Pcap.Dropped != 0 || nic.Backend.Pcap.Err != "" {
		t.Errorf("the mirror lost frames from the capture: %+v", *nic.Backend.Pcap)
	}
	guestIP, l1IP := net.ParseIP(ipGuestIP).To4(), net.ParseIP(ipHostIP).To4()
	for _, c := range []struct {
		what      string
		from      net.IP
		sport     uint16 // 0: any
		dport     uint16 // 0: any
		want      string // "sha256 n" or the bare sha256
		wantBytes int
	}{
		{"guest → L1", guestIP, 0, ipSinkTCP, guestSent, ipBytes},
		{"L1 → guest", l1IP, ipSrcTCP, 0, l1Sent, ipBytes},
	} {
		data, segs, missing := tcpPayload(frames, c.from, c.sport, c.dport, c.wantBytes)
		sum := sha256.Sum256(data)
		got := hex.EncodeToString(sum[:])
		t.Logf("%s: %d segments in the capture, reassembled SHA-256 %s", c.what, segs, got)
		if missing != "" {
			t.Errorf("%s: the capture lacks %s of the %d bytes sent", c.what, missing, c.wantBytes)
			continue
		}
		if want, _, _ := strings.Cut(c.want, " "); got != want {
			t.Errorf("%s: the payload reassembled from the capture hashes to %s, the transfer's ends to %s", c.what, got, want)
		}
	}
}

// tcpPayload reassembles, by sequence number from the sender's SYN, the
// first n bytes a TCP sender at address from (port sport, or any) sent to
// port dport (or any) in the captured frames, and says which bytes no
// frame carried ("" when none is missing).
func tcpPayload(frames [][]byte, from net.IP, sport, dport uint16, n int) (data []byte, segs int, missing string) {
	type seg struct {
		seq  uint32
		syn  bool
		data []byte
	}
	var ss []seg
	for _, f := range frames {
		pkt := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.NoCopy)
		ip, _ := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		tcp, _ := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if ip == nil || tcp == nil || !ip.SrcIP.Equal(from) ||
			(sport != 0 && uint16(tcp.SrcPort) != sport) || (dport != 0 && uint16(tcp.DstPort) != dport) {
			continue
		}
		ss = append(ss, seg{tcp.Seq, tcp.SYN, tcp.Payload})
	}
	var isn uint32
	found := false
	for _, s := range ss {
		if s.syn {
			isn, found = s.seq+1, true
		}
	}
	if !found {
		return nil, 0, "everything (no SYN of the connection)"
	}
	data = make([]byte, n)
	have := make([]bool, n)
	for _, s := range ss {
		if len(s.data) == 0 {
			continue
		}
		off := int64(int32(s.seq - isn))
		if off < 0 || off >= int64(n) {
			continue
		}
		segs++
		k := copy(data[off:], s.data)
		for i := off; i < off+int64(k); i++ {
			have[i] = true
		}
	}
	for i := 0; i < n; i++ {
		if !have[i] {
			j := i
			for j < n && !have[j] {
				j++
			}
			holes := 0
			for _, h := range have {
				if !h {
					holes++
				}
			}
			return data, segs, fmt.Sprintf("%d bytes (the first hole: bytes %d to %d)", holes, i, j-1)
		}
	}
	return data, segs, ""
}

// TestBondLab's network: the guest's one NIC bonds two sockets, one on
// each of two `vio switch` processes; each switch's other port is the
// test's uplink to a TAP in L1, where iperf3 and the hashed transfers'
// other ends live.
const (
	bdTap      = "viobond0"
	bdHostIP   = "169.254.104.1"
	bdGuestIP  = "169.254.104.2"
	bdGuestMAC = "52:54:00:00:04:01"
	bdSinkTCP  = 5061 // guest → L1, hashed, across the second failover
	bdSrcTCP   = 5062 // L1 → guest, hashed, across the first
	bdIperf    = 5263
	bdBytes    = 16 << 20
)

// bondGuest runs iperf3 to L1 and a 16 MiB download together and, once
// both have moved 256 KiB, asks L1 to kill the active switch (BOND-KILL 1,
// with how much of the download it has then: the kill must land mid-
// transfer). When both are done it asks for switch 1 back (BOND-RESTART
// 1), uploads 16 MiB and asks for the other switch's kill (BOND-KILL 2)
// once 256 KiB has gone.
var bondGuest = `
check() { if [ "$2" = 0 ]; then echo "CHECK $1 ok $3"; else echo "CHECK $1 fail $3"; fi; }
H=` + bdHostIP + `
ip link set lo up
ip link set eth0 up && ip addr add ` + bdGuestIP + `/24 dev eth0
i=0; until ping -c 1 -W 1 $H >/dev/null 2>&1; do i=$((i+1)); [ $i -ge 60 ] && break; done
ping -c 1 -W 5 $H >/dev/null 2>&1; check reach $?
stat() { cat /sys/class/net/eth0/statistics/$1; }
# until_moved RX TX: wait (up to 60 s) until eth0 has received RX and sent
# TX more bytes than now.
until_moved() {
	r0=$(stat rx_bytes); t0=$(stat tx_bytes); i=0
	while [ $(( $(stat rx_bytes) - r0 )) -lt $1 ] || [ $(( $(stat tx_bytes) - t0 )) -lt $2 ]; do
		i=$((i+1)); [ $i -ge 600 ] && return 1; sleep 0.1
	done
}
# waitrc FILE: wait (up to 240 s) for a background job's exit status.
waitrc() { i=0; while [ ! -s $1 ] && [ $i -lt 2400 ]; do sleep 0.1; i=$((i+1)); done; cat $1 2>/dev/null || echo 255; }
# iperf3 first (it takes a while to start); the download, much faster,
# once iperf3 is under way; the kill as soon as both move (the lab's speed
# varies tenfold with its load).
(timeout 200 iperf3 -c $H -p ` + fmt.Sprint(bdIperf) + ` -t 20 -f m > /tmp/ip 2>&1; echo $? > /tmp/ip.rc) &
until_moved 0 262144; check iperf-moving $?
(timeout 200 nc $H ` + fmt.Sprint(bdSrcTCP) + ` > /tmp/rx < /dev/null; echo $? > /tmp/rx.rc) &
until_moved 262144 0; check download-moving $?
echo "BOND-KILL 1 dl=$(wc -c < /tmp/rx) iperf=$([ -s /tmp/ip.rc ] && echo ended || echo running)"
check iperf $(waitrc /tmp/ip.rc) "$(awk '/receiver/ {print $7, $8}' /tmp/ip)"
echo "IPERF $(grep -E 'sender|receiver' /tmp/ip | tr -s ' ' | tr '\n' ';')"
check download $(waitrc /tmp/rx.rc)
echo "RXSUM $(sha256sum /tmp/rx | cut -d' ' -f1) $(wc -c < /tmp/rx)"
# Only now is switch 1 restarted: until here the bond had switch 2 alone.
echo BOND-RESTART 1
dd if=/dev/urandom of=/tmp/tx bs=1M count=` + fmt.Sprint(bdBytes>>20) + ` 2>/dev/null
echo "TXSUM $(sha256sum /tmp/tx | cut -d' ' -f1)"
(timeout 200 nc $H ` + fmt.Sprint(bdSinkTCP) + ` < /tmp/tx; echo $? > /tmp/tx.rc) &
until_moved 0 262144; check upload-moving $?
echo "BOND-KILL 2 ul=$([ -s /tmp/tx.rc ] && echo ended || echo running)"
check upload $(waitrc /tmp/tx.rc)
echo VIO-GUEST-DONE
poweroff -f
`

// waitPorts waits (up to 30 s) until the switch whose control socket is
// ctl has a connected port of each name. The switch announces no
// connections, so its counters are read every 50 ms.
func waitPorts(ctx context.Context, ctl string, names ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		why := portsDown(ctl, names)
		if why == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s (%w)", why, ctx.Err())
		case <-tick.C:
		}
	}
}

// portsDown says which of the named ports the switch at ctl lacks or
// has unconnected, or why it cannot tell; "" when all are connected.
func portsDown(ctl string, names []string) string {
	c, err := net.Dial("unix", ctl)
	if err != nil {
		return err.Error()
	}
	defer c.Close()
	var st vswitch.Stats
	if err := json.NewDecoder(c).Decode(&st); err != nil {
		return "the switch's counters: " + err.Error()
	}
	up := map[string]bool{}
	for _, p := range st.Ports {
		up[p.Name] = up[p.Name] || p.Connected
	}
	if missing := slices.DeleteFunc(slices.Clone(names), func(n string) bool { return up[n] }); len(missing) > 0 {
		return fmt.Sprintf("ports %v not connected", missing)
	}
	return ""
}

// uplink carries frames between a TAP in L1 and one port on each of
// several switches: whatever L1 sends goes to every switch (the guest's
// bond takes it from its active member only), whatever a switch sends
// goes to L1. Its sockets redial a restarted switch.
type uplink struct {
	tap     *tap.Tap
	ports   []*socket.Conn
	toL1    []atomic.Int64 // frames from each switch
	lost    atomic.Int64   // frames for a switch that was down
	wg      sync.WaitGroup
	stopped atomic.Bool
}

func startUplink(t *testing.T, tapName string, paths ...string) *uplink {
	t.Helper()
	tp, err := tap.Open(tapName)
	if err != nil {
		t.Fatal(err)
	}
	u := &uplink{tap: tp, toL1: make([]atomic.Int64, len(paths))}
	for _, p := range paths {
		c, err := socket.Dial(p, socket.Options{Reconnect: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		u.ports = append(u.ports, c)
	}
	u.wg.Add(1 + len(u.ports))
	go func() {
		defer u.wg.Done()
		bufs, sizes := [][]byte{make([]byte, netdev.MaxPacketLen)}, []int{0}
		for {
			if _, err := u.tap.ReadFrames(bufs, sizes); err != nil {
				if u.stopped.Load() {
					return
				}
				continue
			}
			for _, c := range u.ports {
				if _, err := c.WriteFrames([][][]byte{{bufs[0][:sizes[0]]}}); err != nil {
					u.lost.Add(1)
				}
			}
		}
	}()
	for i, c := range u.ports {
		go func() {
			defer u.wg.Done()
			bufs, sizes := [][]byte{make([]byte, netdev.MaxPacketLen)}, []int{0}
			for {
				if _, err := c.ReadFrames(bufs, sizes); err != nil {
					if u.stopped.Load() || errors.Is(err, netdev.ErrClosed) {
						return
					}
					continue
				}
				u.toL1[i].Add(1)
				u.tap.WriteFrames([][][]byte{{bufs[0][:sizes[0]]}})
			}
		}()
	}
	t.Cleanup(u.close)
	return u
}

func (u *uplink) close() {
	if u.stopped.Swap(true) {
		return
	}
	for _, c := range u.ports {
		c.Close()
	}
	u.tap.Close()
	u.wg.Wait()
}

// TestBondLab: a stock guest's NIC bonds (active-backup) two sockets, one
// on each of two `vio switch` processes, both leading to L1. While iperf3
// and a 16 MiB download (hashed on both ends) run through the first
// switch, the test SIGKILLs it: both must complete, with the right hash,
// iperf3 with status 0 and a figure, over the second switch. Then the
// killed switch is restarted (its sockets redial); during a 16 MiB upload,
// the second switch is killed and the bond must go back to the first.
// vio's bond counters and its log must show both failovers.
func TestBondLab(t *testing.T) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Fatal("iperf3 is not installed: run scripts/setup-host")
	}
	initrd, _ := labtest.Guest{
		Script:   bondGuest,
		Modules:  []string{"virtio_pci", "virtio_net"},
		Programs: []string{"/usr/bin/iperf3"},
		Inline:   true, // a tools disk costs L1 a minute of mkfs; iperf3 is small
	}.Build(t)
	withLabRetry(t, func(t *testing.T) string { return bondRun(t, initrd) })
}

// bondRun is one boot of TestBondLab; it returns what voided the run when
// a lab hazard did, else "".
func bondRun(t *testing.T, initrd string) (hazard string) {
	dir := t.TempDir()
	sock := func(n string) string { return filepath.Join(dir, n+".sock") }
	var sw [2]*vswitchProc
	for i := range sw {
		n := fmt.Sprint("sw", i+1)
		sw[i] = startVSwitch(t, "--control", sock(n+"-ctl"),
			"--port", "name=g,path="+sock(n+"-g"),
			"--port", "name=up,path="+sock(n+"-up")+",anti_spoof=off")
	}
	up := startUplink(t, bdTap, sock("sw1-up"), sock("sw2-up"))
	run(t, "ip", "addr", "add", bdHostIP+"/24", "dev", bdTap)
	run(t, "ip", "link", "set", bdTap, "up")
	sink := hashSink(t, net.JoinHostPort(bdHostIP, strconv.Itoa(bdSinkTCP)), bdBytes)
	sent := randomSource(t, net.JoinHostPort(bdHostIP, strconv.Itoa(bdSrcTCP)), bdBytes)
	iperf := exec.Command("iperf3", "-s", "-1", "-B", bdHostIP, "-p", strconv.Itoa(bdIperf))
	if err := iperf.Start(); err != nil {
		t.Fatalf("L1's iperf3 server: %v", err)
	}
	defer func() { iperf.Process.Kill(); iperf.Wait() }()

	args := vioArgs(t, initrd, "--cpus", "1", "--serial", "tty", "--stats",
		"--net", "socket="+sock("sw1-g")+"+"+sock("sw2-g")+",bond=active-backup,mac="+bdGuestMAC)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	began := time.Now()
	var kills []string
	restarted := false
	console, stderr, err, hazard := hazardRun(t, ctx, args, func(line string) {
		if strings.Contains(line, "BOND-RESTART 1") && len(kills) == 1 && !restarted {
			// The guest's socket and the uplink redial it, so the bond
			// has it to fall back on at the second kill. Not before: a
			// switch back at once would carry the first stream on even
			// without a failover.
			sw[0].start(t)
			restarted = true
			// Both redials done before the guest's next line (its
			// BOND-KILL 2) is read: the second kill then meets a
			// healthy member to fail over to, not a gap.
			if err := waitPorts(ctx, sock("sw1-ctl"), "g", "up"); err != nil {
				t.Errorf("switch 1 restarted, but its ports did not come back: %v", err)
			}
			t.Logf("switch 1 restarted %v into the run, and the guest and the uplink are back on it", time.Since(began).Round(time.Second))
		}
		_, what, ok := strings.Cut(line, "BOND-KILL ")
		if !ok {
			return
		}
		switch {
		case strings.HasPrefix(what, "1") && len(kills) == 0:
			sw[0].kill()
			kills = append(kills, what)
			t.Logf("switch 1 killed %v into the run (%s)", time.Since(began).Round(time.Second), what)
		case strings.HasPrefix(what, "2") && len(kills) == 1:
			sw[1].kill()
			kills = append(kills, what)
			t.Logf("switch 2 killed %v into the run (%s)", time.Since(began).Round(time.Second), what)
		}
	})
	if hazard != "" {
		return hazard
	}
	if err != nil {
		t.Fatalf("vio: %v\nstderr:\n%s\nserial:\n%s", err, stderr.String(), console.String())
	}
	r := readReport(t, console.Bytes(), "IPERF ", "BOND-KILL")
	r.expect(t, "reach", "iperf-moving", "download-moving", "iperf", "download", "upload-moving", "upload")
	if len(kills) != 2 || !restarted {
		t.Fatalf("the guest asked for %d switch kills (want 2) and switch 1 restarted: %v (want true); serial:\n%s", len(kills), restarted, console.String())
	}
	// The kills must have landed mid-transfer, or nothing failed over
	// under load.
	if !strings.Contains(kills[0], "iperf=running") || strings.Contains(kills[0], fmt.Sprintf("dl=%d", bdBytes)) {
		t.Errorf("switch 1 was killed after iperf3 or the download had ended (%s): the failover proves nothing", kills[0])
	}
	if !strings.Contains(kills[1], "ul=running") {
		t.Errorf("switch 2 was killed after the upload had ended (%s): the failover proves nothing", kills[1])
	}
	if got := r.value("RXSUM"); got != sent {
		t.Errorf("L1 → guest across the first failover: guest got %q, L1 sent %q", got, sent)
	}
	expectSum(t, "guest → L1 across the second failover", sink, r.value("TXSUM"))
	// iperf3's receiver figure, "N Mbits/sec": more than a trickle.
	// iperf3's receiver figures: the stream went on after the kill
	// (which came once 256 KiB had gone) for at least 1 MByte more.
	if mb, mbps := iperfReceived(r.value("IPERF")); mb < 1.25 || mbps <= 0 {
		t.Errorf("iperf3 across the failover: its receiver got %.2f MBytes at %.2f Mbits/sec, want at least 1.25 MBytes", mb, mbps)
	}
	var bs *bond.Stats
	for name, n := range vioNICs(t, stderr.Bytes()) {
		t.Logf("%s: device %v, back-end %s", name, n.Device, mustJSON(n.Backend))
		if n.Backend.Bond != nil {
			bs = n.Backend.Bond
		}
	}
	t.Logf("uplink: %d and %d frames to L1 from switches 1 and 2, %d frames for a switch that was down", up.toL1[0].Load(), up.toL1[1].Load(), up.lost.Load())
	if bs == nil {
		t.Fatalf("vio's --stats lack the bond's counters:\n%s", stderr.String())
	}
	// vio's log: a warning for each failover, naming the sockets.
	var logged []string
	for _, l := range strings.Split(stderr.String(), "\n") {
		if strings.Contains(l, "NIC bond failed over") {
			logged = append(logged, l)
			t.Logf("vio: %s", l)
		}
	}
	if len(logged) != 2 || !strings.Contains(logged[0], "from="+sock("sw1-g")) || !strings.Contains(logged[1], "from="+sock("sw2-g")) {
		t.Errorf("vio logged %d bond failovers, want 2: from switch 1's socket, then from switch 2's; stderr:\n%s", len(logged), stderr.String())
	}
	if bs.Failovers != 2 || bs.Active != 0 || len(bs.Members) != 2 || !bs.Members[0].Healthy || bs.Members[1].Healthy {
		t.Errorf("bond counters %+v: want 2 failovers, back on member 0 (healthy, its switch restarted), member 1 down", *bs)
	} else if bs.Members[0].TxFrames == 0 || bs.Members[1].TxFrames == 0 || bs.Members[0].RxFrames == 0 || bs.Members[1].RxFrames == 0 {
		t.Errorf("bond counters %+v: each member should have carried traffic both ways", *bs)
	}
	return ""
}

// iperfReceived is the receiver's total and bitrate from the guest's
// IPERF line (iperf3 -f m: "... N MBytes R Mbits/sec receiver"); 0 for
// what it lacks.
func iperfReceived(line string) (mbytes, mbps float64) {
	for _, part := range strings.Split(line, ";") {
		f := strings.Fields(part)
		if len(f) < 2 || f[len(f)-1] != "receiver" {
			continue
		}
		for i := 1; i < len(f); i++ {
			switch f[i] {
			case "MBytes":
				mbytes, _ = strconv.ParseFloat(f[i-1], 64)
			case "KBytes":
				k, _ := strconv.ParseFloat(f[i-1], 64)
				mbytes = k / 1024
			case "Mbits/sec":
				mbps, _ = strconv.ParseFloat(f[i-1], 64)
			}
		}
	}
	return mbytes, mbps
}
