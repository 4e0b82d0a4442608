package usernet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

// startHostFwd opens f's host socket and starts carrying what arrives on
// it into the guest. In the guest, forwarded connections and datagrams
// come from the gateway's address.
func (n *Net) startHostFwd(f HostFwd) error {
	g := f.Guest.Addr()
	if !g.IsValid() || g.IsUnspecified() {
		g = n.a.guest
	}
	dst := tcpip.FullAddress{NIC: nicID, Addr: tcpAddr(g), Port: f.Guest.Port()}
	var (
		c    interface{ Close() error }
		addr net.Addr
		run  func()
	)
	if f.UDP {
		pc, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(f.Host))
		if err != nil {
			return fmt.Errorf("usernet: hostfwd %s: %w", f, err)
		}
		c, addr, run = pc, pc.LocalAddr(), func() { n.udpFwd(pc, dst) }
	} else {
		l, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(f.Host))
		if err != nil {
			return fmt.Errorf("usernet: hostfwd %s: %w", f, err)
		}
		c, addr, run = l, l.Addr(), func() { n.tcpFwd(l, dst) }
	}
	n.lmu.Lock()
	if n.closed {
		n.lmu.Unlock()
		c.Close()
		return errors.New("usernet: closed")
	}
	n.listeners = append(n.listeners, c)
	n.fwdAddrs = append(n.fwdAddrs, addr)
	n.lmu.Unlock()
	n.goTracked(run)
	return nil
}

// tcpFwd accepts host connections and splices each to a connection the
// stack opens to the guest.
func (n *Net) tcpFwd(l *net.TCPListener, dst tcpip.FullAddress) {
	for {
		c, err := l.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors, most likely: let some close.
			select {
			case <-n.done:
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		if !acquire(n.conns) {
			n.stats.limited.Add(1)
			c.Close()
			continue
		}
		if !n.goTracked(func() {
			defer func() { <-n.conns }()
			ctx, cancel := context.WithTimeout(n.ctx, n.a.dialTimeout)
			gc, err := gonet.DialContextTCP(ctx, n.stack, dst, ipv4.ProtocolNumber)
			cancel()
			if err != nil {
				n.stats.refused.Add(1)
				c.Close()
				return
			}
			n.stats.tcpConns.Add(1)
			n.splice(gc, c)
		}) {
			c.Close()
			<-n.conns
			return
		}
	}
}

// udpFwd relays datagrams from each host peer of pc to the guest through
// a flow of its own (so the guest's replies find their way back), ending a
// flow after the idle timeout.
func (n *Net) udpFwd(pc *net.UDPConn, dst tcpip.FullAddress) {
	type flow struct {
		gc   *gonet.UDPConn
		last atomic.Int64
	}
	var mu sync.Mutex
	flows := map[netip.AddrPort]*flow{}
	buf := make([]byte, 65535)
	for {
		nr, from, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // ICMP errors from earlier sends, and the like
		}
		mu.Lock()
		fl := flows[from]
		mu.Unlock()
		if fl == nil {
			if !acquire(n.flows) {
				n.stats.limited.Add(1)
				continue
			}
			gc, err := gonet.DialUDP(n.stack, nil, &dst, ipv4.ProtocolNumber)
			if err != nil {
				<-n.flows
				n.stats.refused.Add(1)
				continue
			}
			untrack, ok := n.track(gc)
			if !ok {
				<-n.flows
				return
			}
			fl = &flow{gc: gc}
			fl.last.Store(time.Now().UnixNano())
			mu.Lock()
			flows[from] = fl
			mu.Unlock()
			n.stats.udpFlows.Add(1)
			started := n.goTracked(func() {
				defer func() {
					mu.Lock()
					delete(flows, from)
					mu.Unlock()
					untrack()
					gc.Close()
					<-n.flows
				}()
				rbuf := make([]byte, 65535)
				for {
					gc.SetReadDeadline(time.Unix(0, fl.last.Load()).Add(n.a.udpIdle))
					nr, err := gc.Read(rbuf)
					if err != nil {
						if isTimeout(err) && time.Since(time.Unix(0, fl.last.Load())) < n.a.udpIdle {
							continue
						}
						return
					}
					fl.last.Store(time.Now().UnixNano())
					pc.WriteToUDPAddrPort(rbuf[:nr], from)
				}
			})
			if !started {
				untrack()
				gc.Close()
				<-n.flows
				return
			}
		}
		fl.last.Store(time.Now().UnixNano())
		fl.gc.Write(buf[:nr])
	}
}
