package vmm

import (
	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/netdev"
)

// interpose stacks the interposers a NIC's config asks for on be
// (docs/network.md gives the order). Each is closed by the VM after the
// device, before what it wraps.
func (v *VM) interpose(n config.Net, be netdev.Backend) (netdev.Backend, error) {
	return be, nil
}
