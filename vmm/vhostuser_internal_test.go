package vmm

import (
	"errors"
	"strings"
	"testing"

	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/virtiopci"
)

// handoffStub stands for a vhost-user device (vufront needs a back-end).
type handoffStub struct{}

func (handoffStub) Type() virtio.DeviceType                         { return virtio.TypeBlock }
func (handoffStub) Features() uint64                                { return virtio.FeatureVersion1 }
func (handoffStub) QueueMaxSizes() []uint16                         { return []uint16{128} }
func (handoffStub) ReadConfig(uint64, []byte)                       {}
func (handoffStub) WriteConfig(uint64, []byte)                      {}
func (handoffStub) Activate(*virtio.Activation) error               { return errors.New("no") }
func (handoffStub) Reset()                                          {}
func (handoffStub) KickFD(int) int                                  { return -1 }
func (handoffStub) Kick(int)                                        {}
func (handoffStub) InterruptsChanged()                              {}
func (handoffStub) ActivateHandoff(*virtio.HandoffActivation) error { return nil }

// A VM with a vhost-user device refuses snapshots and migration with one
// sentence naming the device and saying why.
func TestVhostUserNotSaveable(t *testing.T) {
	mem, err := memory.New([]memory.Layout{{GPA: 0, Size: 1 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	tr, err := virtiopci.New(handoffStub{}, mem, virtiopci.Options{})
	if err != nil {
		t.Fatal(err)
	}
	v := &VM{pciDevices: []*pciDevice{{name: "disk0", dev: handoffStub{}, transport: tr}}}
	for _, verb := range []string{"snapshot", "migrate"} {
		err := v.checkSaveable(verb, "to "+verb)
		if !errors.Is(err, ErrNotSaveable) || !strings.Contains(err.Error(), "disk0 (virtio-blk) is served by a vhost-user back-end") ||
			strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v", verb, err)
		}
	}
}
