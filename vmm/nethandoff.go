package vmm

import (
	"errors"
	"fmt"
	"time"

	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/netdev"
	nethandoff "github.com/viovmm/vio/netdev/handoff"
	"github.com/viovmm/vio/netdev/tap"
)

// A migration hands the TAP devices of virtio NICs over at the switchover
// (docs/migration.md, "Disks and other host resources"), as it does the
// disks' images (diskhandoff.go): a single-queue TAP takes one descriptor
// only (a second attach fails with EBUSY), and a multi-queue TAP shared by
// two processes would have the kernel steer some of the guest's flows to
// the paused side's queues, which nobody reads. So the source closes its
// TAP descriptors once its devices are paused for the stop-and-copy
// (nothing is in flight then), and the destination, which built its NICs
// without them, attaches the TAP with the disks, after the state is
// restored and before the guest runs. If the migration fails, the source
// attaches again before its devices resume. Frames the host sends while
// no one holds the TAP are dropped by the kernel (the TAP has no carrier
// then); TCP retransmits them. The virtio-net front-ends stay as they are
// throughout: a netdev/handoff.NIC under each holds its reads and writes
// while nothing is attached, and applies to the TAP it attaches what the
// front-end asked of it (the receive offloads the guest negotiated, which
// queues are on).
//
// Only NICs named by their TAP (tap=NAME) are handed over: a NIC on TAP
// descriptors passed in refuses to migrate (migrationSource), and the
// other back-ends (user-mode network, stream socket, bond, vhost-user)
// hold nothing another process needs: each side has its own.

// vmNIC is one virtio NIC's TAP as the VM hands it over.
type vmNIC struct {
	id, tap string
	h       *nethandoff.NIC
}

// tapNIC opens the TAP a virtio NIC names under a handoff.NIC that can
// close it and attach it again, and returns its queues: one, or with
// n.QueuePairs() > 1 that many queues of a multi-queue TAP (one per
// virtio-net queue pair; the kernel spreads flows over them). A
// migration's destination attaches nothing yet: the source still holds
// the TAP.
func (v *VM) tapNIC(n config.Net) ([]netdev.Backend, error) {
	h, err := v.tapHandoff(n)
	if err != nil {
		return nil, err
	}
	return h.Queues(), nil
}

// tapHandoff opens the TAP a virtio NIC names under a handoff.NIC (see
// tapNIC) and registers it with the VM.
func (v *VM) tapHandoff(n config.Net) (*nethandoff.NIC, error) {
	name := n.Tap
	pairs := n.QueuePairs()
	open := func() ([]netdev.Backend, error) {
		if pairs == 1 {
			t, err := tap.Open(name)
			if err != nil {
				return nil, err
			}
			return []netdev.Backend{t}, nil
		}
		ts, err := tap.OpenQueues(name, pairs)
		if err != nil {
			return nil, err
		}
		bes := make([]netdev.Backend, len(ts))
		for i, t := range ts {
			bes[i] = t
		}
		return bes, nil
	}
	var h *nethandoff.NIC
	var err error
	if v.disksInactive {
		// What the front-end must know when it is built, before any
		// state arrives: the MAC (the config's, and the device state
		// sets the one the guest programmed), the queue count (the
		// config's pairs) and the offloads the TAP offers, from
		// which virtio-net derives the checksum and TSO features it
		// offers the guest. Those are BaseOffloads on every TAP:
		// tap.Open probes only UDP segmentation beyond them, which
		// virtio-net does not offer. A probe of the TAP itself would
		// need a descriptor attached to it (TUNSETOFFLOAD answers only
		// there), which the source holds, or a scratch TAP of our own
		// (CAP_NET_ADMIN, which attaching an existing TAP does not
		// need); so the destination checks only that the kernel has
		// TAPs with virtio-net headers (CheckHost, which attaches to
		// none), and Attach checks that the TAP it opens offers the
		// facts. The restore still checks that the features the guest
		// negotiated are offered.
		if err := tap.CheckHost(pairs > 1); err != nil {
			return nil, err
		}
		h, err = nethandoff.NewDetached(nethandoff.Facts{Queues: pairs, Offloads: tap.BaseOffloads}, open)
	} else {
		var bes []netdev.Backend
		if bes, err = open(); err != nil {
			return nil, err
		}
		h, err = nethandoff.New(bes, open)
	}
	if err != nil {
		return nil, err
	}
	id := n.ID
	if id == "" {
		id = "tap " + name
	}
	v.diskMu.Lock()
	v.nics = append(v.nics, vmNIC{id: id, tap: name, h: h})
	v.diskMu.Unlock()
	return h, nil
}

func (v *VM) nicHandoffs() []vmNIC {
	v.diskMu.Lock()
	defer v.diskMu.Unlock()
	return append([]vmNIC(nil), v.nics...)
}

// persistent reports whether every TAP queue the NIC holds outlives its
// descriptor. A TAP that does not (vio created it because it did not
// exist, or its creator did not make it persistent) disappears when its
// last descriptor closes, with the host's configuration of it (addresses,
// bridge port): the source must not close it, or a migration that fails
// would leave the source's guest on a new, unconfigured TAP.
func (n vmNIC) persistent() (bool, error) {
	for _, be := range n.h.Inner() {
		t, ok := be.(*tap.Tap)
		if !ok {
			continue
		}
		p, err := t.Persistent()
		if err != nil || !p {
			return false, err
		}
	}
	return true, nil
}

// releaseNICs closes every NIC's TAP for a migration's destination to
// attach, except TAPs that are not persistent, which the source keeps
// (a destination on this host then cannot attach them, and fails the
// migration with EBUSY; one on another host attaches its own). Call it
// with the devices paused. On error the TAPs closed so far stay closed:
// the caller takes them back.
func (v *VM) releaseNICs() error {
	start := time.Now()
	nics := v.nicHandoffs()
	released := 0
	for _, n := range nics {
		if p, err := n.persistent(); !p {
			v.log.Warn("the NIC's TAP is not persistent (vio created it, or its creator did not make it persistent): closing it would delete it, so this side keeps it; a migration destination on this host cannot attach it (create it with ip tuntap add)",
				"nic", n.id, "tap", n.tap, "err", err)
			continue
		}
		err := n.h.Detach()
		if errors.Is(err, netdev.ErrClosed) { // a removed NIC
			continue
		}
		if err != nil {
			return fmt.Errorf("cannot release NIC %s's TAP %s for the destination: %w", n.id, n.tap, err)
		}
		released++
	}
	if len(nics) > 0 {
		// Timed: it is part of the migration's downtime.
		v.log.Info("TAP devices released for the migration's destination", "nics", released, "took", time.Since(start))
	}
	return nil
}

// takeNICs attaches every released NIC's TAP again. It tries them all;
// the error names the first that failed.
func (v *VM) takeNICs() error {
	var first error
	for _, n := range v.nicHandoffs() {
		err := n.h.Attach()
		if err == nil || errors.Is(err, netdev.ErrClosed) {
			continue
		}
		if first == nil {
			first = fmt.Errorf("NIC %s: %w", n.id, err)
		}
	}
	return first
}
