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

// netBackend opens what carries a NIC's frames: the TAP it names (under
// a handoff that a migration uses, for a virtio NIC), a user-mode network
// of its own or a stream socket, with the interposers its config asks for
// on top. The VM closes it after the device.
func (v *VM) netBackend(n config.Net) (netdev.Backend, error) {
	be, err := v.netBase(n)
	if err != nil {
		return nil, err
	}
	// The interposers close what they wrap: the VM closes the top.
	top, err := v.interpose(n, be)
	if err != nil {
		return nil, err
	}
	v.closers = append(v.closers, top)
	return top, nil
}

// netBase opens the back-end proper, without interposers.
func (v *VM) netBase(n config.Net) (netdev.Backend, error) {
	if n.Socket != "" {
		return socket.Dial(n.Socket, socketOptions)
	}
	if n.Bond != nil {
		return bondBackend(n.Bond, v.log)
	}
	if n.User == nil {
		if n.Model != config.NetE1000 {
			// A virtio NIC's TAP changes hands at a migration
			// (nethandoff.go); an e1000 cannot migrate.
			return v.tapNIC(n)
		}
		t, err := tap.Open(n.Tap)
		if err != nil {
			return nil, err
		}
		return t, nil
	}
	c, err := userNetConfig(n.User)
	if err != nil {
		return nil, err
	}
	u, err := usernet.New(c)
	if err != nil {
		return nil, err
	}
	return u, nil
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
	return c, nil
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
