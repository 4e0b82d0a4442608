package config

import (
	"errors"
	"fmt"
)

// NetBond is a NIC over several stream sockets (docs/network.md).
type NetBond struct {
	// Mode is "active-backup" (the default) or "balance".
	Mode    string   `json:"mode,omitempty"`
	Sockets []string `json:"sockets"`
}

// MaxNetQueuePairs bounds a virtio NIC's receive/transmit queue pairs
// (virtio-net's MaxPairs): num_queues at most twice that.
const MaxNetQueuePairs = 64

// QueuePairs is the number of receive/transmit queue pairs the NIC asks
// for. num_queues counts the queues of both directions, as Cloud
// Hypervisor's NetConfig does (its default, 2, is one pair); 0 (not given)
// is one pair too.
func (n Net) QueuePairs() int { return max(1, n.NumQueues/2) }

// validateQueues checks num_queues: whole pairs, within bounds, and more
// than one pair only where it is honoured (a TAP, whose kernel side has a
// queue per pair; the others are one byte stream or one stack).
func (n Net) validateQueues(what string) error {
	switch {
	case n.NumQueues < 0:
		return fmt.Errorf("%s: num_queues %d: give a positive even number (2 per queue pair)", what, n.NumQueues)
	case n.NumQueues > 1 && n.NumQueues%2 != 0:
		return fmt.Errorf("%s: num_queues %d: a NIC's queues come in receive/transmit pairs, so give an even number (num_queues=2N, or queues=N for N pairs)", what, n.NumQueues)
	case n.QueuePairs() > MaxNetQueuePairs:
		return fmt.Errorf("%s: num_queues %d: a NIC has at most %d queue pairs (num_queues=%d)", what, n.NumQueues, MaxNetQueuePairs, 2*MaxNetQueuePairs)
	case n.QueuePairs() == 1:
		return nil
	case n.Tap == "" && len(n.TapFDs) == 0:
		return fmt.Errorf("%s: %d queue pairs need a TAP back-end (tap=NAME, or TAP descriptors through the API), because the user-mode network, stream sockets, bonds and vhost-user NICs carry one queue pair", what, n.QueuePairs())
	case n.Firewall != "" || n.Pcap != "" || n.IDS != "":
		return fmt.Errorf("%s: firewall, pcap and ids see the frames of one queue pair, so they cannot be combined with %d queue pairs: drop them or the extra queues", what, n.QueuePairs())
	}
	return nil
}

// validateBackend checks that a NIC has exactly one back-end and sane
// interposer settings; i is its index in the config (-1 for a --net flag,
// whose message names the flag instead).
func (n Net) validateBackend(i int) error {
	what := "net"
	if i >= 0 {
		what = fmt.Sprintf("net %d", i)
	}
	count := 0
	for _, set := range []bool{n.Tap != "" || len(n.TapFDs) > 0, n.User != nil, n.Socket != "", n.Bond != nil} {
		if set {
			count++
		}
	}
	switch {
	case count == 0:
		return fmt.Errorf("%s has no back-end: give tap=NAME (a TAP interface), user=on (user-mode networking) or socket=PATH (a stream socket such as vio switch's)", what)
	case count > 1:
		return fmt.Errorf("%s has more than one back-end: give only one of tap=NAME, user=on and socket=PATH", what)
	}
	if b := n.Bond; b != nil {
		if len(b.Sockets) < 2 {
			return fmt.Errorf("%s: a bond needs two or more sockets: socket=PATH1+PATH2 with bond=MODE", what)
		}
		switch b.Mode {
		case "", "active-backup", "balance":
		default:
			return fmt.Errorf("%s: bond mode %q: want active-backup or balance", what, b.Mode)
		}
	}
	switch n.IDSMode {
	case "", "ids", "ips":
	default:
		return fmt.Errorf("%s: ids_mode %q: want ids (watch only) or ips (the inspector may drop frames)", what, n.IDSMode)
	}
	if n.IDSMode != "" && n.IDS == "" {
		return errors.New(what + ": ids_mode without ids=SOCKET: give the inspector's socket")
	}
	if err := n.validateVhostNet(what); err != nil {
		return err
	}
	return n.validateQueues(what)
}

// validateVhostNet checks a NIC whose data path the host kernel's
// vhost-net serves: the kernel moves frames between the guest's rings and
// a TAP's socket, so the NIC needs a TAP and virtio-net, and nothing of
// vio's can stand between them.
func (n Net) validateVhostNet(what string) error {
	switch {
	case !n.VhostNet:
		return nil
	case n.Tap == "" && len(n.TapFDs) == 0:
		return fmt.Errorf("%s: vhost=on needs a TAP (tap=NAME): the kernel's vhost-net moves frames to and from a TAP only, not a user-mode network, a stream socket, a bond or a switch port", what)
	case n.Model == NetE1000:
		return fmt.Errorf("%s: vhost=on serves virtio-net queues; an e1000 has none: drop model=e1000 or vhost=on", what)
	case n.Firewall != "" || n.Pcap != "" || n.IDS != "":
		return fmt.Errorf("%s: firewall, pcap and ids need the frames to pass through vio, and with vhost=on the kernel moves them: drop them or vhost=on", what)
	case n.IOMMU:
		return fmt.Errorf("%s: vhost=on cannot sit behind the emulated IOMMU (the kernel would get I/O virtual addresses it cannot translate): drop iommu or vhost=on", what)
	}
	return nil
}
