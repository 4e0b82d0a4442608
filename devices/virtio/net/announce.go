package net

import (
	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/frame"
)

// SelfAnnounce sends a Reverse ARP broadcast from the device's MAC address
// (frame.RARP) out of its first back-end, as if the guest had sent it,
// so that the learning switches on the link (a host bridge) move the
// address to this NIC's port. A standby takes over its primary's
// traffic with it: the guest itself has nothing to send while the
// frames meant for it still go to the primary's port, which nobody
// reads any more. It goes between two of the guest's batches; with the
// back-end detached (a migration's switchover) it waits for the next
// attach, so call it while the VM runs.
func (d *Device) SelfAnnounce() error {
	pkt := append(make([]byte, netdev.HeaderSize), frame.RARP(d.macBytes())...)
	d.wmu[0].Lock()
	defer d.wmu[0].Unlock()
	_, err := d.bes[0].WriteFrames([][][]byte{{pkt}})
	return err
}
