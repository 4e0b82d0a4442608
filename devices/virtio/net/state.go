package net

import (
	"context"
	"fmt"
	stdnet "net"
	"time"

	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/state"
)

// State is virtio-net's own state (the queues are the transport's).
//
// The driver programs the MAC address (CTRL_MAC_ADDR), the queue pairs in
// use (CTRL_MQ) and acknowledges announcements; receive filtering
// (CTRL_RX, CTRL_VLAN) is not offered, so there is no receive mode or
// filter table to keep.
type State struct {
	// MAC is the device's address, as net.HardwareAddr prints it.
	MAC string
	// LinkUp and Announce are the bits of the status field.
	LinkUp   bool
	Announce bool
	// Pairs is the number of queue pairs the driver uses (1 without MQ).
	Pairs uint16
	// Standby says the device offered VIRTIO_NET_F_STANDBY: a state
	// is restored only into a device that offers it as well, since the
	// guest's driver built its net_failover device on it.
	Standby bool `json:",omitempty"`
	// RxPending holds, per queue pair, the packets (virtio-net header
	// and frame) the device had read from its back-end and not yet given
	// to the guest, oldest first. They cannot go back into a TAP, so
	// they travel with the snapshot.
	RxPending [][][]byte `json:",omitempty"`
}

// StateVersion is the version of State this package writes.
const StateVersion = 1

// maxSavedRx bounds the packet bytes a State carries, so that a section
// stays within state.MaxSectionSize once base64-encoded (4/3). A device
// holds at most rxBatch packets per pair; only a device with many pairs
// all holding 64 KiB TSO frames comes near it, and packets beyond it are
// left out of the snapshot (the restored VM never sees them, as if a
// link had lost them).
const maxSavedRx = 8 << 20

// pauseTimeout bounds the pause UnmarshalState takes to hand restored
// packets to the receive goroutines.
const pauseTimeout = 10 * time.Second

var (
	_ state.Snapshottable = (*Device)(nil)
	_ state.Pausable      = (*Device)(nil)
)

// Pause implements state.Pausable. Transmit finishes every frame it took
// (the back-end has it, its used entry is written); the control queue
// answers the command it is serving; receive stops reading from the
// back-end (a read deadline in the past interrupts a blocked read) and
// hands the receive chains it holds back to the ring with Queue.Unget.
// Packets already read from the back-end stay in the device (and go into
// the State); packets arriving while paused stay in the back-end's queue
// — a TAP's, up to its txqueuelen, beyond which the kernel drops and
// counts them — since the device reads only when it can deliver.
func (d *Device) Pause(ctx context.Context) error {
	d.mu.Lock()
	run := d.run
	d.mu.Unlock()
	if run == nil {
		return nil
	}
	run.gate.Request() // before the deadline, so the interrupted read sees it
	for _, be := range d.bes {
		be.SetReadDeadline(time.Unix(1, 0))
	}
	err := run.gate.Pause(ctx)
	d.mu.Lock()
	if d.run == run {
		// Not reset meanwhile (Reset manages the deadlines itself).
		for _, be := range d.bes {
			be.SetReadDeadline(time.Time{})
		}
		run.paused.Store(err == nil)
	}
	d.mu.Unlock()
	return err
}

// Resume implements state.Pausable.
func (d *Device) Resume() {
	d.mu.Lock()
	run := d.run
	d.mu.Unlock()
	if run != nil {
		run.paused.Store(false)
		run.gate.Resume()
	}
}

// SaveState returns the device's state. An active device must be paused
// (its receive goroutines own the packets they hold).
func (d *Device) SaveState() (State, error) {
	s := State{
		MAC:      d.MAC().String(),
		LinkUp:   d.linkUp.Load(),
		Announce: d.announce.Load(),
		Pairs:    uint16(d.pairs.Load()),
		Standby:  d.features&FeatureStandby != 0,
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	run := d.run
	if run == nil {
		s.Pairs = 1 // what the next activation starts with
		return s, nil
	}
	if !run.paused.Load() {
		return State{}, fmt.Errorf("%w: virtio-net is running; pause it before saving", state.ErrInFlight)
	}
	budget := maxSavedRx
	for i, rx := range run.rx {
		if rx == nil {
			continue
		}
		for _, p := range rx.pending() {
			if len(p) > budget {
				break
			}
			budget -= len(p)
			for len(s.RxPending) <= i {
				s.RxPending = append(s.RxPending, nil)
			}
			s.RxPending[i] = append(s.RxPending[i], append([]byte(nil), p...))
		}
	}
	return s, nil
}

// check validates s against this device without changing anything and
// returns the MAC address.
func (d *Device) check(s *State, run *activation) ([6]byte, error) {
	var mac [6]byte
	hw, err := stdnet.ParseMAC(s.MAC)
	if err != nil || len(hw) != 6 || hw[0]&1 != 0 {
		return mac, fmt.Errorf("%w: MAC %q is not a unicast Ethernet address", state.ErrInvalid, s.MAC)
	}
	copy(mac[:], hw)
	if standby := d.features&FeatureStandby != 0; s.Standby != standby {
		return mac, fmt.Errorf("%w: the saved device is a standby (%v), this one is not the same (%v): give both the same standby setting", state.ErrMismatch, s.Standby, standby)
	}
	maxPairs := 1
	if run != nil && run.features&FeatureMQ != 0 {
		maxPairs = len(d.bes)
	}
	if s.Pairs < 1 || int(s.Pairs) > maxPairs {
		return mac, fmt.Errorf("%w: %d queue pairs in use, this device has %d", state.ErrInvalid, s.Pairs, maxPairs)
	}
	if s.Announce && (run == nil || run.features&FeatureAnnounce == 0) {
		return mac, fmt.Errorf("%w: announcement pending without GUEST_ANNOUNCE negotiated", state.ErrInvalid)
	}
	if len(s.RxPending) > 0 && run == nil {
		return mac, fmt.Errorf("%w: received packets pending on a device that is not running", state.ErrInvalid)
	}
	if len(s.RxPending) > len(d.bes) {
		return mac, fmt.Errorf("%w: packets pending on %d queue pairs, this device has %d", state.ErrMismatch, len(s.RxPending), len(d.bes))
	}
	total := 0
	for i, ps := range s.RxPending {
		if len(ps) == 0 {
			continue
		}
		if i >= len(run.rx) || run.rx[i] == nil {
			return mac, fmt.Errorf("%w: packets pending on queue pair %d, which the driver did not enable", state.ErrInvalid, i)
		}
		if len(ps) > rxBatch {
			return mac, fmt.Errorf("%w: %d packets pending on queue pair %d, at most %d", state.ErrInvalid, len(ps), i, rxBatch)
		}
		for _, p := range ps {
			if len(p) < netdev.HeaderSize || len(p) > netdev.MaxPacketLen {
				return mac, fmt.Errorf("%w: pending packet of %d bytes", state.ErrInvalid, len(p))
			}
			total += len(p)
		}
	}
	if total > maxSavedRx {
		return mac, fmt.Errorf("%w: %d bytes of pending packets, at most %d", state.ErrInvalid, total, maxSavedRx)
	}
	return mac, nil
}

// RestoreState restores the device's state. Restore the transport's
// section first: it activates the device, and the pending packets go to
// the receive goroutines it started, ahead of anything they read since.
// A packet that arrived at the back-end between that activation and this
// call may already have overtaken them; restore the two sections back to
// back, with the vCPUs stopped, to keep that window short.
func (d *Device) RestoreState(s State) error {
	d.mu.Lock()
	run := d.run
	d.mu.Unlock()
	mac, err := d.check(&s, run)
	if err != nil {
		return err
	}
	var pending bool
	for _, ps := range s.RxPending {
		pending = pending || len(ps) > 0
	}
	if pending && !run.paused.Load() {
		// The receive goroutines own their packets: stop them to add.
		ctx, cancel := context.WithTimeout(context.Background(), pauseTimeout)
		err := d.Pause(ctx)
		cancel()
		if err != nil {
			return fmt.Errorf("net: pause to restore pending packets: %w", err)
		}
		defer d.Resume()
	}
	d.setMAC(mac)
	d.linkUp.Store(s.LinkUp)
	d.announce.Store(s.Announce)
	if run != nil {
		d.setPairs(int(s.Pairs), false)
	} else {
		d.pairs.Store(uint32(s.Pairs))
	}
	for i, ps := range s.RxPending {
		if len(ps) > 0 {
			rx := run.rx[i]
			rx.restored = append(ps[:len(ps):len(ps)], rx.restored...)
		}
	}
	return nil
}

// StateKind implements state.Snapshottable.
func (*Device) StateKind() string { return "virtio-net" }

// StateSample is a State for the codec's warm-up (state.Sampler).
func (*Device) StateSample() any { return State{} }

// StateVersion implements state.Snapshottable.
func (*Device) StateVersion() uint32 { return StateVersion }

// MarshalState implements state.Snapshottable.
func (d *Device) MarshalState() ([]byte, error) { return state.Save(d.SaveState()) }

// UnmarshalState implements state.Snapshottable.
func (d *Device) UnmarshalState(version uint32, data []byte) error {
	return state.Load(version, d.StateVersion(), data, d.RestoreState)
}
