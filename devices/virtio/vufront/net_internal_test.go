package vufront

import (
	"testing"

	virtionet "github.com/viovmm/vio/devices/virtio/net"
	"github.com/viovmm/vio/virtio"
)

// TestNetDependencies: offloads whose required features a back-end does
// not offer are not presented to the guest; the rest pass unchanged.
func TestNetDependencies(t *testing.T) {
	const (
		csum, gcsum   = virtionet.FeatureCsum, virtionet.FeatureGuestCsum
		htso4, htso6  = virtionet.FeatureHostTSO4, virtionet.FeatureHostTSO6
		hecn, hufo    = virtionet.FeatureHostECN, virtionet.FeatureHostUFO
		gtso4, gtso6  = virtionet.FeatureGuestTSO4, virtionet.FeatureGuestTSO6
		gecn, gufo    = virtionet.FeatureGuestECN, virtionet.FeatureGuestUFO
		mrg, version1 = virtionet.FeatureMrgRxbuf, virtio.FeatureVersion1
	)
	for _, c := range []struct {
		name     string
		in, want uint64
	}{
		// DPDK 22.11's net_vhost by default (tso=0): no host TSO, yet HOST_ECN.
		{"net_vhost tso=0", csum | gcsum | gtso4 | gtso6 | gecn | gufo | hecn | hufo | mrg | version1,
			csum | gcsum | gtso4 | gtso6 | gecn | gufo | hufo | mrg | version1},
		{"everything", csum | gcsum | htso4 | htso6 | hecn | hufo | gtso4 | gtso6 | gecn | gufo,
			csum | gcsum | htso4 | htso6 | hecn | hufo | gtso4 | gtso6 | gecn | gufo},
		{"no checksum offload", htso4 | htso6 | hecn | hufo | gtso4 | gtso6 | gecn | gufo | mrg, mrg},
		{"one direction", gcsum | gtso6 | gecn | htso4 | hecn, gcsum | gtso6 | gecn},
		{"ECN alone", csum | gcsum | hecn | gecn, csum | gcsum},
	} {
		if got := netDependencies(c.in); got != c.want {
			t.Errorf("%s: %#x gives %#x, want %#x", c.name, c.in, got, c.want)
		}
	}
}
