package vmm

import (
	"io"

	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/bond"
	"github.com/viovmm/vio/netdev/firewall"
	"github.com/viovmm/vio/netdev/ids"
	"github.com/viovmm/vio/netdev/pcap"
	"github.com/viovmm/vio/netdev/socket"
	"github.com/viovmm/vio/netdev/usernet"
)

// backendStats returns the counters of the NIC back-end among a device's
// closers, one entry per layer of its stack that keeps counters (the
// firewall's per rule, the mirror's, the socket's ...), or nil.
func backendStats(owned []io.Closer) map[string]any {
	for _, c := range owned {
		if be, ok := c.(netdev.Backend); ok {
			if s := stackStats(be); len(s) > 0 {
				return s
			}
		}
	}
	return nil
}

func stackStats(be netdev.Backend) map[string]any {
	out := map[string]any{}
	for be != nil {
		switch b := be.(type) {
		case *pcap.Mirror:
			out["pcap"], be = b.Stats(), b.Inner
		case *ids.Hook:
			out["ids"], be = b.Stats(), b.Inner
		case *firewall.Firewall:
			out["firewall"], be = b.Stats(), b.Inner
		case *socket.Conn:
			out["socket"], be = b.Stats(), nil
		case *bond.Bond:
			out["bond"], be = b.Stats(), nil
		case *usernet.Net:
			out["user"], be = b.Stats(), nil
		default:
			be = nil
		}
	}
	return out
}
