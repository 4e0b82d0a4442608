//go:build linux

// The device's goroutine: the control side, and handing the rings to the
// kernel and taking them back.

package vhostnet

import (
	"errors"
	"fmt"
	"time"

	"github.com/viovmm/vio/kvm"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/vhost"
	"github.com/viovmm/vio/virtio"

	virtionet "github.com/viovmm/vio/devices/virtio/net"
)

// ctrlQueue is the control queue of one activation, served by
// virtio-net's control side: a goroutine turns the guest's kicks (its
// eventfd) into the queue's.
type ctrlQueue struct {
	q     *virtio.Queue
	index int
	kick  *kvm.EventFD
	done  chan struct{}
}

func (c *ctrlQueue) watch() {
	defer close(c.done)
	for {
		if _, err := c.kick.Wait(); err != nil {
			return // the deadline stop set, or the eventfd closed
		}
		c.q.Kick()
	}
}

// stop ends the watcher without closing the eventfd, which the next
// activation's watcher, or the kernel, uses.
func (c *ctrlQueue) stop() {
	_ = c.kick.SetReadDeadline(time.Unix(1, 0))
	<-c.done
	_ = c.kick.SetReadDeadline(time.Time{})
}

// queueTrigger raises a queue's interrupt through the activation.
type queueTrigger struct {
	d *Device
	a *virtio.HandoffActivation
	q int
}

func (t queueTrigger) Trigger() error {
	t.d.irqMu.RLock()
	defer t.d.irqMu.RUnlock()
	if t.d.act.Load() == t.a {
		t.a.Interrupt(t.q)
	}
	return nil
}

// begin starts the control side for activation a: the control queue (as
// RestoreState left it, or new) and virtio-net's activation, which tells
// the TAP's queues the guest's receive offloads and that one pair is in
// use (the restored count, after a restore).
func (d *Device) begin(a *virtio.HandoffActivation) error {
	if d.begun {
		return nil
	}
	queues := make([]*virtio.Queue, len(a.Queues))
	var cq *ctrlQueue
	if a.Features&virtionet.FeatureCtrlVQ != 0 {
		idx := 2 * d.pairsOf(a.Features)
		var q *virtio.Queue
		var err error
		if d.restored != nil && d.restored.ctrl != nil {
			q, err = virtio.RestoreQueue(a.Memory, *d.restored.ctrl, d.QueueMaxSizes()[idx])
		} else {
			q, err = virtio.NewQueue(a.Memory, *a.Queues[idx], d.QueueMaxSizes()[idx], a.Features)
		}
		if err != nil {
			return fmt.Errorf("vhostnet: control queue: %w", err)
		}
		q.SetInterrupt(queueTrigger{d, a, idx})
		q.OnBroken(func(err error) { d.broken(err) })
		queues[idx] = q
		cq = &ctrlQueue{q: q, index: idx, kick: d.kick[idx], done: make(chan struct{})}
	}
	if err := d.ctl.Activate(&virtio.Activation{Memory: a.Memory, Features: a.Features, Queues: queues, ConfigChanged: a.ConfigChanged}); err != nil {
		return err
	}
	if d.restored != nil && d.restored.net != nil {
		if err := d.ctl.RestoreState(*d.restored.net); err != nil {
			d.ctl.Reset()
			return err
		}
	}
	d.restored = nil
	if cq != nil {
		go cq.watch()
		// Commands the guest queued while nobody watched.
		cq.q.Kick()
	}
	d.ctrl, d.begun = cq, true
	return nil
}

// end stops the control side.
func (d *Device) end() {
	if !d.begun {
		return
	}
	if d.ctrl != nil {
		d.ctrl.stop()
		d.ctrl = nil
	}
	d.ctl.Reset()
	d.begun = false
}

// memTable is guest RAM as the kernel maps it: each region's guest
// physical range at vio's own address for it.
func memTable(m *memory.Memory) []vhost.MemoryRegion {
	regs := m.Regions()
	out := make([]vhost.MemoryRegion, 0, len(regs))
	for i := range regs {
		r := &regs[i]
		out = append(out, vhost.MemoryRegion{GuestAddr: r.GPA, Size: r.Size(), UserAddr: uint64(r.HostAddr())})
	}
	return out
}

// hostAddr translates [gpa, gpa+n) to vio's address for it; the range
// must lie in one region.
func hostAddr(m *memory.Memory, gpa, n uint64) (uint64, error) {
	for _, r := range m.Regions() {
		if gpa >= r.GPA && gpa-r.GPA <= r.Size() && n <= r.Size()-(gpa-r.GPA) {
			return uint64(r.HostAddr()) + (gpa - r.GPA), nil
		}
	}
	return 0, fmt.Errorf("a ring at %#x (+%d bytes) is not inside one region of guest RAM", gpa, n)
}

// vringAddr places ring r (0 receive, 1 transmit of its pair) for the
// kernel, logging its used ring when logging.
func vringAddr(m *memory.Memory, r uint32, q virtio.QueueConfig, logging bool) (vhost.VringAddr, error) {
	a := vhost.VringAddr{Index: r, LogGuest: q.UsedRing}
	var err error
	if a.Desc, err = hostAddr(m, q.DescTable, virtio.DescTableSize(q.Size)); err != nil {
		return a, err
	}
	if a.Avail, err = hostAddr(m, q.AvailRing, virtio.AvailRingSize(q.Size)); err != nil {
		return a, err
	}
	if a.Used, err = hostAddr(m, q.UsedRing, virtio.UsedRingSize(q.Size)); err != nil {
		return a, err
	}
	if logging {
		a.Flags = vhost.VringFLog
	}
	return a, nil
}

// callFD is where data queue q's kernel ring signals: the queue's irqfd
// when its vector is deliverable now, else the device's own eventfd.
func (d *Device) callFD(a *virtio.HandoffActivation, q int) int {
	if a.DirectInterrupt != nil {
		if fd, ok := a.DirectInterrupt(q); ok {
			return fd
		}
	}
	return d.call[q].FD()
}

// startRings hands the rings of every pair in use by activation a to
// the kernel, from d.bases, on the TAP queues attached now.
func (d *Device) startRings(a *virtio.HandoffActivation) error {
	taps := d.cfg.TAPs()
	if taps == nil {
		d.held = true
		d.log.Info("vhost-net rings wait for the TAP, which a migration holds")
		return nil
	}
	pairs := d.pairsOf(a.Features)
	if len(taps) < pairs {
		return fmt.Errorf("vhostnet: %d TAP queues for %d queue pairs", len(taps), pairs)
	}
	log := d.dirty.Load()
	feats := ack(a.Features, d.kernel, log != nil)
	table := memTable(d.cfg.Memory)
	for p := range pairs {
		if d.running[p] {
			continue
		}
		rx, tx := a.Queues[2*p], a.Queues[2*p+1]
		if rx == nil || tx == nil {
			continue // a pair the driver left out
		}
		n := d.nets[p]
		// The log before LOG_ALL: the kernel checks the log's range
		// against the memory table when LOG_ALL is acknowledged.
		steps := []func() error{func() error { return n.SetMemTable(table) }}
		if log != nil {
			steps = append(steps, func() error { return n.SetLogBase(log.Addr()) })
		}
		steps = append(steps, func() error { return n.SetFeatures(feats) })
		for r, q := range []*virtio.QueueConfig{rx, tx} {
			ring, qi := uint32(r), 2*p+r
			steps = append(steps,
				func() error { return n.SetVringNum(ring, q.Size) },
				func() error { return n.SetVringBase(ring, d.bases[qi]) },
				func() error {
					va, err := vringAddr(d.cfg.Memory, ring, *q, log != nil)
					if err != nil {
						return err
					}
					return n.SetVringAddr(va)
				},
				func() error {
					fd := d.callFD(a, qi)
					d.callTarget[qi] = fd
					d.direct[qi].Store(fd != d.call[qi].FD())
					return n.SetVringCall(ring, fd)
				},
				func() error { return n.SetVringErr(ring, d.errFD.FD()) },
				func() error { return n.SetVringKick(ring, d.kick[qi].FD()) },
			)
		}
		for _, s := range steps {
			if err := s(); err != nil {
				return fmt.Errorf("queue pair %d: %w", p, err)
			}
		}
		for r := range uint32(2) {
			var serr error
			if err := taps[p].Control(func(fd int) { serr = n.SetBackend(r, fd) }); err != nil {
				serr = err
			}
			if serr != nil {
				d.detach(p)
				return fmt.Errorf("queue pair %d: attaching the TAP: %w", p, serr)
			}
		}
		d.running[p] = true
		d.ringStarts.Add(1)
		// Buffers and frames the guest queued while the rings were away.
		d.Kick(2 * p)
		d.Kick(2*p + 1)
	}
	return nil
}

// detach takes pair p's rings from the kernel; when it returns the
// kernel no longer touches them.
func (d *Device) detach(p int) error {
	var errs []error
	for r := range uint32(2) {
		if err := d.nets[p].SetBackend(r, -1); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// stopRings takes every running ring back from the kernel and keeps in
// d.bases where each stopped: the next available entry the kernel would
// have taken, which is then also the used index in guest memory (the
// kernel completes what it took before it lets a ring go). A ring that
// cannot be stopped cleanly is reported; the device is then no longer
// safe to run and its instance is closed by Reset's caller.
func (d *Device) stopRings() error {
	a := d.act.Load()
	var errs []error
	for p, on := range d.running {
		if !on {
			continue
		}
		if err := d.detach(p); err != nil {
			errs = append(errs, fmt.Errorf("queue pair %d: %w", p, err))
			continue
		}
		d.running[p] = false
		for r := range uint32(2) {
			qi := 2*p + int(r)
			base, err := d.nets[p].VringBase(r)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			d.bases[qi] = base
			if a != nil && a.Queues[qi] != nil {
				used, err := a.Memory.LoadUint16(a.Queues[qi].UsedRing + 2)
				if err == nil && used != base {
					errs = append(errs, fmt.Errorf("%w stopped queue %d at %d with the used index at %d: %d entries it took are not completed", ErrKernel, qi, base, used, base-used))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// retarget moves each running ring's call eventfd where callFD says now
// (the guest masked or unmasked a vector). Between the guest's mask and
// the switch an interrupt may still reach the irqfd: a spurious one,
// which drivers tolerate; none is lost.
func (d *Device) retarget() error {
	a := d.act.Load()
	if a == nil {
		return nil
	}
	for p, on := range d.running {
		if !on {
			continue
		}
		for r := range uint32(2) {
			qi := 2*p + int(r)
			fd := d.callFD(a, qi)
			if fd == d.callTarget[qi] {
				continue
			}
			if err := d.nets[p].SetVringCall(r, fd); err != nil {
				return err
			}
			d.callTarget[qi] = fd
			d.direct[qi].Store(fd != d.call[qi].FD())
		}
	}
	return nil
}
