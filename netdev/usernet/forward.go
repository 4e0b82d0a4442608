package usernet

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// target maps a destination the guest asked for to the host address that
// carries it: the gateway is the host's loopback, the DNS relay's port 53
// is the upstream resolver, other addresses of the virtual network and
// addresses no host socket should reach (loopback, multicast, broadcast,
// unspecified) are refused, and the rest of the world is itself.
func (n *Net) target(dst netip.AddrPort) (netip.AddrPort, bool) {
	a := dst.Addr()
	switch {
	case a == n.a.gateway:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), dst.Port()), true
	case a == n.a.dns:
		if dst.Port() == 53 && n.a.upstream.IsValid() {
			return n.a.upstream, true
		}
		return netip.AddrPort{}, false
	case n.a.prefix.Contains(a), a.IsLoopback(), a.IsMulticast(), a.IsUnspecified(),
		a == netip.AddrFrom4([4]byte{255, 255, 255, 255}), dst.Port() == 0:
		return netip.AddrPort{}, false
	}
	return dst, true
}

// acquire takes a slot of a limit without waiting.
func acquire(slots chan struct{}) bool {
	select {
	case slots <- struct{}{}:
		return true
	default:
		return false
	}
}

// handleTCP is the stack's TCP forwarder: it runs on its own goroutine for
// each new connection from the guest (at most maxInFlightSYN at once).
// The host side is dialled first, so a refused destination is a reset
// for the guest, as it would be on a real network.
func (n *Net) handleTCP(r *tcp.ForwarderRequest) {
	id := r.ID()
	la, ok := netipAddr(id.LocalAddress)
	if !ok {
		r.Complete(true)
		return
	}
	dst, ok := n.target(netip.AddrPortFrom(la, id.LocalPort))
	if !ok {
		n.stats.refused.Add(1)
		r.Complete(true)
		return
	}
	if !acquire(n.conns) {
		n.stats.limited.Add(1)
		r.Complete(true)
		return
	}
	ctx, cancel := context.WithTimeout(n.ctx, n.a.dialTimeout)
	var d net.Dialer
	hc, err := d.DialContext(ctx, "tcp", dst.String())
	cancel()
	if err != nil {
		<-n.conns
		n.stats.refused.Add(1)
		r.Complete(true)
		return
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		hc.Close()
		<-n.conns
		r.Complete(true)
		return
	}
	r.Complete(false)
	gc := gonet.NewTCPConn(&wq, ep)
	n.stats.tcpConns.Add(1)
	if !n.goTracked(func() {
		defer func() { <-n.conns }()
		n.splice(gc, hc.(*net.TCPConn))
	}) {
		gc.Close()
		hc.Close()
		<-n.conns
	}
}

// halfCloser is a stream that can end its sending half alone.
type halfCloser interface {
	io.ReadWriteCloser
	CloseWrite() error
}

// splice copies both ways between the guest's and the host's end of a
// connection, each direction through its own bounded buffer. An end of
// stream in one direction becomes a half-close on the other side; an error
// in either direction aborts both.
func (n *Net) splice(guest, host halfCloser) {
	untrack, ok := n.track(guest, host)
	if !ok {
		return
	}
	defer untrack()
	done := make(chan struct{})
	go func() {
		defer close(done)
		copyHalf(host, guest)
	}()
	copyHalf(guest, host)
	<-done
	guest.Close()
	host.Close()
}

// copyHalf copies src to dst until src ends, then half-closes dst. On an
// error it closes both, which also ends the other direction.
func copyHalf(dst, src halfCloser) {
	buf := make([]byte, spliceBuf)
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			if _, werr := dst.Write(buf[:nr]); werr != nil {
				dst.Close()
				src.Close()
				return
			}
		}
		if rerr == io.EOF {
			dst.CloseWrite()
			return
		}
		if rerr != nil {
			dst.Close()
			src.Close()
			return
		}
	}
}

// handleUDP is the stack's UDP forwarder: it runs in the stack's receive
// path for the first datagram of a flow (a guest address and port to a
// destination address and port), so it only sets the flow up and leaves
// the relaying to a goroutine.
func (n *Net) handleUDP(r *udp.ForwarderRequest) bool {
	id := r.ID()
	la, ok := netipAddr(id.LocalAddress)
	if !ok {
		return false
	}
	dst, ok := n.target(netip.AddrPortFrom(la, id.LocalPort))
	if !ok {
		n.stats.refused.Add(1)
		return false // the stack answers port unreachable
	}
	if !acquire(n.flows) {
		n.stats.limited.Add(1)
		return true // dropped
	}
	hc, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
	if err != nil {
		<-n.flows
		n.stats.refused.Add(1)
		return false
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		hc.Close()
		<-n.flows
		return true
	}
	gc := gonet.NewUDPConn(&wq, ep)
	n.stats.udpFlows.Add(1)
	if !n.goTracked(func() {
		defer func() { <-n.flows }()
		n.relayUDP(gc, hc)
	}) {
		gc.Close()
		hc.Close()
		<-n.flows
	}
	return true
}

// datagramConn is a connected datagram socket.
type datagramConn interface {
	Read([]byte) (int, error)
	Write([]byte) (int, error)
	SetReadDeadline(time.Time) error
	Close() error
}

// relayUDP carries datagrams both ways between two connected sockets
// until neither direction has seen traffic for the idle timeout.
func (n *Net) relayUDP(a, b datagramConn) {
	untrack, ok := n.track(a, b)
	if !ok {
		return
	}
	defer untrack()
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	done := make(chan struct{})
	go func() {
		defer close(done)
		pump(a, b, &last, n.a.udpIdle)
	}()
	pump(b, a, &last, n.a.udpIdle)
	a.Close()
	b.Close()
	<-done
}

// pump copies datagrams from src to dst until src fails or the flow has
// been idle for idle; then it closes both.
func pump(dst, src datagramConn, last *atomic.Int64, idle time.Duration) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 65535)
	for {
		src.SetReadDeadline(time.Unix(0, last.Load()).Add(idle))
		nr, err := src.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) || isTimeout(err) {
				if time.Since(time.Unix(0, last.Load())) < idle {
					continue // the other direction was busy
				}
			}
			return
		}
		last.Store(time.Now().UnixNano())
		// A datagram that cannot be sent is lost, as on any network.
		dst.Write(buf[:nr])
	}
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}
