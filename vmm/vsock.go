package vmm

import (
	"fmt"

	"github.com/viovmm/vio/devices/virtio/vsock"
)

// addVsock adds the virtio-vsock device the config asks for, listening on
// its hybrid-vsock socket (docs/vsock.md).
func (v *VM) addVsock() error {
	c := v.cfg.Vsock
	if c == nil {
		return nil
	}
	dev, err := vsock.New(vsock.Config{CID: uint64(c.CID), Socket: c.Socket})
	if err != nil {
		return fmt.Errorf("vsock: %w", err)
	}
	// Closers run in reverse: the device is reset (addVirtio's closer)
	// before its socket closes.
	v.closers = append(v.closers, dev)
	return v.addVirtio("vsock", dev)
}
