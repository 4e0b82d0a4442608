package frame_test

import (
	"net"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/viovmm/vio/netdev/frame"
)

var (
	macA = net.HardwareAddr{0x52, 0x54, 0, 0, 0, 1}
	macB = net.HardwareAddr{0x52, 0x54, 0, 0, 0, 2}
)

// build serializes layers with gopacket, the oracle for the wire format.
func build(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestParseTCPv4InVLAN(t *testing.T) {
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: net.IPv4(10, 0, 0, 1), DstIP: net.IPv4(10, 0, 0, 2)}
	tcp := &layers.TCP{SrcPort: 40000, DstPort: 22, SYN: true, Window: 1000}
	tcp.SetNetworkLayerForChecksum(ip)
	b := build(t,
		&layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: layers.EthernetTypeDot1Q},
		&layers.Dot1Q{VLANIdentifier: 42, Type: layers.EthernetTypeIPv4},
		ip, tcp, gopacket.Payload("hello"))
	f, err := frame.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if !f.Tagged || f.VLAN != 42 || f.EtherType != frame.TypeIPv4 || f.Proto != frame.ProtoTCP ||
		f.SrcIP != netip.MustParseAddr("10.0.0.1") || f.DstIP != netip.MustParseAddr("10.0.0.2") ||
		!f.HasPorts || f.SrcPort != 40000 || f.DstPort != 22 || f.TCPFlags != frame.TCPSyn ||
		net.HardwareAddr(f.Src[:]).String() != macA.String() {
		t.Fatalf("%+v", f)
	}
}

func TestParseUDPv6WithExtensionHeaders(t *testing.T) {
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolIPv6HopByHop,
		SrcIP: net.ParseIP("fd00::1"), DstIP: net.ParseIP("fd00::2")}
	hbh := &layers.IPv6HopByHop{}
	hbh.NextHeader = layers.IPProtocolUDP
	hbh.Options = []*layers.IPv6HopByHopOption{{OptionType: 1, OptionLength: 4, OptionData: []byte{0, 0, 0, 0}}}
	udp := &layers.UDP{SrcPort: 5353, DstPort: 53}
	udp.SetNetworkLayerForChecksum(ip)
	b := build(t, &layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: layers.EthernetTypeIPv6}, ip, hbh, udp, gopacket.Payload("q"))
	f, err := frame.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if f.Proto != frame.ProtoUDP || !f.HasPorts || f.SrcPort != 5353 || f.DstPort != 53 || f.DstIP != netip.MustParseAddr("fd00::2") {
		t.Fatalf("%+v", f)
	}
}

func TestParseARPAndICMP(t *testing.T) {
	b := build(t, &layers.Ethernet{SrcMAC: macA, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: 1, SourceHwAddress: macA, SourceProtAddress: []byte{10, 0, 0, 1}, DstHwAddress: make([]byte, 6), DstProtAddress: []byte{10, 0, 0, 9}})
	f, err := frame.Parse(b)
	if err != nil || f.ARPOp != 1 || f.ARPSender != netip.MustParseAddr("10.0.0.1") || f.ARPTarget != netip.MustParseAddr("10.0.0.9") || f.ARPSenderMAC != [6]byte(macA) {
		t.Fatalf("%+v %v", f, err)
	}
	b = build(t, &layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: layers.EthernetTypeIPv4},
		&layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: net.IPv4(1, 2, 3, 4), DstIP: net.IPv4(5, 6, 7, 8)},
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0)}, gopacket.Payload("ping"))
	f, err = frame.Parse(b)
	if err != nil || !f.HasICMP || f.ICMPType != 8 || f.HasPorts {
		t.Fatalf("%+v %v", f, err)
	}
}

func TestParseRejectsTruncation(t *testing.T) {
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: net.IPv4(10, 0, 0, 1), DstIP: net.IPv4(10, 0, 0, 2)}
	tcp := &layers.TCP{SrcPort: 1, DstPort: 2}
	tcp.SetNetworkLayerForChecksum(ip)
	b := build(t, &layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: layers.EthernetTypeIPv4}, ip, tcp)
	// gopacket pads to Ethernet's 60 bytes: the datagram is 40.
	for n := 0; n < 14+40; n++ {
		if _, err := frame.Parse(b[:n]); err == nil {
			// Cut anywhere inside IPv4+TCP, the frame is malformed.
			t.Errorf("frame cut to %d of %d bytes parsed without error", n, len(b))
		}
	}
	if _, err := frame.Parse(b); err != nil {
		t.Fatal(err)
	}
	// A non-first fragment has no ports.
	ip.Flags, ip.FragOffset = 0, 100
	b = build(t, &layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: layers.EthernetTypeIPv4}, ip, gopacket.Payload(make([]byte, 30)))
	if f, err := frame.Parse(b); err != nil || !f.Fragment || f.HasPorts {
		t.Fatalf("fragment: %+v %v", f, err)
	}
}

// TestRARP: the announcement is a 60-byte broadcast from the MAC, whose
// RARP request names the MAC as sender and target (gopacket reads it as
// ARP's layout, which RARP shares).
func TestRARP(t *testing.T) {
	mac := [6]byte{0x52, 0x54, 0, 0xfa, 0x11, 0x0e}
	b := frame.RARP(mac)
	p := gopacket.NewPacket(b, layers.LayerTypeEthernet, gopacket.Default)
	eth, ok := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	if !ok || len(b) != 60 || eth.DstMAC.String() != "ff:ff:ff:ff:ff:ff" || eth.SrcMAC.String() != "52:54:00:fa:11:0e" || eth.EthernetType != frame.TypeRARP {
		t.Fatalf("RARP frame % x: %v", b, p)
	}
	arp := &layers.ARP{}
	if err := arp.DecodeFromBytes(eth.Payload, gopacket.NilDecodeFeedback); err != nil {
		t.Fatal(err)
	}
	if arp.AddrType != layers.LinkTypeEthernet || arp.Protocol != layers.EthernetTypeIPv4 || arp.Operation != 3 ||
		string(arp.SourceHwAddress) != string(mac[:]) || string(arp.DstHwAddress) != string(mac[:]) {
		t.Fatalf("RARP payload %+v", arp)
	}
}
