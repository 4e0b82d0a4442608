// Package usernet is a user-mode network back-end: the guest's Ethernet
// frames go into a TCP/IP stack inside vio (gVisor's netstack), which
// terminates the guest's connections and carries them on host sockets.
// No TAP, no bridge, no privilege: what the guest reaches is what vio's
// process could reach itself.
//
// The virtual network follows QEMU's user networking: by default
// 10.0.2.0/24 with the gateway at .2 (connections to it reach the host's
// loopback), a DNS relay at .3 (to the host's resolver) and the guest at
// .15, handed out by a DHCP server. Outbound TCP and UDP go through host
// sockets; ping works for the gateway and DNS addresses, which the stack
// answers itself (pings elsewhere are dropped: relaying them needs ICMP
// sockets the host may not allow). Port forwards carry host connections
// to the guest.
//
// Everything a guest can make grows is bounded: frames queued for it,
// connections and UDP flows (each with two goroutines and two copy
// buffers), connections being dialled, and the stack's TCP buffers.
package usernet

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/viovmm/vio/netdev"
)

const nicID tcpip.NICID = 1

// Net is a user-mode network with one guest NIC on it. It is the NIC's
// netdev.Backend: frames the front-end writes are the guest's, frames it
// reads are for the guest. It offers no offloads (netdev.Offloader is not
// implemented): every frame is a plain Ethernet frame behind a zero
// virtio-net header.
type Net struct {
	a     addrs
	stack *stack.Stack
	link  *link

	out       chan []byte   // frames for the guest; never closed
	done      chan struct{} // closed by Close
	closeOnce sync.Once

	rd netdev.ReadDeadline // SetReadDeadline's, which ReadFrames honours

	ctx    context.Context // cancelled by Close: ends dials and relays
	cancel context.CancelFunc
	conns  chan struct{} // a slot per TCP connection
	flows  chan struct{} // a slot per UDP flow
	wg     sync.WaitGroup

	lmu       sync.Mutex // guards live, closed
	live      map[io.Closer]struct{}
	closed    bool
	fwdAddrs  []net.Addr
	listeners []io.Closer

	stats struct {
		framesIn, framesOut, bytesIn, bytesOut, outDropped atomic.Uint64
		dhcp, tcpConns, udpFlows, refused, limited         atomic.Uint64
		icmpDropped, arpDropped, badFrames                 atomic.Uint64
	}
}

var _ netdev.Backend = (*Net)(nil)

// New builds the network described by c and starts its port forwards.
func New(c Config) (*Net, error) {
	a, err := c.resolve()
	if err != nil {
		return nil, err
	}
	n := &Net{
		a:     a,
		out:   make(chan []byte, outQueueLen),
		done:  make(chan struct{}),
		conns: make(chan struct{}, a.maxConns),
		flows: make(chan struct{}, a.maxUDPFlows),
		live:  map[io.Closer]struct{}{},
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	if err := n.buildStack(); err != nil {
		n.Close()
		return nil, err
	}
	for _, f := range c.HostFwds {
		if err := n.startHostFwd(f); err != nil {
			n.Close()
			return nil, err
		}
	}
	return n, nil
}

func (n *Net) buildStack() error {
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4},
	})
	n.stack = s
	sack := tcpip.TCPSACKEnabled(true)
	opts := []tcpip.SettableTransportProtocolOption{
		&sack,
		&tcpip.TCPReceiveBufferSizeRangeOption{Min: 4096, Default: 128 << 10, Max: tcpBufMax},
		&tcpip.TCPSendBufferSizeRangeOption{Min: 4096, Default: 128 << 10, Max: tcpBufMax},
	}
	for _, o := range opts {
		if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, o); err != nil {
			return fmt.Errorf("usernet: TCP option %T: %s", o, err)
		}
	}
	n.link = &link{n: n, mac: tcpip.LinkAddress(n.a.gatewayMAC)}
	if err := s.CreateNIC(nicID, ethernet.New(n.link)); err != nil {
		return fmt.Errorf("usernet: creating the NIC: %s", err)
	}
	for _, addr := range []netip.Addr{n.a.gateway, n.a.dns} {
		pa := tcpip.ProtocolAddress{
			Protocol:          ipv4.ProtocolNumber,
			AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpAddr(addr), PrefixLen: n.a.prefix.Bits()},
		}
		if err := s.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
			return fmt.Errorf("usernet: address %s: %s", addr, err)
		}
	}
	// Promiscuous: the stack takes packets for any destination (the
	// whole Internet is behind the gateway); spoofing: it answers from
	// those addresses. ARP requests are filtered before the stack, which
	// would otherwise claim every address (see input).
	if err := s.SetPromiscuousMode(nicID, true); err != nil {
		return fmt.Errorf("usernet: promiscuous mode: %s", err)
	}
	if err := s.SetSpoofing(nicID, true); err != nil {
		return fmt.Errorf("usernet: spoofing: %s", err)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: nicID}})
	fwd := tcp.NewForwarder(s, 0, maxInFlightSYN, n.handleTCP)
	s.SetTransportProtocolHandler(tcp.ProtocolNumber, fwd.HandlePacket)
	ufwd := udp.NewForwarder(s, n.handleUDP)
	s.SetTransportProtocolHandler(udp.ProtocolNumber, ufwd.HandlePacket)
	return nil
}

// Guest returns the address the DHCP server hands out.
func (n *Net) Guest() netip.Addr { return n.a.guest }

// Gateway returns the gateway's address (the host's loopback, seen from
// the guest).
func (n *Net) Gateway() netip.Addr { return n.a.gateway }

// DNS returns the DNS relay's address.
func (n *Net) DNS() netip.Addr { return n.a.dns }

// GatewayMAC returns the gateway's Ethernet address.
func (n *Net) GatewayMAC() net.HardwareAddr { return append(net.HardwareAddr(nil), n.a.gatewayMAC...) }

// HostFwdAddrs returns the host addresses the port forwards listen on, in
// the order given (a port 0 in the Config is resolved here).
func (n *Net) HostFwdAddrs() []net.Addr {
	n.lmu.Lock()
	defer n.lmu.Unlock()
	return append([]net.Addr(nil), n.fwdAddrs...)
}

// Stats are a Net's counters.
type Stats struct {
	FramesIn, BytesIn   uint64 // from the guest
	FramesOut, BytesOut uint64 // to the guest
	OutDropped          uint64 // frames for the guest dropped: its queue was full
	DHCPReplies         uint64
	TCPConns, UDPFlows  uint64 // carried, in total
	Refused             uint64 // connections and flows refused (bad destination, host refused)
	Limited             uint64 // connections and flows refused by a limit
	ICMPDropped         uint64 // pings to addresses other than the gateway and DNS
	ARPDropped          uint64 // ARP requests for addresses nobody here owns
	BadFrames           uint64 // frames with a bad virtio-net header or length
}

// Stats returns the counters.
func (n *Net) Stats() Stats {
	s := &n.stats
	return Stats{
		FramesIn: s.framesIn.Load(), BytesIn: s.bytesIn.Load(),
		FramesOut: s.framesOut.Load(), BytesOut: s.bytesOut.Load(), OutDropped: s.outDropped.Load(),
		DHCPReplies: s.dhcp.Load(), TCPConns: s.tcpConns.Load(), UDPFlows: s.udpFlows.Load(),
		Refused: s.refused.Load(), Limited: s.limited.Load(), ICMPDropped: s.icmpDropped.Load(),
		ARPDropped: s.arpDropped.Load(), BadFrames: s.badFrames.Load(),
	}
}

// WriteFrames implements netdev.Backend: frames from the guest.
func (n *Net) WriteFrames(frames [][][]byte) (int, error) {
	select {
	case <-n.done:
		return 0, netdev.ErrClosed
	default:
	}
	for i, f := range frames {
		total := 0
		for _, b := range f {
			total += len(b)
		}
		if total < netdev.HeaderSize+netdev.MinFrameLen || total > netdev.MaxPacketLen {
			n.stats.badFrames.Add(1)
			return i, fmt.Errorf("usernet: %w: packet of %d bytes", netdev.ErrHeader, total)
		}
		// A copy: the buffers are guest memory, and the stack keeps
		// what it is given.
		pkt := make([]byte, 0, total)
		for _, b := range f {
			pkt = append(pkt, b...)
		}
		if err := netdev.DecodeHeader(pkt).Check(total-netdev.HeaderSize, 0); err != nil {
			n.stats.badFrames.Add(1)
			return i, err
		}
		n.stats.framesIn.Add(1)
		n.stats.bytesIn.Add(uint64(total - netdev.HeaderSize))
		n.input(pkt[netdev.HeaderSize:])
	}
	return len(frames), nil
}

// input takes one frame from the guest.
func (n *Net) input(frame []byte) {
	switch etherType(frame) {
	case etherTypeARP:
		if !n.arpForUs(frame) {
			n.stats.arpDropped.Add(1)
			return
		}
	case etherTypeIPv4:
		if m, ok := parseDHCP(frame); ok && n.dhcpForUs(m.dstIP) {
			if r := dhcpReply(&n.a, m); r != nil {
				n.stats.dhcp.Add(1)
				n.emit(r)
			}
			return
		}
		if ip, proto, ok := parseIPv4(frame); ok && proto == protoICMP {
			dst := netip.AddrFrom4([4]byte(ip[16:20]))
			if dst != n.a.gateway && dst != n.a.dns {
				// The stack would answer for any address; a ping
				// answered for a host that is not there is a lie.
				n.stats.icmpDropped.Add(1)
				return
			}
		}
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(frame)})
	n.link.deliver(pkt)
	pkt.DecRef()
}

func etherType(frame []byte) uint16 {
	return uint16(frame[12])<<8 | uint16(frame[13]) // len >= MinFrameLen was checked
}

// arpForUs lets through ARP replies (the stack learns the guest's MAC from
// them) and requests for the gateway's and the DNS relay's addresses. The
// stack, spoofing, would answer a request for any address, including the
// guest's own probes for the address it is about to take.
func (n *Net) arpForUs(frame []byte) bool {
	a := frame[ethHdrLen:]
	if len(a) < 28 || a[0] != 0 || a[1] != 1 || a[2] != 8 || a[3] != 0 || a[4] != 6 || a[5] != 4 {
		return false
	}
	if op := uint16(a[6])<<8 | uint16(a[7]); op != 1 {
		return op == 2
	}
	target := netip.AddrFrom4([4]byte(a[24:28]))
	return target == n.a.gateway || target == n.a.dns
}

// dhcpForUs: DHCP requests come broadcast, or unicast to the server when
// renewing.
func (n *Net) dhcpForUs(dst netip.Addr) bool {
	return dst == netip.AddrFrom4([4]byte{255, 255, 255, 255}) || dst == n.a.broadcast || dst == n.a.gateway
}

// emit queues a frame for the guest, dropping it if the queue is full.
func (n *Net) emit(frame []byte) {
	if len(frame) < 60 {
		// Ethernet's minimum, as a NIC pads on the wire.
		frame = append(frame, make([]byte, 60-len(frame))...)
	}
	select {
	case n.out <- frame:
	default:
		n.stats.outDropped.Add(1)
	}
}

// ReadFrames implements netdev.Backend: frames for the guest.
func (n *Net) ReadFrames(bufs [][]byte, sizes []int) (int, error) {
	if len(bufs) == 0 || len(sizes) < len(bufs) {
		return 0, fmt.Errorf("usernet: %d buffers, %d sizes", len(bufs), len(sizes))
	}
	first, err := n.rd.Receive(n.done, n.out)
	if err != nil {
		return 0, err
	}
	cnt := 0
	put := func(f []byte) {
		var h [netdev.HeaderSize]byte
		copy(bufs[cnt], h[:])
		sizes[cnt] = netdev.HeaderSize + copy(bufs[cnt][netdev.HeaderSize:], f)
		n.stats.framesOut.Add(1)
		n.stats.bytesOut.Add(uint64(len(f)))
		cnt++
	}
	put(first)
	for cnt < len(bufs) {
		select {
		case f := <-n.out:
			put(f)
		default:
			return cnt, nil
		}
	}
	return cnt, nil
}

// SetReadDeadline implements netdev.Backend.
func (n *Net) SetReadDeadline(t time.Time) error {
	n.rd.Set(t)
	return nil
}

// Close implements netdev.Backend: it stops the port forwards, ends every
// connection and flow, and waits for their goroutines.
func (n *Net) Close() error {
	err := netdev.ErrClosed
	n.closeOnce.Do(func() {
		err = nil
		close(n.done)
		n.cancel()
		n.lmu.Lock()
		n.closed = true
		ls := n.listeners
		live := n.live
		n.live = map[io.Closer]struct{}{}
		n.lmu.Unlock()
		for _, l := range ls {
			l.Close()
		}
		for c := range live {
			c.Close()
		}
		n.wg.Wait()
		if n.stack != nil {
			n.stack.Close()
			n.stack.Wait()
		}
	})
	return err
}

// track registers c to be closed by Close; it returns false (and closes
// c) when the Net is already closed. The returned func unregisters it.
func (n *Net) track(cs ...io.Closer) (func(), bool) {
	n.lmu.Lock()
	if n.closed {
		n.lmu.Unlock()
		for _, c := range cs {
			c.Close()
		}
		return nil, false
	}
	for _, c := range cs {
		n.live[c] = struct{}{}
	}
	n.lmu.Unlock()
	return func() {
		n.lmu.Lock()
		for _, c := range cs {
			delete(n.live, c)
		}
		n.lmu.Unlock()
	}, true
}

// goTracked runs f on a goroutine Close waits for, unless the Net is
// closed.
func (n *Net) goTracked(f func()) bool {
	n.lmu.Lock()
	defer n.lmu.Unlock()
	if n.closed {
		return false
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f()
	}()
	return true
}

func tcpAddr(a netip.Addr) tcpip.Address { return tcpip.AddrFrom4(a.As4()) }

func netipAddr(a tcpip.Address) (netip.Addr, bool) {
	if a.Len() != 4 {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4(a.As4()), true
}

// link is the stack's link endpoint below the Ethernet layer: frames the
// stack sends go to the guest's queue, frames from the guest are
// delivered to the dispatcher.
type link struct {
	n   *Net
	mac tcpip.LinkAddress

	mu         sync.RWMutex
	dispatcher stack.NetworkDispatcher
}

var _ stack.LinkEndpoint = (*link)(nil)

func (l *link) deliver(pkt *stack.PacketBuffer) {
	l.mu.RLock()
	d := l.dispatcher
	l.mu.RUnlock()
	if d != nil {
		d.DeliverNetworkPacket(0, pkt) // the Ethernet layer reads the type
	}
}

func (l *link) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	cnt := 0
	for _, pkt := range pkts.AsSlice() {
		var f []byte
		for _, s := range pkt.AsSlices() {
			f = append(f, s...)
		}
		l.n.emit(f)
		cnt++
	}
	return cnt, nil
}

func (l *link) MTU() uint32                    { return mtu + header.EthernetMinimumSize }
func (l *link) SetMTU(uint32)                  {}
func (l *link) MaxHeaderLength() uint16        { return 0 }
func (l *link) LinkAddress() tcpip.LinkAddress { return l.mac }
func (l *link) SetLinkAddress(tcpip.LinkAddress) {
}
func (l *link) Capabilities() stack.LinkEndpointCapabilities { return 0 }
func (l *link) Attach(d stack.NetworkDispatcher) {
	l.mu.Lock()
	l.dispatcher = d
	l.mu.Unlock()
}
func (l *link) IsAttached() bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.dispatcher != nil
}
func (l *link) Wait()                                   {}
func (l *link) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }
func (l *link) AddHeader(*stack.PacketBuffer)           {}
func (l *link) ParseHeader(*stack.PacketBuffer) bool    { return true }
func (l *link) Close()                                  {}
func (l *link) SetOnCloseAction(func())                 {}
