package frame_test

import (
	"net"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/viovmm/vio/netdev/frame"
)

// FuzzParse: any bytes parse or fail with a defined error, never a panic;
// where the parse succeeds its addresses and ports agree with gopacket's
// decoders (a second, independent parser).
func FuzzParse(f *testing.F) {
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: net.IPv4(10, 0, 0, 1), DstIP: net.IPv4(10, 0, 0, 2)}
	tcp := &layers.TCP{SrcPort: 1234, DstPort: 22, SYN: true}
	tcp.SetNetworkLayerForChecksum(ip)
	f.Add(build(f, &layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: layers.EthernetTypeIPv4}, ip, tcp))
	ip6 := &layers.IPv6{Version: 6, HopLimit: 1, NextHeader: layers.IPProtocolUDP, SrcIP: net.ParseIP("fe80::1"), DstIP: net.ParseIP("ff02::1")}
	udp := &layers.UDP{SrcPort: 546, DstPort: 547}
	udp.SetNetworkLayerForChecksum(ip6)
	f.Add(build(f, &layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: layers.EthernetTypeDot1Q},
		&layers.Dot1Q{VLANIdentifier: 7, Type: layers.EthernetTypeIPv6}, ip6, udp))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := frame.Parse(b)
		if err != nil || got.Fragment {
			return
		}
		pkt := gopacket.NewPacket(b, layers.LayerTypeEthernet, gopacket.Default)
		if got.EtherType == frame.TypeIPv4 && !got.Tagged {
			if l, ok := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok {
				if a, _ := netip.AddrFromSlice(l.SrcIP.To4()); a != got.SrcIP {
					t.Fatalf("source %v, gopacket %v", got.SrcIP, l.SrcIP)
				}
				if got.Proto == frame.ProtoTCP && got.HasPorts {
					if tl, ok := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP); ok && (uint16(tl.SrcPort) != got.SrcPort || uint16(tl.DstPort) != got.DstPort) {
						t.Fatalf("ports %d→%d, gopacket %d→%d", got.SrcPort, got.DstPort, tl.SrcPort, tl.DstPort)
					}
				}
			}
		}
		if got.HasPorts && got.Proto != frame.ProtoTCP && got.Proto != frame.ProtoUDP {
			t.Fatalf("ports for protocol %d", got.Proto)
		}
	})
}
