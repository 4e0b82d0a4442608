//go:build linux

// Package vhostnet is a virtio-net device whose receive and transmit
// queues the host kernel's vhost-net serves (/dev/vhost-net, QEMU's
// vhost=on), on the queues of a TAP: the kernel moves frames between the
// guest's rings and the TAP's socket on a worker thread of its own, with
// no vio code per frame, kick or interrupt.
//
// vio keeps the rest: the PCI transport, the configuration space, feature
// negotiation and the control queue (the number of queue pairs in use,
// the MAC address, announcements), served by virtio-net's own device
// (package net with ExternalQueues), which also tells the TAP the
// receive offloads the guest accepted and which of its queues are in
// use. The device is a virtio.Handoff, like the vhost-user front-end
// (package vufront), whose design it follows: the guest's kicks of the
// data queues reach the kernel through KVM's ioeventfd, and its
// interrupts come from the kernel through the queue's irqfd while the
// vector is deliverable, else through an eventfd of the device's that
// raises them through the transport (masking, pending bits, INTx).
//
// One vhost-net instance serves one queue pair (its rings 0 and 1). The
// kernel reaches guest memory through vio's own mapping of it, so guest
// RAM need not be shared. Pausing stops the rings (VHOST_NET_SET_BACKEND
// with no TAP, then VHOST_GET_VRING_BASE) and keeps where they stopped;
// a live migration's dirty log is the kernel's (VHOST_SET_LOG_BASE with
// VHOST_F_LOG_ALL), in the same bitmap format vhost-user back-ends use.
//
// Every kernel exchange runs on one goroutine (run), so that a vCPU that
// activates the device, or the transport's MSI-X changes, never wait for
// it; Reset and the lifecycle calls wait for it.
package vhostnet

import (
	"errors"
	"fmt"
	"log/slog"
	stdnet "net"
	"sync"
	"sync/atomic"

	"github.com/viovmm/vio/kvm"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/vhost"
	"github.com/viovmm/vio/vhostuser"
	"github.com/viovmm/vio/virtio"

	virtionet "github.com/viovmm/vio/devices/virtio/net"
)

// ringFeatures are the transport bits that the kernel implements for the
// rings it serves and that vio presents when it does.
const ringFeatures = virtio.FeatureVersion1 | virtio.FeatureEventIdx | virtio.FeatureIndirectDesc

// kernelNetFeatures are the virtio-net bits that change what the kernel
// does with the rings (the header's size, mergeable buffers). Checksum
// and segmentation offloads are the TAP's, which the header carries
// through unchanged, and the control-queue bits are vio's.
const kernelNetFeatures = virtionet.FeatureMrgRxbuf

// TAP is one queue of the NIC's TAP as the kernel attaches it: Control
// runs fn with its descriptor open (tap.Tap has it).
type TAP interface {
	Control(fn func(fd int)) error
}

// Config describes a vhost-net NIC.
type Config struct {
	// MAC and QueueSize are virtio-net's (net.Config).
	MAC       stdnet.HardwareAddr
	QueueSize uint16
	// Memory is guest RAM, whose map the kernel gets.
	Memory *memory.Memory
	// Backends are the NIC's queue pairs as virtio-net's control side
	// drives them (receive offloads, queues switched on and off): the
	// TAP's queues, one per pair, possibly under a netdev/handoff NIC.
	Backends []netdev.Backend
	// TAPs returns the TAP queues attached now, one per pair, or nil
	// while none is (a migration's other side holds the TAP); the rings
	// start once they are.
	TAPs func() []TAP
	// Deferred builds the device for a restored VM or a migration's
	// destination: the rings wait for RestoreState (if the guest had the
	// device running) and Take.
	Deferred bool
	// Log gets lifecycle events (nil: slog.Default()).
	Log *slog.Logger
	// Open opens one vhost-net instance (nil: vhost.Open). For tests.
	Open func() (Kernel, error)
}

// Kernel is what the device asks of one vhost-net instance (*vhost.Net).
type Kernel interface {
	Features() (uint64, error)
	SetFeatures(uint64) error
	SetMemTable([]vhost.MemoryRegion) error
	SetLogBase(addr uint64) error
	SetVringNum(ring uint32, size uint16) error
	SetVringBase(ring uint32, base uint16) error
	VringBase(ring uint32) (uint16, error)
	SetVringAddr(vhost.VringAddr) error
	SetVringKick(ring uint32, fd int) error
	SetVringCall(ring uint32, fd int) error
	SetVringErr(ring uint32, fd int) error
	SetBackend(ring uint32, fd int) error
	Close() error
}

// Device is a virtio-net device on vhost-net.
type Device struct {
	cfg      Config
	log      *slog.Logger
	ctl      *virtionet.Device
	features uint64 // offered to the guest
	kernel   uint64 // what vhost-net implements
	pairs    int
	nets     []Kernel
	kick     []*kvm.EventFD // per queue, the control queue's included
	call     []*kvm.EventFD // per data queue: interrupts vio raises itself
	errFD    *kvm.EventFD
	cmds     chan func()
	irqs     chan struct{} // InterruptsChanged, coalesced
	stopped  chan struct{}
	wg       sync.WaitGroup
	closing  sync.Once

	// act is the running activation; irqMu is held (read) by whoever
	// calls its Interrupt or Broken, and taken once by a reset after
	// clearing act, so that none calls them after Reset returns.
	act   atomic.Pointer[virtio.HandoffActivation]
	irqMu sync.RWMutex

	dirty atomic.Pointer[vhostuser.DirtyLog] // a migration's, while it runs

	// Owned by run.
	begun      bool                  // the control side runs for act
	ctrl       *ctrlQueue            // the control queue, while begun
	running    []bool                // per pair, the kernel has the rings
	paused     bool                  // Pause stopped the rings
	held       bool                  // no TAP to start them on until Take
	restored   *restoredState        // RestoreState's, for the next begin
	bases      []uint16              // per data queue: where the rings restart
	callTarget []int                 // per data queue: the call fd the kernel has (-1: none)
	direct     []atomic.Bool         // per data queue: callTarget is an irqfd
	lastErr    atomic.Pointer[error] // why the device last broke

	// Counters.
	forwarded  atomic.Uint64 // interrupts of the kernel's rings raised by vio
	ringStarts atomic.Uint64
}

// restoredState is what RestoreState leaves for begin.
type restoredState struct {
	ctrl *virtio.QueueState
	net  *virtionet.State
}

var (
	_ virtio.Handoff = (*Device)(nil)
	// ErrKernel reports a vhost-net failure.
	ErrKernel = errors.New("vhost-net")
)

// New opens one vhost-net instance per queue pair and builds the device.
// What it offers the guest is what virtio-net offers on these back-ends
// limited to what the kernel implements.
func New(cfg Config) (*Device, error) {
	if cfg.Memory == nil || len(cfg.Backends) == 0 || cfg.TAPs == nil {
		return nil, errors.New("vhostnet: guest memory, back-ends and TAPs are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Open == nil {
		cfg.Open = func() (Kernel, error) { return vhost.Open() }
	}
	ctl, err := virtionet.NewMultiQueue(cfg.Backends, virtionet.Config{MAC: cfg.MAC, QueueSize: cfg.QueueSize, ExternalQueues: true})
	if err != nil {
		return nil, err
	}
	d := &Device{
		cfg: cfg, log: cfg.Log, ctl: ctl, pairs: len(cfg.Backends),
		cmds: make(chan func(), 4), irqs: make(chan struct{}, 1), stopped: make(chan struct{}),
		held: cfg.Deferred, running: make([]bool, len(cfg.Backends)),
	}
	fail := func(err error) (*Device, error) {
		d.closeFDs()
		return nil, err
	}
	for range d.pairs {
		n, err := cfg.Open()
		if err != nil {
			return fail(err)
		}
		d.nets = append(d.nets, n)
	}
	if d.kernel, err = d.nets[0].Features(); err != nil {
		return fail(err)
	}
	if d.kernel&virtio.FeatureVersion1 == 0 {
		return fail(fmt.Errorf("%w: the kernel's vhost-net does not implement VIRTIO_F_VERSION_1 (features %#x), which vio's virtio-pci transport needs", ErrKernel, d.kernel))
	}
	d.features = offered(ctl.Features(), d.kernel)
	nq := len(ctl.QueueMaxSizes())
	d.callTarget = make([]int, 2*d.pairs)
	d.direct = make([]atomic.Bool, 2*d.pairs)
	d.bases = make([]uint16, 2*d.pairs)
	if d.errFD, err = kvm.NewEventFD(); err != nil {
		return fail(err)
	}
	for q := range nq {
		k, err := kvm.NewEventFD()
		if err != nil {
			return fail(err)
		}
		d.kick = append(d.kick, k)
		if q < 2*d.pairs {
			c, err := kvm.NewEventFD()
			if err != nil {
				return fail(err)
			}
			d.call = append(d.call, c)
			d.callTarget[q] = -1
		}
	}
	for q, c := range d.call {
		d.wg.Add(1)
		go d.forwardCalls(q, c)
	}
	d.wg.Add(2)
	go d.watchErr()
	go d.run()
	return d, nil
}

// offered is what the device offers: virtio-net's own bits (its
// configuration space, the control queue, the TAP's offloads) with the
// bits that change the rings limited to the kernel's.
func offered(net, kernel uint64) uint64 {
	return net&^kernelNetFeatures | (net|ringFeatures)&kernel&(kernelNetFeatures|ringFeatures)
}

// ack is what VHOST_SET_FEATURES acknowledges for negotiated features
// f: the bits of the kernel's among them (never VHOST_NET_F_VIRTIO_NET_HDR:
// the TAP carries the header), and LOG_ALL while a migration logs.
func ack(f, kernel uint64, logging bool) uint64 {
	a := f & kernel & (kernelNetFeatures | ringFeatures)
	if logging {
		a |= vhost.FLogAll
	}
	return a
}

func (d *Device) closeFDs() {
	for _, n := range d.nets {
		n.Close()
	}
	for _, e := range append(append([]*kvm.EventFD{d.errFD}, d.kick...), d.call...) {
		if e != nil {
			e.Close()
		}
	}
}

// run executes the device's commands one at a time.
func (d *Device) run() {
	defer d.wg.Done()
	defer close(d.stopped)
	for {
		select {
		case fn := <-d.cmds:
			if fn == nil {
				return // Close
			}
			fn()
		case <-d.irqs:
			if err := d.retarget(); err != nil {
				d.broken(err)
			}
		}
	}
}

// exec runs fn on the device's goroutine and waits for it.
func (d *Device) exec(fn func()) error {
	done := make(chan struct{})
	select {
	case d.cmds <- func() { fn(); close(done) }:
		// After Close it may sit in the buffer of a goroutine that
		// has ended: stopped says so below.
	case <-d.stopped:
		return errClosed
	}
	select {
	case <-done:
		return nil
	case <-d.stopped:
		return errClosed
	}
}

var errClosed = errors.New("vhostnet: device closed")

func (d *Device) forwardCalls(q int, c *kvm.EventFD) {
	defer d.wg.Done()
	for {
		if _, err := c.Wait(); err != nil {
			return
		}
		d.irqMu.RLock()
		if a := d.act.Load(); a != nil {
			d.forwarded.Add(1)
			a.Interrupt(q)
		}
		d.irqMu.RUnlock()
	}
}

func (d *Device) watchErr() {
	defer d.wg.Done()
	for {
		if _, err := d.errFD.Wait(); err != nil {
			return
		}
		d.broken(fmt.Errorf("%w reported a ring error (a descriptor or address it cannot use); the guest must reset the device", ErrKernel))
	}
}

// broken sets DEVICE_NEEDS_RESET on the running activation.
func (d *Device) broken(err error) {
	d.irqMu.RLock()
	defer d.irqMu.RUnlock()
	if a := d.act.Load(); a != nil {
		d.lastErr.Store(&err)
		d.log.Error("vhost-net NIC needs a reset", "err", err)
		a.Broken(err)
	}
}

// Type implements virtio.Device.
func (*Device) Type() virtio.DeviceType { return virtio.TypeNet }

// Features implements virtio.Device: every bit, the transport's included
// (see virtio.Handoff).
func (d *Device) Features() uint64 { return d.features }

// QueueMaxSizes implements virtio.Device: virtio-net's.
func (d *Device) QueueMaxSizes() []uint16 { return d.ctl.QueueMaxSizes() }

// ReadConfig implements virtio.Device: virtio-net's configuration space.
func (d *Device) ReadConfig(offset uint64, data []byte) { d.ctl.ReadConfig(offset, data) }

// WriteConfig implements virtio.Device.
func (d *Device) WriteConfig(offset uint64, data []byte) { d.ctl.WriteConfig(offset, data) }

// Activate implements virtio.Device; the transport calls ActivateHandoff.
func (d *Device) Activate(*virtio.Activation) error {
	return errors.New("vhostnet: the device's queues are served by the kernel's vhost-net; use a transport that supports virtio.Handoff")
}

// KickFD implements virtio.Handoff.
func (d *Device) KickFD(q int) int {
	if q < 0 || q >= len(d.kick) {
		return -1
	}
	return d.kick[q].FD()
}

// Kick implements virtio.Handoff.
func (d *Device) Kick(q int) {
	if q >= 0 && q < len(d.kick) {
		_ = d.kick[q].Trigger()
	}
}

// InterruptsChanged implements virtio.Handoff: the device's goroutine
// moves the kernel's call eventfds to the irqfds or back.
func (d *Device) InterruptsChanged() {
	select {
	case d.irqs <- struct{}{}:
	default:
	}
}

// MAC returns the NIC's current address.
func (d *Device) MAC() stdnet.HardwareAddr { return d.ctl.MAC() }

// SetLink sets the link status the guest sees.
func (d *Device) SetLink(up bool) { d.ctl.SetLink(up) }

// Announce asks the guest to announce itself (after a migration).
func (d *Device) Announce() bool { return d.ctl.Announce() }

// pairsOf is the number of queue pairs an activation with features f
// has: all of them with MQ, else one.
func (d *Device) pairsOf(f uint64) int {
	if f&virtionet.FeatureMQ != 0 {
		return d.pairs
	}
	return 1
}

// ActivateHandoff implements virtio.Handoff: it checks the activation
// and leaves the hand-over to the device's goroutine; a failure there
// sets DEVICE_NEEDS_RESET.
func (d *Device) ActivateHandoff(h *virtio.HandoffActivation) error {
	if h.Features&^d.features != 0 {
		return fmt.Errorf("vhostnet: features %#x were not offered", h.Features&^d.features)
	}
	if len(h.Queues) != len(d.kick) {
		return fmt.Errorf("vhostnet: %d queues, the device has %d", len(h.Queues), len(d.kick))
	}
	if h.Queues[virtionet.RxQueue] == nil || h.Queues[virtionet.TxQueue] == nil {
		return fmt.Errorf("vhostnet: %w", virtionet.ErrNoQueue)
	}
	if h.Features&virtionet.FeatureCtrlVQ != 0 && h.Queues[2*d.pairsOf(h.Features)] == nil {
		return fmt.Errorf("vhostnet: the control queue: %w", virtionet.ErrNoQueue)
	}
	d.act.Store(h)
	select {
	case d.cmds <- func() { d.activate(h) }:
		return nil
	case <-d.stopped:
		d.act.Store(nil)
		return errClosed
	default:
		d.act.Store(nil)
		return errors.New("vhostnet: the device is busy with an earlier activation")
	}
}

// activate starts the control side and, unless the device waits for a
// restore or a TAP, the kernel's rings.
func (d *Device) activate(a *virtio.HandoffActivation) {
	if d.act.Load() != a {
		return // reset meanwhile
	}
	clear(d.bases) // a new activation's rings start at 0
	if d.cfg.Deferred && d.restored == nil && d.held {
		return // RestoreState and Take start it
	}
	if err := d.begin(a); err != nil {
		d.broken(err)
		return
	}
	if !d.held && !d.paused {
		if err := d.startRings(a); err != nil {
			d.broken(err)
		}
	}
}

// Reset implements virtio.Device: when it returns the kernel no longer
// touches the rings and the control queue is not served.
func (d *Device) Reset() {
	_ = d.exec(func() {
		if err := d.stopRings(); err != nil {
			d.log.Warn("stopping the vhost-net rings at a reset", "err", err)
		}
		d.end()
		d.act.Store(nil)
		d.irqMu.Lock() // no Interrupt or Broken after this
		d.irqMu.Unlock()
		d.paused = false
		for i := range d.callTarget {
			d.callTarget[i] = -1
			d.direct[i].Store(false)
		}
	})
}

// Close stops the rings, closes the kernel's instances and ends the
// device's goroutines. The device cannot be used afterwards.
func (d *Device) Close() error {
	d.closing.Do(func() {
		d.Reset()
		_ = d.exec(func() {
			if log := d.dirty.Swap(nil); log != nil {
				log.Close()
			}
		})
		select {
		case d.cmds <- nil:
		case <-d.stopped:
		}
		<-d.stopped
		d.closeFDs() // ends forwardCalls and watchErr
		d.wg.Wait()
	})
	return nil
}

// Err returns why the device last needed a reset, or nil.
func (d *Device) Err() error {
	if p := d.lastErr.Load(); p != nil {
		return *p
	}
	return nil
}

// DirectCall reports whether data queue q's interrupts go from the
// kernel straight to the queue's irqfd.
func (d *Device) DirectCall(q int) bool { return q >= 0 && q < len(d.direct) && d.direct[q].Load() }
