package vufront

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"

	virtionet "github.com/viovmm/vio/devices/virtio/net"
	"github.com/viovmm/vio/virtio"
)

// netFeatures are the virtio-net bits vio passes from a back-end to the
// guest: offloads and mergeable receive buffers. No control queue (and so
// no MQ, no GUEST_ANNOUNCE, no MAC filtering): the device has one queue
// pair, receive 0 and transmit 1, both the back-end's.
const netFeatures = virtionet.FeatureCsum | virtionet.FeatureGuestCsum |
	virtionet.FeatureGuestTSO4 | virtionet.FeatureGuestTSO6 | virtionet.FeatureGuestECN | virtionet.FeatureGuestUFO |
	virtionet.FeatureHostTSO4 | virtionet.FeatureHostTSO6 | virtionet.FeatureHostECN | virtionet.FeatureHostUFO |
	virtionet.FeatureMrgRxbuf

// netConfigFeatures are vio's own: the configuration space it serves.
const netConfigFeatures = virtionet.FeatureMAC | virtionet.FeatureStatus

// learnNet decides a NIC's view: the back-end's features vio presents, and
// a configuration space of vio's (mac, status: link up,
// max_virtqueue_pairs 1).
func (d *Device) learnNet() error {
	mac := d.cfg.MAC
	if mac == nil {
		mac = make([]byte, 6)
		if _, err := rand.Read(mac); err != nil {
			return err
		}
		mac[0] = mac[0]&^1 | 2 // unicast, locally administered
	}
	if len(mac) != 6 {
		return fmt.Errorf("MAC %v is not 6 bytes", mac)
	}
	cfg := make([]byte, 10)
	copy(cfg, mac)
	binary.LittleEndian.PutUint16(cfg[6:], 1) // VIRTIO_NET_S_LINK_UP
	binary.LittleEndian.PutUint16(cfg[8:], 1)
	d.config = cfg
	d.features = netDependencies(d.offered&(d.typeFeatures()|ringFeatures)) | netConfigFeatures
	d.maxSizes = []uint16{d.cfg.QueueSize, d.cfg.QueueSize}
	return nil
}

func kindOf(t virtio.DeviceType) string {
	if t == virtio.TypeNet {
		return "NIC"
	}
	return "disk"
}

// typeFeatures are the device-type bits vio passes through.
func (d *Device) typeFeatures() uint64 {
	if d.cfg.Type == virtio.TypeNet {
		return netFeatures
	}
	return blkFeatures
}

// netDependencies drops from a NIC's offer the offloads whose required
// features are missing (virtio 1.2, 5.1.3.1): a device must not offer a
// feature without those it requires. Back-ends' offers can break the
// rule (DPDK's net_vhost withholds the host TSO bits unless given tso=1
// but keeps HOST_ECN); vio presents the device and keeps it.
func netDependencies(f uint64) uint64 {
	if f&virtionet.FeatureCsum == 0 {
		f &^= virtionet.FeatureHostTSO4 | virtionet.FeatureHostTSO6 | virtionet.FeatureHostUFO
	}
	if f&(virtionet.FeatureHostTSO4|virtionet.FeatureHostTSO6) == 0 {
		f &^= virtionet.FeatureHostECN
	}
	if f&virtionet.FeatureGuestCsum == 0 {
		f &^= virtionet.FeatureGuestTSO4 | virtionet.FeatureGuestTSO6 | virtionet.FeatureGuestUFO
	}
	if f&(virtionet.FeatureGuestTSO4|virtionet.FeatureGuestTSO6) == 0 {
		f &^= virtionet.FeatureGuestECN
	}
	return f
}
