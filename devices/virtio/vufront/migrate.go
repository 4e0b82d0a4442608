// Snapshots and live migration of a vhost-user device: pausing the
// back-end's rings (GET_VRING_BASE) and saving where they stopped,
// handing the back-end over to another VM and taking it back, and the
// dirty log through which a pre-copy migration learns the pages the
// back-end writes (LOG_SHMFD and LOG_ALL).

package vufront

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/state"
	"github.com/viovmm/vio/vhostuser"
	"github.com/viovmm/vio/virtio"
)

var (
	_ state.Pausable      = (*Device)(nil)
	_ state.Snapshottable = (*Device)(nil)
)

// assume sets a Deferred device's view before any back-end is asked:
// every feature vio could present, an empty configuration space (a
// NIC's with its MAC), and the queues the config says. RestoreState puts
// the guest's view in its place.
func (d *Device) assume() error {
	d.features = d.typeFeatures() | ringFeatures
	if d.cfg.Type == virtio.TypeNet {
		d.features |= netConfigFeatures
		if err := d.learnNet(); err != nil {
			return err
		}
		d.features = netFeatures | ringFeatures | netConfigFeatures
		return nil
	}
	n := d.cfg.NumQueues
	if n < 1 || n > vhostuser.MaxVrings {
		return fmt.Errorf("vhost-user disk %s: a restored or migrated disk needs its number of queues (num_queues), which the source's config carries; it has %d", d.cfg.Socket, n)
	}
	d.config = make([]byte, blkConfigSize)
	binary.LittleEndian.PutUint16(d.config[blkConfigNumQueues:], uint16(n))
	d.maxSizes = make([]uint16, n)
	for i := range d.maxSizes {
		d.maxSizes[i] = d.cfg.QueueSize
	}
	return nil
}

// NumQueues returns the device's number of queues (for a disk, what the
// back-end has, capped by the config).
func (d *Device) NumQueues() int { return len(d.maxSizes) }

// Pause implements state.Pausable: each running ring is stopped with
// GET_VRING_BASE, after which the back-end does not touch it, and the
// base it answers (the next request it would take) is kept for the
// state. A back-end stops a ring only once the requests it took are
// complete (vio's does); one that answers first has its used index
// waited for until it reaches the base, within ctx. If a ring cannot be
// stopped the device drops the connection and reconnects, as after a
// lost back-end, and Pause fails: the device is not paused.
func (d *Device) Pause(ctx context.Context) error {
	var err error
	if xerr := d.exec(func(l *loop) { err = d.pause(ctx, l) }); xerr != nil {
		return xerr
	}
	return err
}

func (d *Device) pause(ctx context.Context, l *loop) error {
	if d.paused {
		return nil
	}
	a := d.active.Load()
	if a == nil || d.held {
		d.paused = true // nothing runs here
		return nil
	}
	if d.conn == nil {
		return fmt.Errorf("%w at %s is reconnecting, so its rings cannot be stopped now; try again once it is back", ErrBackend, d.cfg.Socket)
	}
	fe := d.conn.fe
	bases := make([]uint16, len(a.Queues))
	for i, q := range a.Queues {
		if q == nil {
			continue
		}
		d.drain(ctx, a, i)
		var err error
		if d.offered&vhostuser.FProtocolFeatures != 0 {
			err = fe.SetVringEnable(uint32(i), false)
		}
		if err == nil {
			bases[i], err = fe.GetVringBase(uint32(i))
		}
		if err == nil {
			err = d.waitUsed(ctx, a, i, bases[i])
		}
		if err != nil {
			err = fmt.Errorf("stopping vhost-user ring %d: %w", i, err)
			l.lost(err)
			return err
		}
	}
	d.bases, d.paused = bases, true
	return nil
}

// drainWait bounds drain: requests a back-end has taken normally complete
// within milliseconds; one that holds them longer is stopped regardless.
const drainWait = 2 * time.Second

// drain waits, within drainWait and ctx, until the back-end has completed
// every request on queue i's avail ring (its used index reaches the avail
// index), before the ring is stopped. The vCPUs are paused by then, so
// the avail index stays put. Why: libvhost-user (qemu-storage-daemon's
// export, QEMU 7.2) closes a ring's call eventfd on GET_VRING_BASE and
// panics ("Error writing eventfd: Bad file descriptor") when a request it
// had taken completes afterwards; seen in the lab at a migration's pause
// with fio at iodepth 8. A ring that does not drain in time (a back-end
// that holds requests, a guest-written avail index that makes no sense)
// is stopped as it is: Pause then waits for the used index as before.
func (d *Device) drain(ctx context.Context, a *virtio.HandoffActivation, i int) {
	q := a.Queues[i]
	ctx, cancel := context.WithTimeout(ctx, drainWait)
	defer cancel()
	wait := 100 * time.Microsecond
	for {
		avail, aerr := a.Memory.LoadUint16(q.AvailRing + 2)
		used, uerr := a.Memory.LoadUint16(q.UsedRing + 2)
		if aerr != nil || uerr != nil || avail == used || avail-used > q.Size {
			return
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			d.log.Info("vhost-user ring not drained before it is stopped", "queue", i, "in_flight", avail-used)
			return
		case <-t.C:
		}
		wait = min(2*wait, 10*time.Millisecond)
	}
}

// waitUsed waits until queue i's used index in guest memory is base: the
// back-end completed every request it took before it stopped the ring.
// Nothing signals that (the back-end's interrupts may go straight to the
// guest's irqfd), so the index is read again after a short wait, within
// ctx.
func (d *Device) waitUsed(ctx context.Context, a *virtio.HandoffActivation, i int, base uint16) error {
	q := a.Queues[i]
	wait := 100 * time.Microsecond
	for {
		used, err := a.Memory.LoadUint16(q.UsedRing + 2)
		if err != nil {
			return err
		}
		if used == base {
			return nil
		}
		if base-used > q.Size {
			return fmt.Errorf("%w at %s stopped ring %d at %d, %d requests past the used index %d", ErrBackend, d.cfg.Socket, i, base, base-used, used)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w at %s still has %d requests of ring %d in flight after it stopped the ring: %v", ErrBackend, d.cfg.Socket, base-used, i, ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, 10*time.Millisecond)
	}
}

// Resume implements state.Pausable: the rings start again where they
// stopped (the used index, which Pause waited for), on the same
// connection, or on a new one if the back-end went away meanwhile. A
// device whose back-end is held (released for a migration) resumes once
// Take has it back.
func (d *Device) Resume() {
	_ = d.exec(func(l *loop) {
		if !d.paused {
			return
		}
		d.paused = false
		a := d.active.Load()
		if a == nil || d.held {
			return
		}
		if d.conn == nil {
			l.lost(errors.New("not connected"))
			return
		}
		l.start(a, false)
	})
}

// Release lets the back-end go, for a migration's destination to
// connect to it: the device must be paused (its rings stopped), and
// closes the connection, which a back-end with one front-end at a time
// (vio serve-disk, qemu-storage-daemon) needs before it accepts
// another. The device stays as it is for the guest, and connects no
// more until Take.
func (d *Device) Release() error {
	var err error
	if xerr := d.exec(func(l *loop) {
		if d.held {
			return
		}
		if !d.paused && d.active.Load() != nil {
			err = fmt.Errorf("vufront: release of a device whose rings run; pause it first")
			return
		}
		l.stopRetry()
		d.drop(d.conn)
		d.conn = nil
		d.freeInflight()
		for i := range d.callTarget {
			d.callTarget[i] = -1
			d.direct[i].Store(false)
		}
		d.held = true
	}); xerr != nil {
		return xerr
	}
	return err
}

// Take connects to the back-end a Deferred device was built without, or
// that Release let go: it must listen (one attempt), and answers once the
// previous front-end let it go (a back-end serving one front-end at a
// time), within Timeout. The back-end must be one
// the guest can go on with: the same virtio features as the one the
// guest negotiated against, the protocol features vio needs, and for a
// disk its capacity and enough queues. Unless paused, an active device's
// rings start from the bases the state gave, which must be the used
// indexes in guest memory. On failure the device stays held.
func (d *Device) Take() error {
	var err error
	if xerr := d.exec(func(l *loop) { err = d.take() }); xerr != nil {
		return xerr
	}
	return err
}

func (d *Device) take() error {
	if !d.held {
		return nil
	}
	if d.cfg.Deferred && !d.restored {
		return fmt.Errorf("vhost-user %s %s: the device's state was not restored, so vio does not know what the guest negotiated", kindOf(d.cfg.Type), d.cfg.Socket)
	}
	// One attempt: at a migration's switchover the guest is paused until
	// this returns, and the back-end is there (the source used it a
	// moment ago) or will not be. A back-end still busy with the
	// previous front-end has the connection wait in its backlog, and
	// answers once it let that one go, within Timeout.
	c, err := d.connect()
	var de dialError
	if errors.As(err, &de) {
		return fmt.Errorf("no vhost-user back-end listens at %s (%v): start it before restoring or migrating the VM", d.cfg.Socket, de.err)
	}
	if err != nil {
		return fmt.Errorf("vhost-user back-end at %s: %w", d.cfg.Socket, err)
	}
	if err := d.checkTaken(c); err != nil {
		d.drop(c)
		return err
	}
	d.conn, d.held = c, false
	d.log.Info("vhost-user back-end taken", "features", fmt.Sprintf("%#x", c.offered), "protocol", fmt.Sprintf("%#x", c.fe.ProtocolFeatures()))
	a := d.active.Load()
	if a == nil || d.paused {
		return nil
	}
	if err := d.startRings(a, false); err != nil {
		d.drop(d.conn)
		d.conn, d.held = nil, true
		return fmt.Errorf("vhost-user %s %s: starting the guest's rings: %w", kindOf(d.cfg.Type), d.cfg.Socket, err)
	}
	return nil
}

// checkTaken checks a back-end a device takes (see Take).
func (d *Device) checkTaken(c *connection) error {
	mask := d.typeFeatures() | ringFeatures | vhostuser.FProtocolFeatures
	if c.offered&mask != d.offered&mask {
		return fmt.Errorf("%w at %s offers virtio features %#x, the one the guest negotiated with offered %#x", ErrBackend, d.cfg.Socket, c.offered&mask, d.offered&mask)
	}
	p := c.fe.ProtocolFeatures()
	if d.cfg.Type == virtio.TypeBlock {
		if p&vhostuser.ProtocolConfig == 0 {
			return fmt.Errorf("%w at %s does not offer the CONFIG protocol feature", ErrBackend, d.cfg.Socket)
		}
		cfg, err := c.fe.GetConfig(0, blkConfigSize)
		if err != nil {
			return fmt.Errorf("%w at %s: reading its configuration space: %v", ErrBackend, d.cfg.Socket, err)
		}
		if got, want := binary.LittleEndian.Uint64(cfg), binary.LittleEndian.Uint64(d.config); got != want {
			return fmt.Errorf("%w at %s serves a disk of %d sectors, the guest's had %d", ErrBackend, d.cfg.Socket, got, want)
		}
		queues := len(d.maxSizes)
		if d.offered&blk.FeatureMQ != 0 {
			if n := int(binary.LittleEndian.Uint16(cfg[blkConfigNumQueues:])); n < queues {
				return fmt.Errorf("%w at %s has %d request queues, the guest's disk %d", ErrBackend, d.cfg.Socket, n, queues)
			}
		}
		if p&vhostuser.ProtocolMQ != 0 {
			n, err := c.fe.GetQueueNum()
			if err != nil {
				return fmt.Errorf("%w at %s: %v", ErrBackend, d.cfg.Socket, err)
			}
			if int(n) < queues {
				return fmt.Errorf("%w at %s has %d queues, the guest's disk %d", ErrBackend, d.cfg.Socket, n, queues)
			}
		}
	}
	d.factsMu.Lock()
	d.offered, d.protocol = c.offered, p
	d.factsMu.Unlock()
	return nil
}

// CanLog says why the back-end cannot log the guest memory it writes
// (nil if it can): a pre-copy migration needs VHOST_F_LOG_ALL and the
// LOG_SHMFD protocol feature.
func (d *Device) CanLog() error {
	d.factsMu.Lock()
	offered, protocol := d.offered, d.protocol
	d.factsMu.Unlock()
	var missing []string
	if offered&vhostuser.FLogAll == 0 {
		missing = append(missing, "VHOST_F_LOG_ALL")
	}
	if protocol&vhostuser.ProtocolLogShmfd == 0 {
		missing = append(missing, "the LOG_SHMFD protocol feature")
	}
	switch len(missing) {
	case 0:
		return nil
	case 1:
		return fmt.Errorf("its back-end at %s does not offer %s", d.cfg.Socket, missing[0])
	}
	return fmt.Errorf("its back-end at %s offers neither %s nor %s", d.cfg.Socket, missing[0], missing[1])
}

// StartLog starts a migration's dirty log, covering guest physical
// addresses [0, end): the back-end gets it (SET_LOG_BASE), then LOG_ALL
// and the used rings' logging on its running rings, and has processed
// them when StartLog returns, so that every page it writes from then on
// is marked. A back-end that reconnects meanwhile gets the log too.
func (d *Device) StartLog(end uint64) error {
	if err := d.CanLog(); err != nil {
		return err
	}
	log, err := vhostuser.NewDirtyLog(end)
	if err != nil {
		return err
	}
	if xerr := d.exec(func(l *loop) {
		d.dirty.Store(log)
		if d.conn == nil || d.held {
			return // given with the rings when they start
		}
		if err = d.applyLog(log); err != nil {
			d.dirty.Store(nil)
			l.lost(err)
		}
	}); xerr != nil {
		err = xerr
	}
	if err != nil {
		log.Close()
		return fmt.Errorf("vhost-user %s %s: starting the dirty log: %w", kindOf(d.cfg.Type), d.cfg.Socket, err)
	}
	return nil
}

// applyLog turns logging on (log set) or off on the connected back-end:
// the log, LOG_ALL, and the running rings' used-ring logging, then a
// round trip so that they are in effect.
func (d *Device) applyLog(log *vhostuser.DirtyLog) error {
	fe := d.conn.fe
	if log != nil {
		if err := fe.SetLogBase(log.Log(), log.FD()); err != nil {
			return err
		}
	}
	a := d.active.Load()
	if a == nil || d.paused {
		return fe.Sync() // the rings start with it, or without
	}
	if err := fe.SetFeatures(d.ackFeatures(a, log != nil)); err != nil {
		return err
	}
	for i, q := range a.Queues {
		if q == nil {
			continue
		}
		if err := fe.SetVringAddrLog(uint32(i), *q, log != nil); err != nil {
			return err
		}
	}
	return fe.Sync()
}

// TakeLog ORs into dst the pages the back-end wrote among the pages
// pages from gpa since the last TakeLog, and clears them (see
// vhostuser.DirtyLog.Take). Without a log it takes nothing. Call it from
// the goroutine that calls StartLog and StopLog.
func (d *Device) TakeLog(gpa, pages uint64, dst []uint64) error {
	log := d.dirty.Load()
	if log == nil {
		return nil
	}
	return log.Take(gpa, pages, dst)
}

// StopLog ends the dirty log: LOG_ALL and the used rings' logging off on
// a running back-end, and the log freed.
func (d *Device) StopLog() {
	_ = d.exec(func(l *loop) {
		log := d.dirty.Swap(nil)
		if log == nil {
			return
		}
		if d.conn != nil && !d.held {
			if err := d.applyLog(nil); err != nil {
				d.log.Warn("turning the vhost-user back-end's dirty log off", "err", err)
				l.lost(err)
			}
		}
		log.Close()
	})
}

// State is a vhost-user device's state: what the guest saw of it (the
// features it was offered, its configuration space), what the back-end
// it negotiated against offered, and where each of its rings stopped.
// The transport's section holds the rest (negotiated features, queue
// registers).
type State struct {
	Type     uint32 // virtio device type
	Offered  uint64 // the back-end's GET_FEATURES
	Protocol uint64 // protocol features negotiated with it
	Features uint64 // offered to the guest
	Config   []byte // the configuration space the guest reads
	Queues   []QueueState
}

// QueueState is one ring: Running when the guest had it running, and
// then Base, the avail index the back-end stopped at (GET_VRING_BASE),
// which is also the used index in guest memory: nothing is in flight.
type QueueState struct {
	Running bool
	Base    uint16
}

// StateVersion is the version of State this package writes.
const StateVersion = 1

// StateKind implements state.Snapshottable.
func (d *Device) StateKind() string {
	if d.cfg.Type == virtio.TypeNet {
		return "vhost-user-net"
	}
	return "vhost-user-blk"
}

// StateSample is a State for the codec's warm-up (state.Sampler).
func (*Device) StateSample() any { return State{} }

// StateVersion implements state.Snapshottable.
func (d *Device) StateVersion() uint32 { return StateVersion }

// MarshalState implements state.Snapshottable.
func (d *Device) MarshalState() ([]byte, error) { return state.Save(d.SaveState()) }

// UnmarshalState implements state.Snapshottable.
func (d *Device) UnmarshalState(version uint32, data []byte) error {
	return state.Load(version, d.StateVersion(), data, d.RestoreState)
}

// SaveState returns the device's state. The rings must be stopped
// (Pause), or never started here: state.ErrInFlight otherwise.
func (d *Device) SaveState() (State, error) {
	var s State
	var err error
	if xerr := d.exec(func(*loop) {
		a := d.active.Load()
		if a != nil && !d.paused && !d.held {
			err = fmt.Errorf("%w: the vhost-user back-end serves the rings; pause the device first", state.ErrInFlight)
			return
		}
		d.factsMu.Lock()
		s = State{Type: uint32(d.cfg.Type), Offered: d.offered, Protocol: d.protocol, Features: d.features,
			Config: append([]byte(nil), d.config...), Queues: make([]QueueState, len(d.maxSizes))}
		d.factsMu.Unlock()
		if a == nil {
			return
		}
		for i, q := range a.Queues {
			if q != nil && i < len(s.Queues) {
				s.Queues[i] = QueueState{Running: true}
				if i < len(d.bases) {
					s.Queues[i].Base = d.bases[i]
				}
			}
		}
	}); xerr != nil {
		return State{}, xerr
	}
	return s, err
}

// RestoreState gives a Deferred device, before Take, the guest's view
// of it, checked against this device (type, queues, configuration
// size, features vio can present) and against the transport's
// activation restored just before: the same rings running, each base
// equal to the used index in guest memory.
func (d *Device) RestoreState(s State) error {
	var err error
	if xerr := d.exec(func(*loop) { err = d.restore(s) }); xerr != nil {
		return xerr
	}
	return err
}

func (d *Device) restore(s State) error {
	if !d.cfg.Deferred || !d.held || d.restored {
		return errors.New("vufront: restore into a device built for it (Deferred) and not yet taken")
	}
	want := uint64(d.typeFeatures() | ringFeatures)
	cfgSize := blkConfigSize
	var ours uint64 // offered to the guest, not the back-end's
	if d.cfg.Type == virtio.TypeNet {
		want |= netConfigFeatures
		ours = netConfigFeatures
		cfgSize = len(d.config)
	}
	a := d.active.Load()
	switch {
	case virtio.DeviceType(s.Type) != d.cfg.Type:
		return fmt.Errorf("%w: a vhost-user device of type %d, this one is %d", state.ErrMismatch, s.Type, d.cfg.Type)
	case len(s.Queues) != len(d.maxSizes):
		return fmt.Errorf("%w: %d queues, this device has %d", state.ErrMismatch, len(s.Queues), len(d.maxSizes))
	case len(s.Config) != cfgSize:
		return fmt.Errorf("%w: a configuration space of %d bytes, want %d", state.ErrInvalid, len(s.Config), cfgSize)
	case s.Features&^want != 0 || s.Features&virtio.FeatureVersion1 == 0:
		return fmt.Errorf("%w: offered features %#x are not what vio presents (%#x, with VERSION_1)", state.ErrInvalid, s.Features, want)
	case s.Offered&virtio.FeatureVersion1 == 0 || s.Features&^s.Offered&^ours != 0:
		return fmt.Errorf("%w: offered features %#x are not the back-end's %#x", state.ErrInvalid, s.Features, s.Offered)
	case a != nil && a.Features&^s.Features != 0:
		return fmt.Errorf("%w: the guest negotiated features %#x, the device offered %#x", state.ErrInvalid, a.Features, s.Features)
	}
	if d.cfg.Type == virtio.TypeBlock {
		if n := int(binary.LittleEndian.Uint16(s.Config[blkConfigNumQueues:])); n != len(d.maxSizes) {
			return fmt.Errorf("%w: the configuration space says %d queues, the device has %d", state.ErrInvalid, n, len(d.maxSizes))
		}
	}
	bases := make([]uint16, len(s.Queues))
	for i, q := range s.Queues {
		running := a != nil && i < len(a.Queues) && a.Queues[i] != nil
		if q.Running != running {
			return fmt.Errorf("%w: queue %d running %v in the device's state, %v in the transport's", state.ErrMismatch, i, q.Running, running)
		}
		if !running {
			if q.Base != 0 {
				return fmt.Errorf("%w: queue %d is not running but has a base", state.ErrInvalid, i)
			}
			continue
		}
		used, err := a.Memory.LoadUint16(a.Queues[i].UsedRing + 2)
		if err != nil {
			return fmt.Errorf("%w: queue %d: reading the used index: %v", state.ErrInvalid, i, err)
		}
		if q.Base != used {
			return fmt.Errorf("%w: queue %d stopped at %d, but its used index in guest memory is %d", state.ErrInvalid, i, q.Base, used)
		}
		bases[i] = q.Base
	}
	d.factsMu.Lock()
	d.offered, d.protocol = s.Offered, s.Protocol
	d.factsMu.Unlock()
	d.features, d.config, d.bases, d.restored = s.Features, append([]byte(nil), s.Config...), bases, true
	return nil
}
