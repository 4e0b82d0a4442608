package usernet_test

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/usernet"
)

// The DHCP tests play a client with raw frames built and parsed with
// gVisor's header package, an implementation independent of the server's.

// dhcpMsg is a DHCP message to build or a reply parsed.
type dhcpMsg struct {
	op             byte
	xid            uint32
	flags          uint16
	ciaddr, yiaddr netip.Addr
	chaddr         net.HardwareAddr
	opts           map[byte][]byte
}

// dhcpFrame builds a client's DHCP message in an Ethernet frame from
// 0.0.0.0:68 (or ciaddr) to dst:67.
func dhcpFrame(m dhcpMsg, dst netip.Addr) []byte {
	body := make([]byte, 240)
	body[0], body[1], body[2] = 1, 1, 6
	binary.BigEndian.PutUint32(body[4:], m.xid)
	binary.BigEndian.PutUint16(body[10:], m.flags)
	src := netip.IPv4Unspecified()
	if m.ciaddr.IsValid() {
		src = m.ciaddr
		c := m.ciaddr.As4()
		copy(body[12:], c[:])
	}
	copy(body[28:], m.chaddr)
	copy(body[236:], []byte{99, 130, 83, 99})
	for _, code := range []byte{53, 50, 54, 61} { // a stable order
		if v, ok := m.opts[code]; ok {
			body = append(body, code, byte(len(v)))
			body = append(body, v...)
		}
	}
	body = append(body, 255)
	return ipUDPFrame(m.chaddr, net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, src, dst, 68, 67, body)
}

func ipUDPFrame(srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	f := make([]byte, header.EthernetMinimumSize+header.IPv4MinimumSize+header.UDPMinimumSize+len(payload))
	header.Ethernet(f).Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(srcMAC), DstAddr: tcpip.LinkAddress(dstMAC), Type: header.IPv4ProtocolNumber})
	ip := header.IPv4(f[header.EthernetMinimumSize:])
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(ip)), TTL: 64, Protocol: uint8(header.UDPProtocolNumber),
		SrcAddr: tcpip.AddrFrom4(src.As4()), DstAddr: tcpip.AddrFrom4(dst.As4())})
	ip.SetChecksum(^ip.CalculateChecksum())
	u := header.UDP(ip.Payload())
	u.Encode(&header.UDPFields{SrcPort: sport, DstPort: dport, Length: uint16(len(u))})
	copy(u.Payload(), payload)
	xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(u)))
	u.SetChecksum(^checksum.Checksum(u, xsum))
	return f
}

// parseReply checks a frame from the server is a well-formed IPv4/UDP
// datagram from 67 to 68 with valid checksums, and decodes its DHCP body.
func parseReply(t *testing.T, f []byte) (dhcpMsg, header.Ethernet, header.IPv4) {
	t.Helper()
	eth := header.Ethernet(f)
	if len(f) < header.EthernetMinimumSize || eth.Type() != header.IPv4ProtocolNumber {
		t.Fatalf("not IPv4: % x", f)
	}
	ip := header.IPv4(f[header.EthernetMinimumSize:])
	if !ip.IsValid(len(ip)) || !ip.IsChecksumValid() || ip.TransportProtocol() != header.UDPProtocolNumber {
		t.Fatalf("bad IPv4 header: % x", ip[:20])
	}
	u := header.UDP(ip.Payload())
	xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), u.Length())
	if u.SourcePort() != 67 || u.DestinationPort() != 68 || int(u.Length()) != len(u) || checksum.Checksum(u, xsum) != 0xffff {
		t.Fatalf("bad UDP: ports %d→%d length %d/%d", u.SourcePort(), u.DestinationPort(), u.Length(), len(u))
	}
	b := u.Payload()
	if len(b) < 240 || [4]byte(b[236:240]) != [4]byte{99, 130, 83, 99} {
		t.Fatalf("bad BOOTP body (%d bytes)", len(b))
	}
	m := dhcpMsg{op: b[0], xid: binary.BigEndian.Uint32(b[4:]), flags: binary.BigEndian.Uint16(b[10:]),
		ciaddr: netip.AddrFrom4([4]byte(b[12:16])), yiaddr: netip.AddrFrom4([4]byte(b[16:20])),
		chaddr: net.HardwareAddr(b[28:34]), opts: map[byte][]byte{}}
	for o := b[240:]; len(o) > 0 && o[0] != 255; {
		if o[0] == 0 {
			o = o[1:]
			continue
		}
		if len(o) < 2 || len(o) < 2+int(o[1]) {
			t.Fatalf("truncated option %d", o[0])
		}
		m.opts[o[0]] = o[2 : 2+o[1]]
		o = o[2+o[1]:]
	}
	return m, eth, ip
}

// send writes one frame from the guest.
func send(t *testing.T, n netdev.Backend, frame []byte) {
	t.Helper()
	if _, err := n.WriteFrames([][][]byte{{make([]byte, netdev.HeaderSize), frame}}); err != nil {
		t.Fatal(err)
	}
}

// recv reads one frame for the guest, or nil if none comes in a second.
func recv(t *testing.T, n netdev.Backend) []byte {
	t.Helper()
	n.SetReadDeadline(time.Now().Add(time.Second))
	defer n.SetReadDeadline(time.Time{})
	buf, sizes := make([]byte, netdev.MaxPacketLen), []int{0}
	if _, err := n.ReadFrames([][]byte{buf}, sizes); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil
		}
		t.Fatal(err)
	}
	return buf[netdev.HeaderSize:sizes[0]]
}

var (
	clientMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	bcast     = netip.MustParseAddr("255.255.255.255")
)

func ip4(s string) []byte { a := netip.MustParseAddr(s).As4(); return a[:] }

// TestDHCP: DISCOVER gets an OFFER of 10.0.2.15 with mask, router, DNS and
// lease; REQUEST gets the ACK; a REQUEST for another address gets a NAK;
// a REQUEST naming another server and a RELEASE get nothing; a renewal
// unicast to the server is ACKed to the client's address.
func TestDHCP(t *testing.T) {
	n := newNet(t, usernet.Config{})
	send(t, n, dhcpFrame(dhcpMsg{xid: 0x11223344, chaddr: clientMAC, opts: map[byte][]byte{53: {1}}}, bcast))
	f := recv(t, n)
	if f == nil {
		t.Fatal("no OFFER")
	}
	m, eth, ip := parseReply(t, f)
	if m.op != 2 || m.xid != 0x11223344 || m.yiaddr != guest || m.chaddr.String() != clientMAC.String() {
		t.Fatalf("OFFER %+v", m)
	}
	if eth.DestinationAddress() != tcpip.LinkAddress(clientMAC) || eth.SourceAddress() != tcpip.LinkAddress(n.GatewayMAC()) {
		t.Errorf("OFFER from %s to %s", eth.SourceAddress(), eth.DestinationAddress())
	}
	if ip.SourceAddress() != tcpip.AddrFrom4(gw.As4()) || ip.DestinationAddress() != tcpip.AddrFrom4(guest.As4()) {
		t.Errorf("OFFER from %s to %s", ip.SourceAddress(), ip.DestinationAddress())
	}
	want := map[byte]string{53: "\x02", 54: string(ip4("10.0.2.2")), 1: "\xff\xff\xff\x00", 3: string(ip4("10.0.2.2")),
		6: string(ip4("10.0.2.3")), 51: "\x00\x01\x51\x80", 28: string(ip4("10.0.2.255"))}
	for code, v := range want {
		if string(m.opts[code]) != v {
			t.Errorf("OFFER option %d = % x, want % x", code, m.opts[code], v)
		}
	}

	// REQUEST, asking for broadcast replies.
	send(t, n, dhcpFrame(dhcpMsg{xid: 2, flags: 0x8000, chaddr: clientMAC,
		opts: map[byte][]byte{53: {3}, 50: ip4("10.0.2.15"), 54: ip4("10.0.2.2")}}, bcast))
	m, eth, ip = parseReply(t, recv(t, n))
	if string(m.opts[53]) != "\x05" || m.yiaddr != guest || m.flags != 0x8000 {
		t.Fatalf("ACK %+v", m)
	}
	if eth.DestinationAddress() != header.EthernetBroadcastAddress || ip.DestinationAddress() != tcpip.AddrFrom4(bcast.As4()) {
		t.Errorf("broadcast ACK to %s %s", eth.DestinationAddress(), ip.DestinationAddress())
	}

	// Another address: NAK, broadcast.
	send(t, n, dhcpFrame(dhcpMsg{xid: 3, chaddr: clientMAC, opts: map[byte][]byte{53: {3}, 50: ip4("10.0.2.99")}}, bcast))
	m, _, ip = parseReply(t, recv(t, n))
	if string(m.opts[53]) != "\x06" || m.yiaddr.IsValid() && !m.yiaddr.IsUnspecified() || ip.DestinationAddress() != tcpip.AddrFrom4(bcast.As4()) {
		t.Fatalf("NAK %+v", m)
	}

	// Another server's offer taken; a release: silence.
	send(t, n, dhcpFrame(dhcpMsg{xid: 4, chaddr: clientMAC, opts: map[byte][]byte{53: {3}, 50: ip4("10.0.2.15"), 54: ip4("10.0.2.99")}}, bcast))
	send(t, n, dhcpFrame(dhcpMsg{xid: 5, ciaddr: guest, chaddr: clientMAC, opts: map[byte][]byte{53: {7}}}, gw))
	if f := recv(t, n); f != nil {
		t.Fatalf("answer to another server's REQUEST or a RELEASE: % x", f)
	}

	// Renewal: unicast from the leased address, ACK back to it.
	send(t, n, dhcpFrame(dhcpMsg{xid: 6, ciaddr: guest, chaddr: clientMAC, opts: map[byte][]byte{53: {3}}}, gw))
	m, eth, ip = parseReply(t, recv(t, n))
	if string(m.opts[53]) != "\x05" || m.ciaddr != guest || ip.DestinationAddress() != tcpip.AddrFrom4(guest.As4()) ||
		eth.DestinationAddress() != tcpip.LinkAddress(clientMAC) {
		t.Fatalf("renewal ACK %+v to %s", m, ip.DestinationAddress())
	}
	if s := n.Stats(); s.DHCPReplies != 4 {
		t.Errorf("stats %+v", s)
	}

	// A DISCOVER with a bad UDP checksum is nobody's.
	bad := dhcpFrame(dhcpMsg{xid: 7, chaddr: clientMAC, opts: map[byte][]byte{53: {1}}}, bcast)
	bad[len(bad)-1] ^= 0xff
	send(t, n, bad)
	if f := recv(t, n); f != nil {
		t.Fatalf("answer to a corrupt DISCOVER: % x", f)
	}
}

// TestARPAndPing: the gateway answers ARP for itself and the DNS relay and
// for nothing else (not the guest's own address, which a client probes
// before taking it); pings to the gateway are answered, pings to the
// outside are not.
func TestARPAndPing(t *testing.T) {
	n := newNet(t, usernet.Config{})
	arp := func(target netip.Addr) []byte {
		f := make([]byte, header.EthernetMinimumSize+header.ARPSize)
		header.Ethernet(f).Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(clientMAC), DstAddr: header.EthernetBroadcastAddress, Type: header.ARPProtocolNumber})
		a := header.ARP(f[header.EthernetMinimumSize:])
		a.SetIPv4OverEthernet()
		a.SetOp(header.ARPRequest)
		copy(a.HardwareAddressSender(), clientMAC)
		copy(a.ProtocolAddressSender(), ip4("0.0.0.0"))
		tg := target.As4()
		copy(a.ProtocolAddressTarget(), tg[:])
		return f
	}
	for _, a := range []netip.Addr{gw, dns} {
		send(t, n, arp(a))
		f := recv(t, n)
		if f == nil {
			t.Fatalf("no ARP reply for %s", a)
		}
		r := header.ARP(f[header.EthernetMinimumSize:])
		if header.Ethernet(f).Type() != header.ARPProtocolNumber || !r.IsValid() || r.Op() != header.ARPReply ||
			string(r.HardwareAddressSender()) != string(n.GatewayMAC()) {
			t.Fatalf("ARP reply for %s: % x", a, f)
		}
	}
	for _, a := range []netip.Addr{guest, netip.MustParseAddr("10.0.2.50"), netip.MustParseAddr("8.8.8.8")} {
		send(t, n, arp(a))
		if f := recv(t, n); f != nil {
			t.Fatalf("ARP reply for %s: % x", a, f)
		}
	}

	ping := func(dst netip.Addr) []byte {
		f := make([]byte, header.EthernetMinimumSize+header.IPv4MinimumSize+header.ICMPv4MinimumSize+8)
		header.Ethernet(f).Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(clientMAC), DstAddr: tcpip.LinkAddress(n.GatewayMAC()), Type: header.IPv4ProtocolNumber})
		ip := header.IPv4(f[header.EthernetMinimumSize:])
		ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(ip)), TTL: 64, Protocol: uint8(header.ICMPv4ProtocolNumber),
			SrcAddr: tcpip.AddrFrom4(guest.As4()), DstAddr: tcpip.AddrFrom4(dst.As4())})
		ip.SetChecksum(^ip.CalculateChecksum())
		ic := header.ICMPv4(ip.Payload())
		ic.SetType(header.ICMPv4Echo)
		ic.SetIdent(77)
		ic.SetSequence(1)
		copy(ic.Payload(), "pingdata")
		ic.SetChecksum(^checksum.Checksum(ic, 0))
		return f
	}
	// The stack has to learn the guest's MAC first: it asks by ARP.
	send(t, n, ping(gw))
	var reply []byte
	for f := recv(t, n); f != nil; f = recv(t, n) {
		eth := header.Ethernet(f)
		if eth.Type() == header.ARPProtocolNumber {
			q := header.ARP(f[header.EthernetMinimumSize:])
			if q.Op() == header.ARPRequest && string(q.ProtocolAddressTarget()) == string(ip4("10.0.2.15")) {
				r := arp(gw) // reuse the layout
				a := header.ARP(r[header.EthernetMinimumSize:])
				a.SetOp(header.ARPReply)
				copy(a.ProtocolAddressSender(), ip4("10.0.2.15"))
				copy(a.HardwareAddressTarget(), n.GatewayMAC())
				copy(a.ProtocolAddressTarget(), ip4("10.0.2.2"))
				send(t, n, r)
			}
			continue
		}
		reply = f
		break
	}
	if reply == nil {
		t.Fatal("no answer to a ping to the gateway")
	}
	ic := header.ICMPv4(header.IPv4(reply[header.EthernetMinimumSize:]).Payload())
	if ic.Type() != header.ICMPv4EchoReply || ic.Ident() != 77 || string(ic.Payload()) != "pingdata" {
		t.Fatalf("ping reply % x", reply)
	}
	send(t, n, ping(netip.MustParseAddr("192.0.2.1")))
	if f := recv(t, n); f != nil {
		t.Fatalf("a ping to the outside was answered: % x", f)
	}
	if s := n.Stats(); s.ICMPDropped != 1 || s.ARPDropped != 3 {
		t.Errorf("stats %+v", s)
	}
}

// FuzzFrames: whatever a guest sends, the back-end neither panics nor
// sends more than a bounded answer, and keeps working.
func FuzzFrames(f *testing.F) {
	f.Add(dhcpFrame(dhcpMsg{xid: 1, chaddr: clientMAC, opts: map[byte][]byte{53: {1}}}, bcast))
	f.Add(dhcpFrame(dhcpMsg{xid: 1, chaddr: clientMAC, opts: map[byte][]byte{53: {3}, 50: ip4("10.0.2.15")}}, bcast))
	f.Add(ipUDPFrame(clientMAC, clientMAC, guest, dns, 1000, 53, []byte("query")))
	f.Add(make([]byte, 14))
	n, err := usernet.New(usernet.Config{DNSUpstream: netip.MustParseAddrPort("127.0.0.1:9")})
	if err != nil {
		f.Fatal(err)
	}
	defer n.Close()
	bufs := make([][]byte, 64)
	for i := range bufs {
		bufs[i] = make([]byte, netdev.MaxPacketLen)
	}
	sizes := make([]int, len(bufs))
	f.Fuzz(func(t *testing.T, frame []byte) {
		_, err := n.WriteFrames([][][]byte{{make([]byte, netdev.HeaderSize), frame}})
		if err != nil && !errors.Is(err, netdev.ErrHeader) {
			t.Fatal(err)
		}
		// Drain what the stack answered.
		n.SetReadDeadline(time.Now())
		for {
			cnt, err := n.ReadFrames(bufs, sizes)
			if err != nil {
				break
			}
			for i := range cnt {
				if sizes[i] < netdev.HeaderSize+60 || sizes[i] > netdev.HeaderSize+1514 {
					t.Fatalf("answer of %d bytes", sizes[i])
				}
			}
		}
		n.SetReadDeadline(time.Time{})
	})
}
