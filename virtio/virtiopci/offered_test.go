package virtiopci

import (
	"testing"

	"github.com/viovmm/vio/virtio"
)

type featuresOnly struct{ virtio.Device }

func (featuresOnly) Features() uint64 { return 1 << 5 }

// TestAccessPlatformOffered: VIRTIO_F_ACCESS_PLATFORM is offered exactly
// when the transport sits behind an IOMMU (Options.AccessPlatform), beside
// the device's and the transport's own features.
func TestAccessPlatformOffered(t *testing.T) {
	if f := offered(featuresOnly{}, Options{}); f&virtio.FeatureAccessPlatform != 0 || f&(1<<5) == 0 {
		t.Errorf("without an IOMMU: offered %#x", f)
	}
	f := offered(featuresOnly{}, Options{AccessPlatform: true})
	if f&virtio.FeatureAccessPlatform == 0 || f&virtio.TransportFeatures != virtio.TransportFeatures || f&(1<<5) == 0 {
		t.Errorf("behind an IOMMU: offered %#x", f)
	}
}
