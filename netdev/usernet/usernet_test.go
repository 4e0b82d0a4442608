package usernet_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/usernet"
)

var (
	gw    = netip.MustParseAddr("10.0.2.2")
	dns   = netip.MustParseAddr("10.0.2.3")
	guest = netip.MustParseAddr("10.0.2.15")
)

// newNet starts a user-mode network whose DNS relay goes to upstream (a
// test server; an unused address when the test needs none).
func newNet(t *testing.T, c usernet.Config) *usernet.Net {
	t.Helper()
	if !c.DNSUpstream.IsValid() {
		c.DNSUpstream = netip.MustParseAddrPort("127.0.0.1:9")
	}
	n, err := usernet.New(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// exchange sends out over c, half-closes, and returns the hash of all
// that comes back, checking it against want.
func exchange(t *testing.T, c interface {
	io.ReadWriter
	CloseWrite() error
}, out []byte) [32]byte {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		if _, err := c.Write(out); err != nil {
			errc <- err
			return
		}
		errc <- c.CloseWrite()
	}()
	h := sha256.New()
	if _, err := io.Copy(h, c); err != nil {
		t.Fatalf("reading: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("writing: %v", err)
	}
	return [32]byte(h.Sum(nil))
}

// serveHashAndReply reads a connection to its end, reports the hash of
// what came, then sends reply and closes.
func serveHashAndReply(c net.Conn, reply []byte, got chan<- [32]byte) {
	defer c.Close()
	h := sha256.New()
	if _, err := io.Copy(h, c); err != nil {
		close(got)
		return
	}
	got <- [32]byte(h.Sum(nil))
	c.Write(reply)
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// TestTCPToHostThroughGateway: a guest connection to the gateway reaches a
// listener on the host's loopback; 1 MiB each way arrives intact, and the
// guest's half-close reaches the host as an end of stream.
func TestTCPToHostThroughGateway(t *testing.T) {
	n := newNet(t, usernet.Config{})
	g := newGuest(t, n)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	up, down := randBytes(1<<20), randBytes(1<<20+7)
	got := make(chan [32]byte, 1)
	peer := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(got)
			return
		}
		peer <- c.RemoteAddr().String()
		serveHashAndReply(c, down, got)
	}()
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := gonet.DialContextTCP(ctx, g.s, fullAddr(netip.AddrPortFrom(gw, port)), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	back := exchange(t, c, up)
	if h, ok := <-got; !ok || h != sha256.Sum256(up) {
		t.Errorf("host got %x, guest sent %x", h, sha256.Sum256(up))
	}
	if back != sha256.Sum256(down) {
		t.Errorf("guest got %x, host sent %x", back, sha256.Sum256(down))
	}
	if p := <-peer; !strings.HasPrefix(p, "127.0.0.1:") {
		t.Errorf("host saw the connection from %s, want the loopback", p)
	}
	if s := n.Stats(); s.TCPConns != 1 || s.FramesIn == 0 || s.FramesOut == 0 {
		t.Errorf("stats %+v", s)
	}
}

// TestTCPRefused: a destination nobody listens on, an address of the
// virtual network that is nobody's, and a port of the DNS relay other
// than 53 are all refused with a reset, promptly.
func TestTCPRefused(t *testing.T) {
	n := newNet(t, usernet.Config{})
	g := newGuest(t, n)
	ln, _ := net.Listen("tcp4", "127.0.0.1:0")
	closedPort := uint16(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	for _, dst := range []netip.AddrPort{
		netip.AddrPortFrom(gw, closedPort),
		netip.MustParseAddrPort("10.0.2.4:80"),
		netip.MustParseAddrPort("10.0.2.3:80"),
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := gonet.DialContextTCP(ctx, g.s, fullAddr(dst), ipv4.ProtocolNumber)
		cancel()
		if err == nil {
			c.Close()
			t.Errorf("%s: connected", dst)
			continue
		}
		if !strings.Contains(err.Error(), "refused") {
			t.Errorf("%s: %v, want connection refused", dst, err)
		}
	}
	if s := n.Stats(); s.Refused < 3 {
		t.Errorf("stats %+v: want 3 refused", s)
	}
}

// fakeDNS answers every datagram with "answer:" and the query, like a
// resolver that echoes; it stands for the host's resolver.
func fakeDNS(t *testing.T) netip.AddrPort {
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			nr, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			pc.WriteToUDPAddrPort(append([]byte("answer:"), buf[:nr]...), from)
		}
	}()
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// TestDNSRelay: a query to the DNS relay's port 53 reaches the configured
// upstream and its answer comes back to the guest's socket; a second
// query on the same flow too.
func TestDNSRelay(t *testing.T) {
	up := fakeDNS(t)
	n := newNet(t, usernet.Config{DNSUpstream: up})
	g := newGuest(t, n)
	c, err := gonet.DialUDP(g.s, nil, &tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(dns.As4()), Port: 53}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, q := range []string{"\x12\x34query-one", "\x56\x78query-two"} {
		if _, err := c.Write([]byte(q)); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 512)
		nr, err := c.Read(buf)
		if err != nil {
			t.Fatalf("query %q: %v", q, err)
		}
		if got := string(buf[:nr]); got != "answer:"+q {
			t.Fatalf("answer %q to %q", got, q)
		}
	}
	if s := n.Stats(); s.UDPFlows != 1 {
		t.Errorf("stats %+v: want one UDP flow", s)
	}
}

// TestUDPToHostIdle: a UDP flow to the gateway reaches a host socket, and
// the flow ends after the idle timeout, giving its slot back.
func TestUDPToHostIdle(t *testing.T) {
	up := fakeDNS(t) // an echo server will do
	n := newNet(t, usernet.Config{UDPIdleTimeout: 200 * time.Millisecond, MaxUDPFlows: 1})
	g := newGuest(t, n)
	ask := func(q string) error {
		c, err := gonet.DialUDP(g.s, nil, &tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(gw.As4()), Port: up.Port()}, ipv4.ProtocolNumber)
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Write([]byte(q)); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 512)
		nr, err := c.Read(buf)
		if err != nil {
			return err
		}
		if string(buf[:nr]) != "answer:"+q {
			return errors.New("wrong answer " + string(buf[:nr]))
		}
		return nil
	}
	if err := ask("first"); err != nil {
		t.Fatal(err)
	}
	// A second flow (another guest port) while the first holds the only
	// slot is dropped; once the first has been idle long enough, a new
	// one goes through.
	if err := ask("second"); err == nil {
		t.Fatal("a second flow got through with MaxUDPFlows 1")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := ask("third")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the first flow never timed out: %v", err)
		}
	}
	if s := n.Stats(); s.Limited == 0 || s.UDPFlows < 2 {
		t.Errorf("stats %+v", s)
	}
}

// TestHostFwdTCP: a host connection to a forward's port reaches a guest
// listener, appearing to come from the gateway; 1 MiB each way intact.
func TestHostFwdTCP(t *testing.T) {
	f, err := usernet.ParseHostFwds("tcp:127.0.0.1:0-:22")
	if err != nil {
		t.Fatal(err)
	}
	n := newNet(t, usernet.Config{HostFwds: f})
	g := newGuest(t, n)
	l, err := gonet.ListenTCP(g.s, tcpip.FullAddress{NIC: 1, Port: 22}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	up, down := randBytes(1<<20), randBytes(1<<20+3)
	got := make(chan [32]byte, 1)
	peer := make(chan string, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			close(got)
			return
		}
		peer <- c.RemoteAddr().String()
		serveHashAndReply(c, down, got)
	}()
	addrs := n.HostFwdAddrs()
	if len(addrs) != 1 {
		t.Fatalf("forward addresses %v", addrs)
	}
	c, err := net.DialTimeout("tcp", addrs[0].String(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	back := exchange(t, c.(*net.TCPConn), up)
	if h, ok := <-got; !ok || h != sha256.Sum256(up) {
		t.Errorf("guest got %x, host sent %x", h, sha256.Sum256(up))
	}
	if back != sha256.Sum256(down) {
		t.Errorf("host got %x, guest sent %x", back, sha256.Sum256(down))
	}
	if p := <-peer; !strings.HasPrefix(p, "10.0.2.2:") {
		t.Errorf("guest saw the connection from %s, want the gateway", p)
	}
}

// TestHostFwdUDP: datagrams to a UDP forward reach a guest socket, and its
// replies come back to the host sender.
func TestHostFwdUDP(t *testing.T) {
	f, err := usernet.ParseHostFwds("udp:127.0.0.1:0-:5353")
	if err != nil {
		t.Fatal(err)
	}
	n := newNet(t, usernet.Config{HostFwds: f})
	g := newGuest(t, n)
	gc, err := gonet.DialUDP(g.s, &tcpip.FullAddress{NIC: 1, Port: 5353}, nil, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer gc.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			nr, from, err := gc.ReadFrom(buf)
			if err != nil {
				return
			}
			gc.WriteTo(append([]byte("guest:"), buf[:nr]...), from)
		}
	}()
	hc, err := net.Dial("udp4", n.HostFwdAddrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	for _, q := range []string{"one", "two"} {
		hc.Write([]byte(q))
		hc.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 512)
		nr, err := hc.Read(buf)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		if string(buf[:nr]) != "guest:"+q {
			t.Fatalf("got %q", buf[:nr])
		}
	}
}

// TestConnLimit: with MaxConns 2, a third connection is refused while two
// are open, and goes through once one of them closes.
func TestConnLimit(t *testing.T) {
	n := newNet(t, usernet.Config{MaxConns: 2})
	g := newGuest(t, n)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	dst := fullAddr(netip.AddrPortFrom(gw, uint16(ln.Addr().(*net.TCPAddr).Port)))
	dial := func() (*gonet.TCPConn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return gonet.DialContextTCP(ctx, g.s, dst, ipv4.ProtocolNumber)
	}
	a, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	b, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if c, err := dial(); err == nil {
		c.Close()
		t.Fatal("third connection accepted with MaxConns 2")
	}
	a.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := dial()
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no slot freed after a close: %v", err)
		}
	}
	if s := n.Stats(); s.Limited == 0 {
		t.Errorf("stats %+v", s)
	}
}

// TestCloseEndsEverything: Close ends open connections (both sides see
// it), stops the forwards' listeners, fails later calls with ErrClosed and
// leaves no goroutine of the back-end behind.
func TestCloseEndsEverything(t *testing.T) {
	before := runtime.NumGoroutine()
	f, _ := usernet.ParseHostFwds("tcp:127.0.0.1:0-:22+udp:127.0.0.1:0-:53")
	n, err := usernet.New(usernet.Config{HostFwds: f, DNSUpstream: netip.MustParseAddrPort("127.0.0.1:9")})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	hostSide := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			hostSide <- c
		}
	}()
	gt := newGuestNoCleanup(t, n)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := gonet.DialContextTCP(ctx, gt.s, fullAddr(netip.AddrPortFrom(gw, uint16(ln.Addr().(*net.TCPAddr).Port))), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	hc := <-hostSide
	defer hc.Close()
	fwd := n.HostFwdAddrs()[0].String()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	hc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := hc.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("host side after Close: %v, want end of stream", err)
	}
	c.Close()
	if _, err := net.DialTimeout("tcp", fwd, time.Second); err == nil {
		t.Error("forward still listening after Close")
	}
	if _, err := n.WriteFrames([][][]byte{{make([]byte, 60)}}); !errors.Is(err, netdev.ErrClosed) {
		t.Errorf("WriteFrames after Close: %v", err)
	}
	if _, err := n.ReadFrames([][]byte{make([]byte, netdev.MaxPacketLen)}, []int{0}); !errors.Is(err, netdev.ErrClosed) {
		t.Errorf("ReadFrames after Close: %v", err)
	}
	if err := n.Close(); !errors.Is(err, netdev.ErrClosed) {
		t.Errorf("second Close: %v", err)
	}
	gt.stop()
	// Goroutines wind down asynchronously in the guest stack and the
	// runtime; poll for them, bounded.
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before+2 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines before, %d after Close:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		runtime.Gosched()
		time.Sleep(10 * time.Millisecond)
	}
}

// TestReadDeadline: the netdev.Backend contract for deadlines.
func TestReadDeadline(t *testing.T) {
	n := newNet(t, usernet.Config{})
	bufs, sizes := [][]byte{make([]byte, netdev.MaxPacketLen)}, []int{0}
	n.SetReadDeadline(time.Now().Add(-time.Second))
	if _, err := n.ReadFrames(bufs, sizes); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("past deadline: %v", err)
	}
	n.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() { _, err := n.ReadFrames(bufs, sizes); done <- err }()
	n.SetReadDeadline(time.Unix(1, 0))
	if err := <-done; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("moved deadline: %v", err)
	}
	n.SetReadDeadline(time.Time{})
	go func() { _, err := n.ReadFrames(bufs, sizes); done <- err }()
	n.Close()
	if err := <-done; !errors.Is(err, netdev.ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}

// TestBadPackets: packets too short, too long or with offload flags the
// back-end never offered get ErrHeader for that packet alone.
func TestBadPackets(t *testing.T) {
	n := newNet(t, usernet.Config{})
	hdr := make([]byte, netdev.HeaderSize)
	csum := make([]byte, netdev.HeaderSize)
	netdev.Header{Flags: netdev.FlagNeedsCsum, CsumStart: 34, CsumOffset: 16}.Encode(csum)
	for _, p := range [][][]byte{
		{hdr, make([]byte, 5)},
		{make([]byte, 3)},
		{hdr, make([]byte, netdev.MaxFrameLen+1)},
		{csum, make([]byte, 100)},
	} {
		cnt, err := n.WriteFrames([][][]byte{{hdr, make([]byte, 60)}, p, {hdr, make([]byte, 60)}})
		if cnt != 1 || !errors.Is(err, netdev.ErrHeader) {
			t.Errorf("%d %v", cnt, err)
		}
	}
	if s := n.Stats(); s.BadFrames != 4 {
		t.Errorf("stats %+v", s)
	}
}

func TestParseHostFwd(t *testing.T) {
	for _, c := range []struct {
		in, out string
		udp     bool
	}{
		{"tcp:127.0.0.1:2222-:22", "tcp:127.0.0.1:2222-:22", false},
		{"tcp::2222-:22", "tcp::2222-:22", false},
		{"::2222-10.0.2.15:22", "tcp::2222-10.0.2.15:22", false},
		{"udp::5353-:53", "udp::5353-:53", true},
		{"udp:0.0.0.0:0-10.0.2.16:53", "udp::0-10.0.2.16:53", true},
	} {
		f, err := usernet.ParseHostFwd(c.in)
		if err != nil {
			t.Errorf("%s: %v", c.in, err)
			continue
		}
		if f.String() != c.out || f.UDP != c.udp {
			t.Errorf("%s: %s %v", c.in, f, f.UDP)
		}
	}
	for _, bad := range []string{"", "tcp", "sctp::1-:2", "tcp:1.2.3.4:22", "tcp::22-:0", "tcp::x-:22",
		"tcp::70000-:22", "tcp:::1:22-:22", "tcp:host:22-:22", "tcp::22-:22-", "tcp::22:22", ":2222-10.0.2.15:22"} {
		if f, err := usernet.ParseHostFwd(bad); err == nil {
			t.Errorf("%q accepted: %s", bad, f)
		}
	}
	fs, err := usernet.ParseHostFwds("tcp:127.0.0.1:2222-:22+udp::5353-:53")
	if err != nil || len(fs) != 2 || !fs[1].UDP {
		t.Errorf("two forwards: %v %v", fs, err)
	}
	if _, err := usernet.ParseHostFwds("tcp::1-:2+"); err == nil {
		t.Error("empty forward accepted")
	}
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []usernet.Config{
		{Prefix: netip.MustParsePrefix("10.0.0.0/28")},
		{Prefix: netip.MustParsePrefix("fd00::/64")},
		{MAC: net.HardwareAddr{1, 2, 3, 4, 5, 6}},
		{HostFwds: []usernet.HostFwd{{Host: netip.MustParseAddrPort("0.0.0.0:1"), Guest: netip.MustParseAddrPort("192.168.1.1:22")}}},
	} {
		if n, err := usernet.New(c); err == nil {
			n.Close()
			t.Errorf("%+v accepted", c)
		}
	}
	// Another network: the addresses follow it.
	n := newNet(t, usernet.Config{Prefix: netip.MustParsePrefix("192.168.76.0/24")})
	if n.Gateway().String() != "192.168.76.2" || n.DNS().String() != "192.168.76.3" || n.Guest().String() != "192.168.76.15" {
		t.Errorf("addresses %s %s %s", n.Gateway(), n.DNS(), n.Guest())
	}
	if !bytes.Equal(n.GatewayMAC(), net.HardwareAddr{0x52, 0x55, 192, 168, 76, 2}) {
		t.Errorf("gateway MAC %s", n.GatewayMAC())
	}
	// A forward whose host port is taken fails New with a clear error.
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, _ := usernet.ParseHostFwd("tcp:" + ln.Addr().String() + "-:22")
	if n, err := usernet.New(usernet.Config{HostFwds: []usernet.HostFwd{f}}); err == nil {
		n.Close()
		t.Error("forward on a taken port accepted")
	} else if !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("taken port: %v", err)
	}
}
