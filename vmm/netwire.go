package vmm

import (
	"fmt"

	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/firewall"
	"github.com/viovmm/vio/netdev/pcap"
)

// interpose stacks the interposers a NIC's config asks for on be, from
// the back-end up: the firewall, then the pcap mirror (docs/network.md
// says why). Each closes what it wraps.
func (v *VM) interpose(n config.Net, be netdev.Backend) (netdev.Backend, error) {
	if n.Firewall != "" {
		rs, err := firewall.Load(n.Firewall)
		if err != nil {
			return nil, err
		}
		be = firewall.New(be, rs)
	}
	if n.IDS != "" {
		return nil, fmt.Errorf("ids= is not available yet")
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
