// The device's goroutine: handing the rings over, stopping them, and
// reconnecting to a back-end that went away.

package vufront

import (
	"errors"
	"fmt"
	"time"

	"github.com/viovmm/vio/vhostuser"
	"github.com/viovmm/vio/virtio"
)

// loop is run's state: the reconnection of a lost back-end.
type loop struct {
	d        *Device
	timer    *time.Timer
	retry    <-chan time.Time // set while reconnecting
	deadline time.Time        // of this outage; zero once the rings run again
	backoff  time.Duration
	attempts int
}

func (l *loop) stopRetry() {
	if l.timer != nil {
		l.timer.Stop()
	}
	l.timer, l.retry = nil, nil
}

func (l *loop) beginRetry() {
	if l.retry != nil {
		return
	}
	if l.deadline.IsZero() {
		// A back-end that accepts and then fails again does not extend
		// the outage: it ends at one deadline.
		l.deadline, l.backoff, l.attempts = time.Now().Add(l.d.cfg.ReconnectTimeout), firstBackoff, 0
	}
	l.timer = time.NewTimer(l.backoff)
	l.retry = l.timer.C
}

func (l *loop) needsReset(a *virtio.HandoffActivation, err error) {
	d := l.d
	l.stopRetry()
	l.deadline = time.Time{}
	d.active.Store(nil)
	d.lastErr.Store(&err)
	d.log.Error("vhost-user device needs a reset", "err", err)
	a.Broken(err)
}

// lost drops a broken connection; an active device reconnects at once,
// an idle one at its next activation. A paused device reconnects when it
// resumes, and one whose back-end a migration holds (held) never: its
// rings must not start behind the pause's or the migration's back.
func (l *loop) lost(err error) {
	d := l.d
	if d.conn != nil {
		d.drop(d.conn)
		d.conn = nil
	}
	switch {
	case d.held:
		return
	case d.paused:
		d.log.Info("vhost-user back-end disconnected while the device was paused; reconnecting when it resumes", "err", err)
		return
	case d.active.Load() == nil:
		d.log.Info("vhost-user back-end disconnected while the device was idle; reconnecting when the guest next starts it", "err", err)
		return
	}
	if l.deadline.IsZero() {
		d.log.Warn("vhost-user back-end lost; reconnecting while the guest's requests wait", "err", err, "within", d.cfg.ReconnectTimeout)
		if d.protocol&vhostuser.ProtocolInflightShmfd == 0 || d.inflightFD < 0 {
			d.log.Warn("the back-end keeps no inflight region (INFLIGHT_SHMFD), so requests it had taken may be lost or completed twice")
		}
	}
	l.beginRetry()
}

func (l *loop) start(a *virtio.HandoffActivation, again bool) {
	err := l.d.startRings(a, again)
	switch {
	case err == nil:
		l.deadline = time.Time{}
	case errors.Is(err, errFatal):
		l.needsReset(a, err)
	default:
		l.lost(err)
	}
}

// run owns the connection: every protocol exchange happens here.
func (d *Device) run() {
	defer d.wg.Done()
	defer close(d.stopped)
	l := &loop{d: d}
	for {
		var hup chan struct{}
		if d.conn != nil {
			hup = d.conn.hup
		}
		select {
		case c := <-d.cmds:
			if c.fn != nil {
				c.fn(l)
				close(c.done)
				continue
			}
			switch c.op {
			case opActivate:
				if d.held || d.paused {
					continue // started by Take or Resume
				}
				if d.conn == nil {
					l.lost(errors.New("not connected"))
					continue
				}
				l.start(c.act, false)
			case opReset, opClose:
				l.stopRetry()
				l.deadline = time.Time{}
				d.stopRings()
				d.active.Store(nil)
				d.irqMu.Lock() // no Interrupt or Broken after this
				d.irqMu.Unlock()
				d.freeInflight()
				for i := range d.callTarget {
					d.callTarget[i] = -1
					d.direct[i].Store(false)
				}
				d.paused = false
				if c.op == opClose {
					d.drop(d.conn)
					d.conn = nil
					d.closeEventFDs()
					if log := d.dirty.Swap(nil); log != nil {
						log.Close()
					}
					close(c.done)
					return
				}
				close(c.done)
			}
		case <-hup:
			l.lost(errors.New("the back-end closed the connection"))
		case <-d.irqs:
			if l.deadline.IsZero() && !d.held {
				if err := d.retarget(); err != nil {
					l.lost(err)
				}
			}
		case <-l.retry:
			l.retry = nil
			a := d.active.Load()
			if a == nil || d.held || d.paused {
				l.stopRetry()
				continue
			}
			l.attempts++
			c, err := d.connect()
			if err == nil {
				if err := d.sameBackend(c); err != nil {
					d.drop(c)
					l.needsReset(a, err)
					continue
				}
				d.conn = c
				l.stopRetry()
				d.reconnects.Add(1)
				d.log.Info("vhost-user back-end reconnected", "attempts", l.attempts)
				l.start(a, true)
				continue
			}
			if l.attempts == 1 || l.attempts%20 == 0 {
				d.log.Info("vhost-user back-end not back yet", "attempts", l.attempts, "err", err)
			}
			if time.Now().After(l.deadline) {
				l.needsReset(a, fmt.Errorf("%w at %s did not come back within %v (last try: %v); restart it and reset the device, or reboot the guest", ErrBackend, d.cfg.Socket, d.cfg.ReconnectTimeout, err))
				continue
			}
			l.backoff = min(2*l.backoff, maxBackoff)
			l.timer.Reset(l.backoff)
			l.retry = l.timer.C
		}
	}
}

// errFatal marks a failure a reconnection cannot cure.
var errFatal = errors.New("vhost-user back-end refused the guest's rings")

// sameBackend checks that a reconnected back-end offers what the first
// one did: the guest negotiated against that.
func (d *Device) sameBackend(c *connection) error {
	f, fe := c.offered, c.fe
	mask := d.typeFeatures() | ringFeatures | vhostuser.FProtocolFeatures
	if f&mask != d.offered&mask {
		return fmt.Errorf("%w at %s came back with virtio features %#x instead of %#x; the guest must reset the device", ErrBackend, d.cfg.Socket, f&mask, d.offered&mask)
	}
	if p := fe.ProtocolFeatures(); p != d.protocol {
		return fmt.Errorf("%w at %s came back with protocol features %#x instead of %#x; the guest must reset the device", ErrBackend, d.cfg.Socket, p, d.protocol)
	}
	return nil
}

// ackFeatures are the features SET_FEATURES acknowledges for activation
// a: the guest's that the back-end implements (a NIC's MAC and STATUS
// are vio's, served from its configuration space), with
// PROTOCOL_FEATURES when offered, and LOG_ALL while a migration logs.
func (d *Device) ackFeatures(a *virtio.HandoffActivation, logging bool) uint64 {
	feats := a.Features & d.offered
	if d.offered&vhostuser.FProtocolFeatures != 0 {
		feats |= vhostuser.FProtocolFeatures
	}
	if logging {
		feats |= vhostuser.FLogAll
	}
	return feats
}

// startRings sends what the back-end needs to serve the guest's rings:
// on the first activation and after every reconnection (again).
func (d *Device) startRings(a *virtio.HandoffActivation, again bool) error {
	fe := d.conn.fe
	log := d.dirty.Load()
	if err := fe.SetFeatures(d.ackFeatures(a, log != nil)); err != nil {
		return err
	}
	if err := fe.SetMemTable(d.cfg.Memory); err != nil {
		return err
	}
	if log != nil {
		// A migration is copying guest RAM: the back-end marks what it
		// writes from its first request on.
		if err := fe.SetLogBase(log.Log(), log.FD()); err != nil {
			return err
		}
	}
	if d.protocol&vhostuser.ProtocolInflightShmfd != 0 {
		if d.inflightFD < 0 {
			desc, fd, err := fe.GetInflightFD(uint16(len(d.maxSizes)), d.cfg.QueueSize)
			if err != nil {
				return err
			}
			d.inflight, d.inflightFD = desc, fd
		}
		if d.inflightFD >= 0 {
			if err := fe.SetInflightFD(d.inflight, d.inflightFD); err != nil {
				return err
			}
		}
	}
	for i, q := range a.Queues {
		if q == nil {
			continue
		}
		// The base is the used index in guest memory: what the guest has
		// been given back. A back-end with the inflight region
		// resubmits what it had taken beyond it; on a first start both
		// are 0.
		used, err := a.Memory.LoadUint16(q.UsedRing + 2)
		if err != nil {
			return fmt.Errorf("%w: queue %d: reading the used index: %v", errFatal, i, err)
		}
		if again {
			d.log.Info("restarting vhost-user ring", "queue", i, "base", used)
		}
		qi := uint32(i)
		// Call and err before kick: some back-ends (libvhost-user's)
		// start a ring when its kick eventfd arrives and would complete
		// requests with no call eventfd to signal.
		steps := []func() error{
			func() error { return fe.SetVringNum(qi, q.Size) },
			func() error { return fe.SetVringBase(qi, used) },
			func() error { return fe.SetVringAddrLog(qi, *q, log != nil) },
			func() error {
				fd := d.callFD(a, i)
				d.callTarget[i] = fd
				d.direct[i].Store(fd != d.call[i].FD())
				return fe.SetVringCall(qi, fd)
			},
			func() error { return fe.SetVringErr(qi, d.errFD.FD()) },
			func() error { return fe.SetVringKick(qi, d.kick[i].FD()) },
		}
		if d.offered&vhostuser.FProtocolFeatures != 0 {
			steps = append(steps, func() error { return fe.SetVringEnable(qi, true) })
		}
		for _, s := range steps {
			if err := s(); err != nil {
				if errors.Is(err, vhostuser.ErrFailed) {
					return fmt.Errorf("%w: queue %d: %v", errFatal, i, err)
				}
				return err
			}
		}
		// Requests the guest queued while the rings were away.
		d.Kick(i)
		if again {
			// A back-end killed between writing a used entry and
			// signalling it left the guest unaware of a completion it
			// would wait for forever; an interrupt too many is harmless.
			d.irqMu.RLock()
			a.Interrupt(i)
			d.irqMu.RUnlock()
		}
	}
	return nil
}

// stopRings stops the running rings (the guest reset the device or vio
// is closing). A back-end that fails to answer is disconnected, which
// stops every ring of a back-end that follows the protocol; the guest's
// reset goes on either way (a hostile back-end can write the guest's
// shared RAM whatever vio does: that is vhost-user's trust model).
func (d *Device) stopRings() {
	a := d.active.Load()
	if a == nil || d.conn == nil {
		return
	}
	fe := d.conn.fe
	for i, q := range a.Queues {
		if q == nil {
			continue
		}
		var err error
		if d.offered&vhostuser.FProtocolFeatures != 0 {
			err = fe.SetVringEnable(uint32(i), false)
		}
		if err == nil {
			_, err = fe.GetVringBase(uint32(i))
		}
		if err != nil {
			d.log.Warn("stopping a vhost-user ring failed; disconnecting from the back-end", "queue", i, "err", err)
			d.drop(d.conn)
			d.conn = nil
			return
		}
	}
}

// freeInflight forgets the inflight region: a reset guest starts its
// rings from zero, and the next activation asks for a fresh one.
func (d *Device) freeInflight() {
	if d.inflightFD >= 0 {
		closeFD(d.inflightFD)
	}
	d.inflight, d.inflightFD = vhostuser.Inflight{}, -1
}
