package vmm

import (
	"fmt"

	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/virtio"

	"github.com/viovmm/vio/devices/virtio/vsock"
)

// addVsock adds the virtio-vsock device the config asks for, listening on
// its hybrid-vsock socket (docs/vsock.md). Like disks and NICs it is in
// the hot-plug registry, so vm.remove-device can take it away.
func (v *VM) addVsock() error {
	c := v.cfg.Vsock
	if c == nil {
		return nil
	}
	_, err := v.plugVsock("vsock", c)
	return err
}

// plugVsock builds a vsock device and puts it on the bus (boot or hot
// plug). The device owns its socket: it closes when the device goes.
func (v *VM) plugVsock(name string, c *config.Vsock) (*pciDevice, error) {
	return v.plug(name, c.ID, func() (virtio.Device, error) {
		dev, err := vsock.New(vsock.Config{CID: uint64(c.CID), Socket: c.Socket})
		if err != nil {
			return nil, fmt.Errorf("vsock: %w", err)
		}
		v.closers = append(v.closers, dev)
		return dev, nil
	})
}
