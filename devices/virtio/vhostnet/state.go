//go:build linux

// Pausing, snapshots and live migration of a vhost-net NIC: stopping the
// kernel's rings and saving where they stopped, handing the TAP over to
// another VM and taking it back, and the kernel's dirty log.

package vhostnet

import (
	"context"
	"errors"
	"fmt"

	virtionet "github.com/viovmm/vio/devices/virtio/net"
	"github.com/viovmm/vio/state"
	"github.com/viovmm/vio/vhost"
	"github.com/viovmm/vio/vhostuser"
	"github.com/viovmm/vio/virtio"
)

var (
	_ state.Pausable      = (*Device)(nil)
	_ state.Snapshottable = (*Device)(nil)
)

// Pause implements state.Pausable: the control queue finishes the
// command it serves, then every ring is taken from the kernel
// (VHOST_NET_SET_BACKEND with no TAP, which returns once the kernel's
// worker has let go of it) and VHOST_GET_VRING_BASE says where it
// stopped. Frames the host sends meanwhile wait in the TAP's queue.
func (d *Device) Pause(ctx context.Context) error {
	if err := d.ctl.Pause(ctx); err != nil {
		return err
	}
	var err error
	if xerr := d.exec(func() {
		if d.paused {
			return
		}
		if err = d.stopRings(); err == nil {
			d.paused = true
		}
	}); xerr != nil {
		err = xerr
	}
	if err != nil {
		d.ctl.Resume()
		return fmt.Errorf("vhost-net NIC: stopping the kernel's rings: %w", err)
	}
	return nil
}

// Resume implements state.Pausable: the rings go back to the kernel from
// where they stopped, on the TAP attached now (or once Take has one).
func (d *Device) Resume() {
	_ = d.exec(func() {
		if !d.paused {
			return
		}
		d.paused = false
		a := d.act.Load()
		if a == nil || !d.begun || d.held {
			return
		}
		if err := d.startRings(a); err != nil {
			d.broken(err)
		}
	})
	d.ctl.Resume()
}

// Release lets the TAP go, for a migration's destination to attach: the
// device must be paused (the kernel holds no ring then, and so no
// reference to the TAP); its rings start again only after Take.
func (d *Device) Release() error {
	var err error
	if xerr := d.exec(func() {
		if !d.paused && d.act.Load() != nil {
			err = errors.New("vhostnet: release of a NIC whose rings run; pause it first")
			return
		}
		d.held = true
	}); xerr != nil {
		return xerr
	}
	return err
}

// Take ends Release, or a Deferred device's wait: once the TAP is
// attached again, an active device that is not paused gets its rings
// back, from where they stopped (or from the restored state).
func (d *Device) Take() error {
	var err error
	if xerr := d.exec(func() {
		if !d.held {
			return
		}
		a := d.act.Load()
		if a != nil && !d.begun {
			err = errors.New("vhost-net NIC: the device's state was not restored, so vio does not know where the guest's rings stand")
			return
		}
		d.held = false
		if a == nil || d.paused {
			return
		}
		if err = d.startRings(a); err != nil {
			err = fmt.Errorf("vhost-net NIC: starting the guest's rings: %w", err)
		}
	}); xerr != nil {
		return xerr
	}
	return err
}

// CanLog says why the kernel cannot log the guest memory it writes, or
// nil: a pre-copy migration needs VHOST_F_LOG_ALL.
func (d *Device) CanLog() error {
	if d.kernel&vhost.FLogAll == 0 {
		return fmt.Errorf("the kernel's vhost-net does not offer VHOST_F_LOG_ALL (features %#x)", d.kernel)
	}
	return nil
}

// StartLog starts a migration's dirty log covering guest physical
// addresses [0, end): the kernel marks in it every page it writes from
// its next frame on (receive buffers, used rings). Rings that start
// later get it with the rest.
func (d *Device) StartLog(end uint64) error {
	if err := d.CanLog(); err != nil {
		return err
	}
	log, err := vhostuser.NewDirtyLog(end)
	if err != nil {
		return err
	}
	if xerr := d.exec(func() {
		d.dirty.Store(log)
		if err = d.applyLog(log); err != nil {
			d.dirty.Store(nil)
			_ = d.applyLog(nil)
		}
	}); xerr != nil {
		err = xerr
	}
	if err != nil {
		log.Close()
		return fmt.Errorf("vhost-net NIC: starting the dirty log: %w", err)
	}
	return nil
}

// applyLog turns the kernel's logging on (log set) or off on the running
// rings: the log's address, LOG_ALL, and each used ring's logging. Each
// ioctl is in effect when it returns.
func (d *Device) applyLog(log *vhostuser.DirtyLog) error {
	a := d.act.Load()
	if a == nil {
		return nil
	}
	for p, on := range d.running {
		if !on {
			continue
		}
		n := d.nets[p]
		if log != nil {
			if err := n.SetLogBase(log.Addr()); err != nil {
				return err
			}
		}
		if err := n.SetFeatures(ack(a.Features, d.kernel, log != nil)); err != nil {
			return err
		}
		for r := range uint32(2) {
			va, err := vringAddr(d.cfg.Memory, r, *a.Queues[2*p+int(r)], log != nil)
			if err != nil {
				return err
			}
			if err := n.SetVringAddr(va); err != nil {
				return err
			}
		}
	}
	return nil
}

// TakeLog ORs into dst the pages the kernel wrote among the pages pages
// from gpa since the last TakeLog, and clears them (vhostuser.DirtyLog's
// Take). Without a log it takes nothing.
func (d *Device) TakeLog(gpa, pages uint64, dst []uint64) error {
	log := d.dirty.Load()
	if log == nil {
		return nil
	}
	return log.Take(gpa, pages, dst)
}

// StopLog ends the dirty log.
func (d *Device) StopLog() {
	_ = d.exec(func() {
		log := d.dirty.Swap(nil)
		if log == nil {
			return
		}
		if err := d.applyLog(nil); err != nil {
			// The kernel may still mark the log: keep it mapped.
			d.log.Warn("turning vhost-net's dirty log off", "err", err)
			d.broken(fmt.Errorf("%w: turning the dirty log off: %v", ErrKernel, err))
			return
		}
		log.Close()
	})
}

// State is a vhost-net NIC's state: virtio-net's own (MAC, link, pairs
// in use), what the guest was offered, the control queue (which vio
// serves, so the transport does not save it), and where each of the
// kernel's rings stopped. The transport's section holds the rest.
type State struct {
	Features uint64 // offered to the guest
	Net      virtionet.State
	Ctrl     *virtio.QueueState `json:",omitempty"`
	Queues   []QueueState
}

// QueueState is one data queue: Running when the guest had it running,
// and Base, where the kernel stopped, which is also the used index in
// guest memory.
type QueueState struct {
	Running bool
	Base    uint16
}

// StateVersion is the version of State this package writes.
const StateVersion = 1

// StateKind implements state.Snapshottable.
func (*Device) StateKind() string { return "vhost-net" }

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

// SaveState returns the device's state; it must be paused (or never
// started).
func (d *Device) SaveState() (State, error) {
	var s State
	var err error
	if xerr := d.exec(func() {
		a := d.act.Load()
		for _, on := range d.running {
			if on {
				err = fmt.Errorf("%w: the kernel serves the NIC's rings; pause it first", state.ErrInFlight)
				return
			}
		}
		if a != nil && !d.begun {
			err = fmt.Errorf("%w: the NIC waits for its restored state", state.ErrInFlight)
			return
		}
		ns, nerr := d.ctl.SaveState()
		if nerr != nil {
			err = nerr
			return
		}
		s = State{Features: d.features, Net: ns, Queues: make([]QueueState, 2*d.pairs)}
		if a == nil {
			return
		}
		if d.ctrl != nil {
			cs, cerr := d.ctrl.q.SaveState()
			if cerr != nil {
				err = cerr
				return
			}
			s.Ctrl = &cs
		}
		for p := range d.pairsOf(a.Features) {
			for r := range 2 {
				qi := 2*p + r
				if a.Queues[qi] != nil {
					s.Queues[qi] = QueueState{Running: true, Base: d.bases[qi]}
				}
			}
		}
	}); xerr != nil {
		return State{}, xerr
	}
	return s, err
}

// RestoreState gives a Deferred device, before Take, the guest's view of
// it, checked against this device and against the transport's
// activation restored just before (the same rings running, each base
// equal to the used index in guest memory). The rings start at Take.
func (d *Device) RestoreState(s State) error {
	var err error
	if xerr := d.exec(func() { err = d.restore(s) }); xerr != nil {
		return xerr
	}
	return err
}

func (d *Device) restore(s State) error {
	if !d.cfg.Deferred || !d.held || d.begun {
		return errors.New("vhostnet: restore into a device built for it (Deferred) and not yet started")
	}
	a := d.act.Load()
	switch {
	case s.Features&^d.features != 0:
		return fmt.Errorf("%w: the guest was offered features %#x, this host's vhost-net NIC can offer only %#x", state.ErrMismatch, s.Features, d.features)
	case s.Features&virtio.FeatureVersion1 == 0:
		return fmt.Errorf("%w: offered features %#x lack VERSION_1", state.ErrInvalid, s.Features)
	case a != nil && a.Features&^s.Features != 0:
		return fmt.Errorf("%w: the guest negotiated features %#x, the device offered %#x", state.ErrInvalid, a.Features, s.Features)
	case len(s.Queues) != 2*d.pairs:
		return fmt.Errorf("%w: %d data queues, this NIC has %d", state.ErrMismatch, len(s.Queues), 2*d.pairs)
	}
	bases := make([]uint16, len(s.Queues))
	pairs := 0
	if a != nil {
		pairs = d.pairsOf(a.Features)
	}
	for qi, q := range s.Queues {
		running := qi < 2*pairs && a.Queues[qi] != nil
		if q.Running != running {
			return fmt.Errorf("%w: data queue %d running %v in the device's state, %v in the transport's", state.ErrMismatch, qi, q.Running, running)
		}
		if !running {
			if q.Base != 0 {
				return fmt.Errorf("%w: data queue %d is not running but has a base", state.ErrInvalid, qi)
			}
			continue
		}
		used, err := a.Memory.LoadUint16(a.Queues[qi].UsedRing + 2)
		if err != nil {
			return fmt.Errorf("%w: data queue %d: reading the used index: %v", state.ErrInvalid, qi, err)
		}
		if q.Base != used {
			return fmt.Errorf("%w: data queue %d stopped at %d, but its used index in guest memory is %d", state.ErrInvalid, qi, q.Base, used)
		}
		bases[qi] = q.Base
	}
	wantCtrl := a != nil && a.Features&virtionet.FeatureCtrlVQ != 0
	if (s.Ctrl != nil) != wantCtrl {
		return fmt.Errorf("%w: control queue state present %v, the guest's control queue running %v", state.ErrMismatch, s.Ctrl != nil, wantCtrl)
	}
	if wantCtrl {
		idx := 2 * pairs
		if s.Ctrl.Config() != *a.Queues[idx] {
			return fmt.Errorf("%w: the control queue's state disagrees with the transport's registers", state.ErrInvalid)
		}
		if want := a.Features & (virtio.FeatureEventIdx | virtio.FeatureIndirectDesc); s.Ctrl.Features() != want {
			return fmt.Errorf("%w: control queue features %#x, negotiated %#x", state.ErrInvalid, s.Ctrl.Features(), want)
		}
	}
	d.features = s.Features
	copy(d.bases, bases)
	net := s.Net
	d.restored = &restoredState{ctrl: s.Ctrl, net: &net}
	if a == nil {
		d.restored = nil
		return d.ctl.RestoreState(net)
	}
	// The control side starts now (virtio-net checks the pairs in use
	// against its activation); the rings wait for Take.
	if err := d.begin(a); err != nil {
		d.restored = nil
		return err
	}
	return nil
}

// Stats are the NIC's counters as vio sees them. With vhost-net the
// kernel moves every frame and takes every kick of the data queues, and
// sends their interrupts straight to the guest while a vector is
// deliverable: vio counts none of those. The TAP's own counters (ip -s
// link) count the frames.
type Stats struct {
	// DataPath is "vhost-net".
	DataPath string `json:"data_path"`
	// KernelPairs is the number of queue pairs whose rings the kernel
	// serves now.
	KernelPairs int `json:"kernel_pairs"`
	// RingStarts counts hand-overs of a pair's rings to the kernel
	// (activation, resume, a migration's take).
	RingStarts uint64 `json:"ring_starts"`
	// ForwardedInterrupts are interrupts of the kernel's rings that vio
	// raised itself: while a queue's vector was masked, MSI-X off or
	// without an irqfd.
	ForwardedInterrupts uint64 `json:"forwarded_interrupts"`
	// Control queue: commands, errors, kicks seen and interrupts sent
	// (virtio-net's counters, which count nothing else here).
	CtrlCommands      uint64 `json:"ctrl_commands"`
	CtrlErrors        uint64 `json:"ctrl_errors"`
	CtrlNotifications uint64 `json:"ctrl_notifications"`
	CtrlInterrupts    uint64 `json:"ctrl_interrupts"`
}

// Stats returns the device's counters.
func (d *Device) Stats() Stats {
	ns := d.ctl.Stats()
	s := Stats{
		DataPath: "vhost-net", RingStarts: d.ringStarts.Load(), ForwardedInterrupts: d.forwarded.Load(),
		CtrlCommands: ns.CtrlCommands, CtrlErrors: ns.CtrlErrors, CtrlNotifications: ns.Notifications, CtrlInterrupts: ns.Interrupts,
	}
	_ = d.exec(func() {
		for _, on := range d.running {
			if on {
				s.KernelPairs++
			}
		}
	})
	return s
}
