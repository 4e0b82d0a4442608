package vmm

import (
	"errors"
	"fmt"
	stdnet "net"

	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/devices/virtio/vhostnet"
	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/tap"
	"github.com/viovmm/vio/virtio"
)

// newVhostNetNIC builds a virtio NIC whose receive and transmit queues
// the kernel's vhost-net serves on the TAP n names (docs/network.md,
// "vhost-net"). The TAP is opened as for any virtio NIC: under a handoff
// that a migration uses, or from the descriptors the API passed.
func (v *VM) newVhostNetNIC(n config.Net) (virtio.Device, error) {
	if v.iommu != nil {
		return nil, errors.New("a vhost=on NIC cannot sit behind the emulated IOMMU (the kernel would get I/O virtual addresses it cannot translate): start the VM without iommu, or drop vhost=on")
	}
	var bes []netdev.Backend
	var taps func() []vhostnet.TAP
	if len(n.TapFDs) > 0 {
		var err error
		if bes, err = v.tapsFromFDs(n); err != nil {
			return nil, err
		}
		fixed := tapsOf(bes)
		taps = func() []vhostnet.TAP { return fixed }
	} else {
		h, err := v.tapHandoff(n)
		if err != nil {
			return nil, err
		}
		bes = h.Queues()
		for _, be := range bes {
			v.closers = append(v.closers, be)
		}
		taps = func() []vhostnet.TAP { return tapsOf(h.Inner()) }
	}
	var mac stdnet.HardwareAddr
	if n.MAC != "" {
		m, err := config.ParseMAC(n.MAC)
		if err != nil {
			return nil, err
		}
		mac = m[:]
	}
	dev, err := vhostnet.New(vhostnet.Config{
		MAC: mac, QueueSize: uint16(n.QueueSize), Memory: v.mem, Backends: bes, TAPs: taps,
		// A restored VM's, or a migration's destination's: its rings
		// start once the state is restored and the TAP attached
		// (takeVhostUser).
		Deferred: v.vhostDeferred,
		Log:      v.log.With("net", n.ID),
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", netName(n), err)
	}
	// Closers run in reverse: the device's goes before its TAP's.
	v.closers = append(v.closers, dev)
	return dev, nil
}

// tapsOf returns the TAP queues among bes, or nil if one is not a TAP
// (nothing attached).
func tapsOf(bes []netdev.Backend) []vhostnet.TAP {
	if len(bes) == 0 {
		return nil
	}
	out := make([]vhostnet.TAP, 0, len(bes))
	for _, be := range bes {
		t, ok := be.(*tap.Tap)
		if !ok {
			return nil
		}
		out = append(out, t)
	}
	return out
}
