package vmm

import (
	"fmt"

	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/firewall"
)

// interpose stacks the interposers a NIC's config asks for on be, the
// firewall nearest the back-end (docs/network.md gives the order). Each
// closes what it wraps.
func (v *VM) interpose(n config.Net, be netdev.Backend) (netdev.Backend, error) {
	if n.Firewall != "" {
		rs, err := firewall.Load(n.Firewall)
		if err != nil {
			return nil, err
		}
		be = firewall.New(be, rs)
	}
	if n.Pcap != "" || n.IDS != "" {
		return nil, fmt.Errorf("pcap= and ids= are not available yet")
	}
	return be, nil
}
