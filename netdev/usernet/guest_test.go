package usernet_test

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/viovmm/vio/netdev"
)

// guestMAC is the test guest's NIC address.
var guestMAC = tcpip.LinkAddress("\x52\x54\x00\x12\x34\x56")

// guest is a second netstack playing the guest: its NIC's frames are
// written to the back-end as a front-end would (behind a zero virtio-net
// header), and what the back-end delivers is injected into it.
type guestStack struct {
	s    *stack.Stack
	stop func()
}

// newGuest starts a guest stack with the address 10.0.2.15 on the
// back-end n, a default route through 10.0.2.2, stopped when the test
// ends.
func newGuest(t *testing.T, n netdev.Backend) *guestStack {
	g := newGuestNoCleanup(t, n)
	t.Cleanup(g.stop)
	return g
}

// newGuestNoCleanup starts a guest stack the test stops itself.
func newGuestNoCleanup(t *testing.T, n netdev.Backend) *guestStack {
	t.Helper()
	addr, gw := guest, gw
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4},
	})
	ch := channel.New(256, 1514, guestMAC)
	if err := s.CreateNIC(1, ethernet.New(ch)); err != nil {
		t.Fatal(err)
	}
	pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpip.AddrFrom4(addr.As4()), PrefixLen: 24}}
	if err := s.AddProtocolAddress(1, pa, stack.AddressProperties{}); err != nil {
		t.Fatal(err)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, Gateway: tcpip.AddrFrom4(gw.As4()), NIC: 1}})

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	// Guest → network.
	go func() {
		defer wg.Done()
		hdr := make([]byte, netdev.HeaderSize)
		for {
			pkt := ch.ReadContext(ctx)
			if pkt == nil {
				return
			}
			v := pkt.ToView()
			frame := append([]byte(nil), v.AsSlice()...)
			v.Release()
			pkt.DecRef()
			if _, err := n.WriteFrames([][][]byte{{hdr, frame}}); err != nil {
				if errors.Is(err, netdev.ErrClosed) {
					return
				}
				t.Errorf("WriteFrames: %v", err)
			}
		}
	}()
	// Network → guest.
	go func() {
		defer wg.Done()
		bufs := make([][]byte, 8)
		for i := range bufs {
			bufs[i] = make([]byte, netdev.MaxPacketLen)
		}
		sizes := make([]int, len(bufs))
		for {
			cnt, err := n.ReadFrames(bufs, sizes)
			if err != nil {
				return // closed, or the cleanup's deadline
			}
			for i := range cnt {
				if h := netdev.DecodeHeader(bufs[i]); h != (netdev.Header{}) {
					t.Errorf("back-end sent header %+v to a guest that negotiated no offloads", h)
				}
				frame := append([]byte(nil), bufs[i][netdev.HeaderSize:sizes[i]]...)
				pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(frame)})
				ch.InjectInbound(0, pkt)
				pkt.DecRef()
			}
		}
	}()
	var once sync.Once
	return &guestStack{s: s, stop: func() {
		once.Do(func() {
			cancel()
			n.SetReadDeadline(time.Unix(1, 0))
			wg.Wait()
			s.Close()
			s.Wait()
		})
	}}
}

func fullAddr(ap netip.AddrPort) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(ap.Addr().As4()), Port: ap.Port()}
}
