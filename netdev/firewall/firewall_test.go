package firewall_test

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/firewall"
	"github.com/viovmm/vio/netdev/nettest"
)

const wait = 10 * time.Second // bounds a hang; never a synchronization

var (
	guestMAC = net.HardwareAddr{0x52, 0x54, 0, 0, 0, 1}
	peerMAC  = net.HardwareAddr{0x52, 0x54, 0, 0, 0, 2}
	guestIP  = net.IPv4(10, 0, 0, 1)
	peerIP   = net.IPv4(10, 0, 0, 2)
)

const rules = `
# only ICMP and SSH come in, plus replies to what the guest started
default in drop
default out allow
allow any proto arp
allow in state established
allow in proto icmp
allow in proto tcp dport 22     # ssh
drop out proto udp dport 53 dst 10.0.0.2
`

func build(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// toGuest is a frame from the peer to the guest; fromGuest the reverse.
func ipFrame(t testing.TB, toGuest bool, l4 ...gopacket.SerializableLayer) []byte {
	src, dst, smac, dmac := peerIP, guestIP, peerMAC, guestMAC
	if !toGuest {
		src, dst, smac, dmac = guestIP, peerIP, guestMAC, peerMAC
	}
	ip := &layers.IPv4{Version: 4, TTL: 64, SrcIP: src, DstIP: dst}
	switch l := l4[0].(type) {
	case *layers.TCP:
		ip.Protocol = layers.IPProtocolTCP
		l.SetNetworkLayerForChecksum(ip)
	case *layers.UDP:
		ip.Protocol = layers.IPProtocolUDP
		l.SetNetworkLayerForChecksum(ip)
	case *layers.ICMPv4:
		ip.Protocol = layers.IPProtocolICMPv4
	}
	return build(t, append([]gopacket.SerializableLayer{&layers.Ethernet{SrcMAC: smac, DstMAC: dmac, EthernetType: layers.EthernetTypeIPv4}, ip}, l4...)...)
}

func tcp(sport, dport int, syn, ack, rst bool) *layers.TCP {
	return &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), SYN: syn, ACK: ack, RST: rst, Window: 100}
}

type rig struct {
	t     *testing.T
	fw    *firewall.Firewall
	net   *nettest.Endpoint
	guest []byte
}

func newRig(t *testing.T) *rig {
	rs, err := firewall.Parse(strings.NewReader(rules))
	if err != nil {
		t.Fatal(err)
	}
	a, b := nettest.Pair(1024)
	fw := firewall.New(a, rs)
	t.Cleanup(func() { fw.Close(); b.Close() })
	return &rig{t: t, fw: fw, net: b}
}

// out sends a frame from the guest and reports whether the network got
// it; a marker frame (always allowed out) follows, so "not received"
// needs no timeout.
func (r *rig) out(f []byte) bool {
	r.t.Helper()
	h := make([]byte, netdev.HeaderSize)
	marker := ipFrame(r.t, false, tcp(1, 9999, false, true, false))
	if n, err := r.fw.WriteFrames([][][]byte{{h, f}, {h, marker}}); n != 2 || err != nil {
		r.t.Fatalf("WriteFrames: %d %v", n, err)
	}
	_, got, err := r.net.Recv(wait)
	if err != nil {
		r.t.Fatal(err)
	}
	if string(got) == string(marker) {
		return false
	}
	if _, m, err := r.net.Recv(wait); err != nil || string(m) != string(marker) {
		r.t.Fatalf("marker: %v", err)
	}
	return string(got) == string(f)
}

// in sends a frame from the network and reports whether the guest got
// it, with a marker (ICMP, allowed in) after it.
func (r *rig) in(f []byte) bool {
	r.t.Helper()
	marker := ipFrame(r.t, true, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0), Id: 7}, gopacket.Payload("marker"))
	if err := r.net.Send(netdev.Header{}, f); err != nil {
		r.t.Fatal(err)
	}
	if err := r.net.Send(netdev.Header{}, marker); err != nil {
		r.t.Fatal(err)
	}
	bufs := [][]byte{make([]byte, netdev.MaxPacketLen), make([]byte, netdev.MaxPacketLen)}
	sizes := []int{0, 0}
	var got [][]byte
	r.fw.SetReadDeadline(time.Now().Add(wait))
	for len(got) == 0 || string(got[len(got)-1]) != string(marker) {
		n, err := r.fw.ReadFrames(bufs, sizes)
		if err != nil {
			r.t.Fatal(err)
		}
		for i := range n {
			got = append(got, append([]byte(nil), bufs[i][netdev.HeaderSize:sizes[i]]...))
		}
	}
	return len(got) == 2 && string(got[0]) == string(f)
}

func TestOnlyICMPAndSSHComeIn(t *testing.T) {
	r := newRig(t)
	if !r.in(ipFrame(t, true, tcp(40000, 22, true, false, false))) {
		t.Error("SYN to port 22 dropped")
	}
	for _, port := range []int{23, 80, 443, 2222} {
		if r.in(ipFrame(t, true, tcp(40000, port, true, false, false))) {
			t.Errorf("SYN to port %d passed", port)
		}
	}
	if r.in(ipFrame(t, true, &layers.UDP{SrcPort: 5000, DstPort: 22}, gopacket.Payload("x"))) {
		t.Error("UDP to port 22 passed")
	}
	// Port 22's answer goes out (default out allow) and the flow is
	// tracked: the peer's next segment is established.
	if !r.out(ipFrame(t, false, tcp(22, 40000, true, true, false))) {
		t.Error("SYN-ACK from 22 dropped")
	}
	// The guest opens a connection out; the reply comes in as
	// established although port 50000 is not allowed in.
	if !r.out(ipFrame(t, false, tcp(50000, 443, true, false, false))) {
		t.Fatal("SYN out dropped")
	}
	if !r.in(ipFrame(t, true, tcp(443, 50000, true, true, false))) {
		t.Error("reply to the guest's connection dropped")
	}
	// A reset ends the flow; the next segment is new again, and dropped.
	if !r.in(ipFrame(t, true, tcp(443, 50000, false, true, true))) {
		t.Error("RST of an established flow dropped")
	}
	if r.in(ipFrame(t, true, tcp(443, 50000, false, true, false))) {
		t.Error("segment after the reset passed")
	}
	// A rule out: DNS to 10.0.0.2 is dropped.
	if r.out(ipFrame(t, false, &layers.UDP{SrcPort: 3333, DstPort: 53}, gopacket.Payload("q"))) {
		t.Error("DNS to 10.0.0.2 passed")
	}
	// A malformed frame never passes, even where the default allows.
	bad := ipFrame(t, false, tcp(1, 2, false, false, false))[:30]
	if r.out(bad) {
		t.Error("a truncated IPv4 frame passed")
	}

	st := r.fw.Stats()
	byLine := map[int]uint64{}
	for _, rs := range st.Rules {
		byLine[rs.Line] = rs.Packets
	}
	// The nine in() calls' ICMP markers are one flow: line 7 (ICMP)
	// lets the first in, line 6 (established) the other eight, and the
	// two TCP replies; line 8 (ssh) one SYN; line 9 one DNS query.
	if byLine[7] != 1 || byLine[6] != 10 || byLine[8] != 1 || byLine[9] != 1 {
		t.Errorf("rule counters %v", byLine)
	}
	if st.DefaultIn.Packets != 6 || st.Malformed != 1 {
		t.Errorf("default in %d, malformed %d; want 6 and 1", st.DefaultIn.Packets, st.Malformed)
	}
}

func TestParseErrors(t *testing.T) {
	for text, want := range map[string]string{
		"allow in proto tcp dport 99999": "line 1: port",
		"\n\nallow proto udp sport 5-1":  "line 3: port",
		"allow dport 22":                 "ports need proto",
		"allow proto sctp":               "proto",
		"allow src 10.0.0.1 dst fd00::1": "different IP versions",
		"permit in":                      "starts with allow",
		"default in maybe":               "default in|out",
		"allow in state half-open":       "state",
		"allow in smac zz":               "MAC",
		"allow in proto tcp proto udp":   "twice",
		"allow in colour red":            "unknown match",
		"allow in proto":                 "needs a value",
	} {
		if _, err := firewall.Parse(strings.NewReader(text)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", text, err, want)
		}
	}
	rs, err := firewall.Parse(strings.NewReader("default any drop\nallow out proto ipv6\nallow in src 10.0.0.0/8 smac 52:54:00:00:00:02"))
	if err != nil || rs.DefaultIn != firewall.Drop || rs.DefaultOut != firewall.Drop || len(rs.Rules) != 2 || rs.Rules[1].Dir != firewall.In {
		t.Fatalf("%+v %v", rs, err)
	}
}

func TestICMPType(t *testing.T) {
	rs, err := firewall.Parse(strings.NewReader("default in drop\nallow in proto icmp icmp-type 0"))
	if err != nil {
		t.Fatal(err)
	}
	a, _ := nettest.Pair(1)
	fw := firewall.New(a, rs)
	if !fw.Decide(firewall.In, ipFrame(t, true, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(0, 0)})) {
		t.Error("echo reply dropped")
	}
	if fw.Decide(firewall.In, ipFrame(t, true, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0)})) {
		t.Error("echo request passed")
	}
	if _, err := firewall.Parse(strings.NewReader("allow proto tcp icmp-type 3")); err == nil {
		t.Error("icmp-type with tcp accepted")
	}
}

func TestMACAndPrefixRules(t *testing.T) {
	rs, err := firewall.Parse(strings.NewReader("default in drop\nallow in smac 52:54:00:00:00:02 src 10.0.0.0/30"))
	if err != nil {
		t.Fatal(err)
	}
	a, _ := nettest.Pair(1)
	fw := firewall.New(a, rs)
	defer fw.Close()
	f := ipFrame(t, true, tcp(1, 2, true, false, false))
	if !fw.Decide(firewall.In, f) {
		t.Error("frame from the allowed MAC and prefix dropped")
	}
	f[11] = 9 // another source MAC
	if fw.Decide(firewall.In, f) {
		t.Error("frame from another MAC passed")
	}
}
