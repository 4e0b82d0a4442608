package vmm

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/bond"
	"github.com/viovmm/vio/netdev/firewall"
	"github.com/viovmm/vio/netdev/ids"
	"github.com/viovmm/vio/netdev/pcap"
	"github.com/viovmm/vio/netdev/socket"
)

// interpose stacks the interposers a NIC's config asks for on be, from
// the back-end up: the firewall, the IDS hook, then the pcap mirror, so
// the mirror shows what the guest sent and received, and the inspector
// sees what the firewall let in (docs/network.md). Each closes what it
// wraps.
//
// On an error it closes be and whatever it built on it.
func (v *VM) interpose(n config.Net, be netdev.Backend) (top netdev.Backend, err error) {
	defer func() {
		if err != nil {
			be.Close()
		}
	}()
	if n.Firewall != "" {
		rs, err := firewall.Load(n.Firewall)
		if err != nil {
			return nil, err
		}
		be = firewall.New(be, rs)
	}
	if n.IDS != "" {
		mode := ids.Monitor
		if n.IDSMode == "ips" {
			mode = ids.Prevent
		}
		h, err := ids.Dial(be, n.IDS, ids.Options{Mode: mode})
		if err != nil {
			return nil, err
		}
		be = h
	}
	if n.Pcap != "" {
		m, err := pcap.Open(be, n.Pcap)
		if err != nil {
			return nil, err
		}
		be = m
	}
	return be, nil
}

// socketOptions: a socket NIC redials its peer (a restarted switch) each
// second; the guest sees a cable pulled and plugged back.
var socketOptions = socket.Options{Reconnect: time.Second}

// bondMemberOptions: a bond's member may also start down (its switch is
// away when the VM starts, or when a guest reboot rebuilds the NIC): the
// bond runs on the others meanwhile, which is what it is for.
var bondMemberOptions = socket.Options{Reconnect: time.Second, StartDown: true}

// bondBackend joins the sockets of a bonded NIC. A failover is logged
// (a warning): the NIC goes on, but a link has gone.
func bondBackend(b *config.NetBond, log *slog.Logger) (netdev.Backend, error) {
	mode, err := bond.ParseMode(b.Mode)
	if err != nil {
		return nil, err
	}
	var members []netdev.Backend
	var down []string
	closeAll := func() {
		for _, m := range members {
			m.Close()
		}
	}
	for _, path := range b.Sockets {
		s, err := socket.Dial(path, bondMemberOptions)
		if err != nil {
			closeAll()
			return nil, err
		}
		members = append(members, s)
		if !s.Up() {
			down = append(down, path)
		}
	}
	if len(down) == len(members) {
		closeAll()
		return nil, fmt.Errorf("bond: no member socket could be connected (%s)", strings.Join(down, ", "))
	}
	for _, path := range down {
		log.Warn("NIC bond member could not be connected; redialling it every second", "socket", path)
	}
	sockets := slices.Clone(b.Sockets)
	return bond.New(members, bond.Options{Mode: mode, OnFailover: func(from, to int) {
		log.Warn("NIC bond failed over to another member", "from", sockets[from], "to", sockets[to])
	}})
}
