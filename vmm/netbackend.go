package vmm

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/socket"
	"github.com/viovmm/vio/netdev/tap"
	"github.com/viovmm/vio/netdev/usernet"
)

// netBackends opens what carries a NIC's frames, one back-end per queue
// pair: the TAP it names (under a handoff that a migration uses, for a
// virtio NIC; one queue per pair), a user-mode network of its own or a
// stream socket, with the interposers its config asks for on top. The VM
// closes them after the device. Only a TAP has several queues, and then
// no interposers (config.Net.Validate).
func (v *VM) netBackends(n config.Net) ([]netdev.Backend, error) {
	bes, err := v.netBase(n)
	if err != nil {
		return nil, err
	}
	if len(bes) > 1 {
		for _, be := range bes {
			v.closers = append(v.closers, be)
		}
		return bes, nil
	}
	// The interposers close what they wrap: the VM closes the top.
	top, err := v.interpose(n, bes[0])
	if err != nil {
		return nil, err
	}
	v.closers = append(v.closers, top)
	return []netdev.Backend{top}, nil
}

// netBase opens the back-ends proper, without interposers.
func (v *VM) netBase(n config.Net) ([]netdev.Backend, error) {
	one := func(be netdev.Backend, err error) ([]netdev.Backend, error) {
		if err != nil {
			return nil, err
		}
		return []netdev.Backend{be}, nil
	}
	if n.Socket != "" {
		return one(socket.Dial(n.Socket, socketOptions))
	}
	if n.Bond != nil {
		return one(bondBackend(n.Bond, v.log))
	}
	if n.User == nil {
		if n.Model != config.NetE1000 {
			// A virtio NIC's TAP changes hands at a migration
			// (nethandoff.go); an e1000 cannot migrate.
			return v.tapNIC(n)
		}
		return one(tap.Open(n.Tap))
	}
	c, err := userNetConfig(n.User)
	if err != nil {
		return nil, err
	}
	return one(usernet.New(c))
}

// userNetConfig turns the config's user-mode network into the back-end's
// Config.
func userNetConfig(u *config.UserNet) (usernet.Config, error) {
	var c usernet.Config
	if u.Net != "" {
		p, err := netip.ParsePrefix(u.Net)
		if err != nil {
			return c, fmt.Errorf("user network %q is not an address/length such as 10.0.2.0/24", u.Net)
		}
		c.Prefix = p
	}
	for _, s := range u.HostFwd {
		f, err := usernet.ParseHostFwd(s)
		if err != nil {
			return c, err
		}
		c.HostFwds = append(c.HostFwds, f)
	}
	if u.DNSUpstream != "" {
		up, err := parseDNSUpstream(u.DNSUpstream)
		if err != nil {
			return c, err
		}
		c.DNSUpstream = up
	}
	return c, nil
}

// parseDNSUpstream reads dns_upstream=: an IP address, with a port or
// not (53).
func parseDNSUpstream(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil && ap.Port() != 0 {
		return ap, nil
	}
	if a, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
		return netip.AddrPortFrom(a, 53), nil
	}
	return netip.AddrPort{}, fmt.Errorf("dns_upstream %q is not an IP address with an optional port, such as 192.0.2.53 or 192.0.2.53:5353 ([2001:db8::53]:53 for IPv6)", s)
}

// netName describes a NIC's back-end in error messages.
func netName(n config.Net) string {
	if n.VhostUser {
		return "vhost-user " + n.VhostSocket
	}
	if n.User != nil {
		return "user-mode network"
	}
	if n.Socket != "" {
		return "socket " + n.Socket
	}
	if n.Bond != nil {
		return "bond of " + strings.Join(n.Bond.Sockets, ", ")
	}
	return "tap " + n.Tap
}
