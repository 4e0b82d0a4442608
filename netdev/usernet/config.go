package usernet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Defaults, QEMU's slirp convention: a guest configured for QEMU's user
// networking finds the same addresses here.
var (
	DefaultPrefix = netip.MustParsePrefix("10.0.2.0/24")
)

// Host offsets inside the virtual network, as in QEMU: .2 is the gateway
// (and the host's loopback), .3 the DNS relay, .15 the guest.
const (
	gatewayHost = 2
	dnsHost     = 3
	guestHost   = 15
)

// Limits applied when Config leaves them zero.
const (
	DefaultMaxConns       = 256
	DefaultMaxUDPFlows    = 256
	DefaultDialTimeout    = 10 * time.Second
	DefaultUDPIdleTimeout = 60 * time.Second
	// outQueueLen bounds the frames waiting for the guest to read them:
	// a guest that stops reading loses frames, the stack does not grow.
	outQueueLen = 1024
	// mtu is the guest's IP MTU; the back-end offers no offloads, so
	// nothing larger crosses it in either direction (larger frames from a
	// guest are still accepted: the stack handles them).
	mtu = 1500
	// spliceBuf is the copy buffer of each direction of a connection.
	spliceBuf = 32 << 10
	// tcpBufMax bounds each TCP endpoint's send and receive buffers in
	// the stack, so MaxConns connections hold at most about
	// MaxConns × 2 × tcpBufMax bytes there.
	tcpBufMax = 256 << 10
	// maxInFlightSYN bounds connections being dialled at once (each
	// holds a goroutine until the host answers or DialTimeout passes).
	maxInFlightSYN = 64
)

// Config describes a user-mode network. The zero Config is QEMU's default:
// 10.0.2.0/24, gateway 10.0.2.2, DNS 10.0.2.3, guest 10.0.2.15, the host's
// resolver from /etc/resolv.conf, no port forwards.
type Config struct {
	// Prefix is the virtual IPv4 network (at most /27, so the guest's
	// .15 fits); the zero value means DefaultPrefix.
	Prefix netip.Prefix
	// MAC is the gateway's Ethernet address; nil means 52:55 followed
	// by the gateway's IPv4 address, as QEMU does.
	MAC net.HardwareAddr
	// DNSUpstream is where the DNS relay sends the guest's queries; the
	// zero value means the first nameserver in ResolvConf.
	DNSUpstream netip.AddrPort
	// ResolvConf is read when DNSUpstream is zero; "" means
	// /etc/resolv.conf.
	ResolvConf string
	// HostFwds are the host→guest port forwards.
	HostFwds []HostFwd
	// Limits; zero means the Default* value.
	MaxConns       int           // TCP connections (outbound and forwarded) at once
	MaxUDPFlows    int           // UDP flows (outbound and forwarded) at once
	DialTimeout    time.Duration // for connecting to a host destination or the guest
	UDPIdleTimeout time.Duration // a UDP flow with no traffic this long ends
}

// addrs are the derived addresses of a network.
type addrs struct {
	prefix                netip.Prefix
	gateway, dns, guest   netip.Addr
	broadcast             netip.Addr
	mask                  [4]byte
	gatewayMAC            net.HardwareAddr
	upstream              netip.AddrPort // zero: no DNS relay
	upstreamErr           error          // why there is none
	maxConns, maxUDPFlows int
	dialTimeout, udpIdle  time.Duration
}

func (c Config) resolve() (addrs, error) {
	var a addrs
	p := c.Prefix
	if !p.IsValid() {
		p = DefaultPrefix
	}
	p = p.Masked()
	if !p.Addr().Is4() {
		return a, fmt.Errorf("usernet: network %s is not IPv4: give an IPv4 network such as 10.0.2.0/24", p)
	}
	if p.Bits() > 27 || p.Bits() < 8 {
		return a, fmt.Errorf("usernet: network %s: the prefix length must be between 8 and 27 so that the guest's .15 fits", p)
	}
	a.prefix = p
	base := p.Addr().As4()
	at := func(off uint32) netip.Addr {
		v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
		v += off
		return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	a.gateway, a.dns, a.guest = at(gatewayHost), at(dnsHost), at(guestHost)
	a.broadcast = at(1<<(32-p.Bits()) - 1)
	m := ^uint32(0) << (32 - p.Bits())
	a.mask = [4]byte{byte(m >> 24), byte(m >> 16), byte(m >> 8), byte(m)}
	if c.MAC != nil {
		if len(c.MAC) != 6 || c.MAC[0]&1 != 0 {
			return a, fmt.Errorf("usernet: gateway MAC %s is not a unicast Ethernet address", c.MAC)
		}
		a.gatewayMAC = append(net.HardwareAddr(nil), c.MAC...)
	} else {
		g := a.gateway.As4()
		a.gatewayMAC = net.HardwareAddr{0x52, 0x55, g[0], g[1], g[2], g[3]}
	}
	if c.DNSUpstream.IsValid() {
		a.upstream = c.DNSUpstream
	} else {
		path := c.ResolvConf
		if path == "" {
			path = "/etc/resolv.conf"
		}
		a.upstream, a.upstreamErr = readResolvConf(path)
	}
	a.maxConns = orDefault(c.MaxConns, DefaultMaxConns)
	a.maxUDPFlows = orDefault(c.MaxUDPFlows, DefaultMaxUDPFlows)
	a.dialTimeout = orDefault(c.DialTimeout, DefaultDialTimeout)
	a.udpIdle = orDefault(c.UDPIdleTimeout, DefaultUDPIdleTimeout)
	for i, f := range c.HostFwds {
		if !f.Host.IsValid() || !f.Host.Addr().Is4() {
			return a, fmt.Errorf("usernet: hostfwd %d: host address %s is not IPv4", i, f.Host)
		}
		if f.Guest.Port() == 0 {
			return a, fmt.Errorf("usernet: hostfwd %d: guest port 0", i)
		}
		if g := f.Guest.Addr(); g.IsValid() && !g.IsUnspecified() && !p.Contains(g) {
			return a, fmt.Errorf("usernet: hostfwd %s: guest address %s is outside the network %s", f, g, p)
		}
	}
	return a, nil
}

func orDefault[T int | time.Duration](v, d T) T {
	if v <= 0 {
		return d
	}
	return v
}

// HostFwd is one port forward: connections (TCP) or datagrams (UDP) to
// Host on the host are carried to Guest in the guest, appearing to come
// from the gateway address.
type HostFwd struct {
	UDP   bool
	Host  netip.AddrPort // address 0.0.0.0: all of the host's addresses; port 0: any free port
	Guest netip.AddrPort // address unset or 0.0.0.0: the guest's DHCP address
}

// String formats f in QEMU's hostfwd syntax.
func (f HostFwd) String() string {
	proto := "tcp"
	if f.UDP {
		proto = "udp"
	}
	host, guest := "", ""
	if a := f.Host.Addr(); a.IsValid() && !a.IsUnspecified() {
		host = a.String()
	}
	if a := f.Guest.Addr(); a.IsValid() && !a.IsUnspecified() {
		guest = a.String()
	}
	return fmt.Sprintf("%s:%s:%d-%s:%d", proto, host, f.Host.Port(), guest, f.Guest.Port())
}

// HostFwdSeparator separates several forwards in one hostfwd= value: a
// comma already separates the keys of --net.
const HostFwdSeparator = "+"

// ParseHostFwds parses forwards in QEMU's syntax,
// [tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport, several joined by
// HostFwdSeparator.
func ParseHostFwds(s string) ([]HostFwd, error) {
	var out []HostFwd
	for _, part := range strings.Split(s, HostFwdSeparator) {
		f, err := ParseHostFwd(part)
		if err != nil {
			return nil, err
		}
		out = append(out, f)
	}
	return out, nil
}

// ParseHostFwd parses one forward, [tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport.
func ParseHostFwd(s string) (HostFwd, error) {
	var f HostFwd
	bad := func(why string) (HostFwd, error) {
		return f, fmt.Errorf("hostfwd %q: %s: want [tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport, e.g. tcp:127.0.0.1:2222-:22", s, why)
	}
	rest := s
	if proto, r, ok := strings.Cut(s, ":"); ok {
		switch proto {
		case "tcp", "":
			rest = r
		case "udp":
			f.UDP, rest = true, r
		default:
			return bad("protocol " + strconv.Quote(proto) + " is neither tcp nor udp")
		}
	} else {
		return bad("no colon")
	}
	hostPart, guestPart, ok := strings.Cut(rest, "-")
	if !ok {
		return bad("no '-' between the host and the guest side")
	}
	var err error
	if f.Host, err = parseSide(hostPart, true); err != nil {
		return bad("host side: " + err.Error())
	}
	if f.Guest, err = parseSide(guestPart, false); err != nil {
		return bad("guest side: " + err.Error())
	}
	if f.Guest.Port() == 0 {
		return bad("guest port 0")
	}
	return f, nil
}

// parseSide parses [addr]:port. An empty address is 0.0.0.0.
func parseSide(s string, portZeroOK bool) (netip.AddrPort, error) {
	i := strings.LastIndex(s, ":")
	if i < 0 {
		return netip.AddrPort{}, errors.New("no ':' before the port")
	}
	host, port := s[:i], s[i+1:]
	addr := netip.IPv4Unspecified()
	if host != "" {
		a, err := netip.ParseAddr(host)
		if err != nil || !a.Is4() {
			return netip.AddrPort{}, fmt.Errorf("%q is not an IPv4 address", host)
		}
		addr = a
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || (p == 0 && !portZeroOK) {
		return netip.AddrPort{}, fmt.Errorf("port %q is not a number from 1 to 65535", port)
	}
	return netip.AddrPortFrom(addr, uint16(p)), nil
}
