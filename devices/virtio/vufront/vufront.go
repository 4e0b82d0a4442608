// Package vufront is a virtio-blk or virtio-net device whose queues a
// vhost-user back-end serves (vio as the vhost-user front-end): vio keeps
// the PCI transport, the configuration space and the guest's feature
// negotiation; the back-end process reads requests from the rings in
// shared guest RAM and completes them there.
//
// The device is a virtio.Handoff. On DRIVER_OK it sends the back-end the
// memory table, the inflight region and each enabled ring (size,
// addresses, base, kick, call and err eventfds) and enables the rings;
// on reset it stops them with GET_VRING_BASE. The guest's kicks reach the
// back-end through KVM's ioeventfd with no vio code on the way, and so do
// its interrupts while the queue's MSI-X vector is deliverable (the call
// eventfd is the vector's irqfd). While the vector is masked, MSI-X is
// off or there is no irqfd, the back-end signals an eventfd of the
// device's, read by one goroutine per queue, which raises the interrupt
// through the transport (so masking, pending bits and INTx behave exactly
// as for vio's own devices).
//
// When the back-end goes away (killed, restarted) the guest's rings stay
// as they are and the device reconnects to the same socket path until
// Config.ReconnectTimeout, then sets the rings up again from the used
// index in guest memory, handing the new back-end the inflight region
// (INFLIGHT_SHMFD) in which it finds the requests to resubmit. The guest
// sees a pause, not an error. A back-end that comes back different
// (other features), or not at all, gives the device DEVICE_NEEDS_RESET.
//
// All protocol exchanges run on one goroutine (run); every exchange is
// bounded by Config.Timeout, so neither a vCPU nor Reset waits for a
// back-end that stopped answering longer than that.
package vufront

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/kvm"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/vhostuser"
	"github.com/viovmm/vio/virtio"
)

// Defaults.
const (
	DefaultReconnectTimeout = 60 * time.Second
	DefaultQueueSize        = 128
	DefaultNetQueueSize     = 256
	// blkConfigSize is struct virtio_blk_config through
	// write_zeroes_may_unmap and its padding (what QEMU reads too).
	blkConfigSize = 60
	// blkConfigNumQueues is num_queues' offset in it.
	blkConfigNumQueues = 34
	maxBackoff         = 2 * time.Second
	firstBackoff       = 50 * time.Millisecond
)

// blkFeatures are the virtio-blk bits vio passes from a back-end to the
// guest. CONFIG_WCE is left out: the guest's writes to the configuration
// space are not forwarded (no SET_CONFIG), so a writable cache mode
// would be a lie.
const blkFeatures = blk.FeatureSizeMax | blk.FeatureSegMax | blk.FeatureGeometry |
	blk.FeatureRO | blk.FeatureBlkSize | blk.FeatureFlush | blk.FeatureTopology |
	blk.FeatureMQ | blk.FeatureDiscard | blk.FeatureWriteZeroes

// ringFeatures are the transport bits vio's transport can present for a
// split ring it does not serve itself.
const ringFeatures = virtio.FeatureVersion1 | virtio.FeatureEventIdx | virtio.FeatureIndirectDesc

// wantProtocol are the protocol features the device uses when offered.
const wantProtocol = vhostuser.ProtocolMQ | vhostuser.ProtocolReplyAck |
	vhostuser.ProtocolConfig | vhostuser.ProtocolInflightShmfd | vhostuser.ProtocolLogShmfd

// Config describes one vhost-user device.
type Config struct {
	// Type is virtio.TypeBlock (the default) or virtio.TypeNet.
	Type virtio.DeviceType
	// MAC is a NIC's address (nil: a random locally administered one);
	// the back-end is not asked, as vhost-user-net back-ends rarely
	// offer a configuration space.
	MAC net.HardwareAddr
	// Socket is the back-end's UNIX socket.
	Socket string
	// Memory is guest RAM; it must be shared (memfd-backed).
	Memory *memory.Memory
	// NumQueues caps the request queues (0: as many as the back-end has).
	NumQueues int
	// QueueSize is each queue's maximum size (0: DefaultQueueSize for a
	// disk, DefaultNetQueueSize for a NIC).
	QueueSize uint16
	// Timeout bounds each protocol exchange (0: vhostuser.DefaultTimeout).
	Timeout time.Duration
	// ReconnectTimeout is how long a lost back-end is waited for before
	// the device needs a reset (0: DefaultReconnectTimeout).
	ReconnectTimeout time.Duration
	// Log gets connection events (nil: slog.Default()).
	Log *slog.Logger
	// Deferred builds the device without connecting: a restored VM's, or
	// a migration's destination's, whose back-end another VM may still
	// hold. It offers what vio could present until RestoreState gives
	// it what the guest saw, and connects in Take. A disk needs
	// NumQueues then (the source's count), since it cannot ask.
	Deferred bool
}

// Device is a vhost-user front-end device: a virtio-blk or virtio-net
// device whose queues the back-end serves.
type Device struct {
	cfg      Config
	log      *slog.Logger
	features uint64 // offered to the guest
	// offered and protocol are what the back-end offered and the
	// protocol features negotiated at the first connection (or the
	// source's, restored); factsMu guards them for readers off the
	// device's goroutine.
	factsMu  sync.Mutex
	offered  uint64
	protocol uint64
	config   []byte // a disk's virtio_blk_config from GET_CONFIG (num_queues ours), a NIC's of vio's
	maxSizes []uint16
	kick     []*kvm.EventFD
	call     []*kvm.EventFD
	errFD    *kvm.EventFD
	cmds     chan command
	irqs     chan struct{} // InterruptsChanged, coalesced
	stopped  chan struct{}
	wg       sync.WaitGroup
	active   atomic.Pointer[virtio.HandoffActivation]
	// irqMu is held (read) by the goroutines that call the active
	// HandoffActivation's Interrupt and Broken; a reset takes it once,
	// after clearing active, so that none calls them after Reset returns.
	irqMu     sync.RWMutex
	closeOnce sync.Once

	// dirty is a migration's dirty log while one runs (migrate.go).
	dirty atomic.Pointer[vhostuser.DirtyLog]

	// Owned by run.
	conn *connection
	// held: the back-end is not this device's to use now (a Deferred
	// device not yet taken, or one released for a migration's
	// destination): no connecting, no reconnecting, until Take.
	held bool
	// paused: Pause stopped the rings (GET_VRING_BASE), and bases holds
	// where each resumes; restored: RestoreState set the guest's view.
	paused     bool
	bases      []uint16
	restored   bool
	callTarget []int         // per queue, the call eventfd the back-end has (-1: none yet)
	direct     []atomic.Bool // per queue, callTarget is an irqfd (for DirectCall)
	inflight   vhostuser.Inflight
	inflightFD int // -1: none
	// For tests and logs.
	reconnects atomic.Uint64
	lastErr    atomic.Pointer[error]
}

// connection is one connected back-end.
type connection struct {
	fe      *vhostuser.Frontend
	offered uint64        // GET_FEATURES
	hup     chan struct{} // closed when the back-end hangs up
	watch   func()        // stops the hang-up watcher
}

type command struct {
	op   int
	act  *virtio.HandoffActivation
	fn   func(*loop) // runs on the device's goroutine (op unused)
	done chan struct{}
}

const (
	opActivate = iota
	opReset
	opClose
)

var (
	_ virtio.Handoff = (*Device)(nil)
	// ErrBackend reports a back-end vio cannot use or lost.
	ErrBackend = errors.New("vhost-user back-end")
)

// New connects to the back-end at cfg.Socket and learns the disk from it
// (features, queues, configuration space). The connection is kept for
// the guest's first activation.
func New(cfg Config) (*Device, error) {
	if cfg.Memory == nil {
		return nil, errors.New("vufront: no guest memory")
	}
	if regs := cfg.Memory.Regions(); len(regs) > 0 {
		if _, _, ok := regs[0].File(); !ok {
			return nil, fmt.Errorf("vhost-user %s %s needs guest RAM another process can map: add shared=on to --memory (e.g. --memory size=1G,shared=on)", kindOf(cfg.Type), cfg.Socket)
		}
	}
	if cfg.ReconnectTimeout <= 0 {
		cfg.ReconnectTimeout = DefaultReconnectTimeout
	}
	switch cfg.Type {
	case 0:
		cfg.Type = virtio.TypeBlock
	case virtio.TypeBlock, virtio.TypeNet:
	default:
		return nil, fmt.Errorf("vufront: device type %d: vio serves vhost-user disks and NICs only", cfg.Type)
	}
	if cfg.QueueSize == 0 {
		cfg.QueueSize = DefaultQueueSize
		if cfg.Type == virtio.TypeNet {
			cfg.QueueSize = DefaultNetQueueSize
		}
	}
	if s := cfg.QueueSize; s&(s-1) != 0 || s > virtio.MaxQueueSize {
		return nil, fmt.Errorf("vhost-user %s %s: queue_size %d is not a power of two up to %d", kindOf(cfg.Type), cfg.Socket, s, virtio.MaxQueueSize)
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	d := &Device{
		cfg: cfg, log: cfg.Log.With("vhost-user", cfg.Socket), inflightFD: -1,
		// Buffered: ActivateHandoff runs on a vCPU and must not wait
		// for run to finish an exchange.
		cmds: make(chan command, 2), irqs: make(chan struct{}, 1), stopped: make(chan struct{}),
	}
	if cfg.Deferred {
		if err := d.assume(); err != nil {
			return nil, err
		}
		d.held = true
		if err := d.makeEventFDs(); err != nil {
			d.closeEventFDs()
			return nil, err
		}
		d.wg.Add(1)
		go d.run()
		return d, nil
	}
	c, err := d.firstConnect()
	if err != nil {
		return nil, err
	}
	if err := d.learn(c); err != nil {
		d.drop(c)
		return nil, fmt.Errorf("vhost-user back-end at %s: %w", cfg.Socket, err)
	}
	d.conn = c
	d.log.Info("vhost-user back-end connected", "features", fmt.Sprintf("%#x", d.offered), "protocol", fmt.Sprintf("%#x", d.protocol), "queues", len(d.maxSizes))
	if err := d.makeEventFDs(); err != nil {
		d.drop(c)
		d.closeEventFDs()
		return nil, err
	}
	d.wg.Add(1)
	go d.run()
	return d, nil
}

// learn reads what the back-end offers at the first connection and
// decides the guest's view.
func (d *Device) learn(c *connection) error {
	fe := c.fe
	d.offered = c.offered
	if d.offered&virtio.FeatureVersion1 == 0 {
		return errors.New("it does not offer VIRTIO_F_VERSION_1, which vio's virtio-pci transport needs")
	}
	d.protocol = fe.ProtocolFeatures()
	if d.cfg.Type == virtio.TypeNet {
		return d.learnNet()
	}
	if d.protocol&vhostuser.ProtocolConfig == 0 {
		return errors.New("it does not offer the CONFIG protocol feature, without which vio cannot learn the disk's size")
	}
	cfg, err := fe.GetConfig(0, blkConfigSize)
	if err != nil {
		return fmt.Errorf("reading its configuration space: %w", err)
	}
	queues := 1
	if d.offered&blk.FeatureMQ != 0 {
		queues = int(binary.LittleEndian.Uint16(cfg[blkConfigNumQueues:]))
	}
	if d.protocol&vhostuser.ProtocolMQ != 0 {
		n, err := fe.GetQueueNum()
		if err != nil {
			return err
		}
		queues = min(queues, int(n))
	}
	if d.cfg.NumQueues > 0 {
		queues = min(queues, d.cfg.NumQueues)
	}
	if queues < 1 || queues > vhostuser.MaxVrings {
		return fmt.Errorf("it reports %d request queues", queues)
	}
	binary.LittleEndian.PutUint16(cfg[blkConfigNumQueues:], uint16(queues))
	d.config = cfg
	d.features = d.offered & (d.typeFeatures() | ringFeatures)
	d.maxSizes = make([]uint16, queues)
	for i := range d.maxSizes {
		d.maxSizes[i] = d.cfg.QueueSize
	}
	return nil
}

func (d *Device) makeEventFDs() error {
	var err error
	if d.errFD, err = kvm.NewEventFD(); err != nil {
		return err
	}
	d.callTarget = make([]int, len(d.maxSizes))
	d.direct = make([]atomic.Bool, len(d.maxSizes))
	for i := range d.maxSizes {
		d.callTarget[i] = -1
		k, err := kvm.NewEventFD()
		if err != nil {
			return err
		}
		d.kick = append(d.kick, k)
		c, err := kvm.NewEventFD()
		if err != nil {
			return err
		}
		d.call = append(d.call, c)
	}
	// One goroutine per queue forwards the back-end's calls; one
	// watches the err eventfd. All end when Close closes the eventfds.
	for q, c := range d.call {
		d.wg.Add(1)
		go d.forwardCalls(q, c)
	}
	d.wg.Add(1)
	go d.watchErr()
	return nil
}

func (d *Device) closeEventFDs() {
	for _, e := range append(append([]*kvm.EventFD{d.errFD}, d.kick...), d.call...) {
		if e != nil {
			e.Close()
		}
	}
}

func (d *Device) forwardCalls(q int, c *kvm.EventFD) {
	defer d.wg.Done()
	for {
		if _, err := c.Wait(); err != nil {
			return
		}
		d.irqMu.RLock()
		if a := d.active.Load(); a != nil {
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
		d.irqMu.RLock()
		if a := d.active.Load(); a != nil {
			err := fmt.Errorf("%w at %s reported a queue error; the guest must reset the device", ErrBackend, d.cfg.Socket)
			d.lastErr.Store(&err)
			d.log.Error("vhost-user device needs a reset", "err", err)
			a.Broken(err)
		}
		d.irqMu.RUnlock()
	}
}

// Type implements virtio.Device.
func (d *Device) Type() virtio.DeviceType { return d.cfg.Type }

// Features implements virtio.Device: the back-end's offer limited to
// what vio presents, transport bits included (see virtio.Handoff).
func (d *Device) Features() uint64 { return d.features }

// QueueMaxSizes implements virtio.Device.
func (d *Device) QueueMaxSizes() []uint16 { return d.maxSizes }

// ReadConfig implements virtio.Device from the configuration the
// back-end gave at the first connection.
func (d *Device) ReadConfig(offset uint64, data []byte) {
	clear(data)
	if offset < uint64(len(d.config)) {
		copy(data, d.config[offset:])
	}
}

// WriteConfig implements virtio.Device: nothing in the configuration is
// writable without CONFIG_WCE, which is not offered.
func (d *Device) WriteConfig(uint64, []byte) {}

// Activate implements virtio.Device; the transport calls ActivateHandoff
// instead.
func (d *Device) Activate(*virtio.Activation) error {
	return errors.New("vufront: the device's queues are served by a vhost-user back-end; use a transport that supports virtio.Handoff")
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
// moves the back-end's call eventfds to the irqfds or back.
func (d *Device) InterruptsChanged() {
	select {
	case d.irqs <- struct{}{}:
	default:
	}
}

// callFD is where queue q's back-end should signal: the queue's irqfd
// when its vector is deliverable now (no vio code per interrupt), else
// the device's own eventfd, whose goroutine raises the interrupt through
// the transport (masking and INTx then behave as for vio's own devices).
func (d *Device) callFD(a *virtio.HandoffActivation, q int) int {
	if a.DirectInterrupt != nil {
		if fd, ok := a.DirectInterrupt(q); ok {
			return fd
		}
	}
	return d.call[q].FD()
}

// retarget moves each running ring's call eventfd where callFD says.
// Between the guest's mask and the back-end's SET_VRING_CALL (one
// exchange on this goroutine) an interrupt may still reach the irqfd:
// the guest sees a spurious one, which drivers tolerate; none is lost.
func (d *Device) retarget() error {
	a := d.active.Load()
	if a == nil || d.conn == nil {
		return nil
	}
	for i, q := range a.Queues {
		if q == nil || d.callTarget[i] < 0 {
			continue
		}
		fd := d.callFD(a, i)
		if fd == d.callTarget[i] {
			continue
		}
		if err := d.conn.fe.SetVringCall(uint32(i), fd); err != nil {
			return err
		}
		// A call that reached the old eventfd before the switch is still
		// delivered, by its goroutine.
		d.callTarget[i] = fd
		d.direct[i].Store(fd != d.call[i].FD())
	}
	return nil
}

// ActivateHandoff implements virtio.Handoff: the rings are handed over
// on the device's goroutine; a failure there sets DEVICE_NEEDS_RESET.
func (d *Device) ActivateHandoff(h *virtio.HandoffActivation) error {
	if h.Features&^d.features != 0 {
		return fmt.Errorf("vufront: features %#x were not offered", h.Features&^d.features)
	}
	if len(h.Queues) != len(d.maxSizes) {
		return fmt.Errorf("vufront: %d queues, the device has %d", len(h.Queues), len(d.maxSizes))
	}
	d.active.Store(h)
	select {
	case d.cmds <- command{op: opActivate, act: h}:
		return nil
	case <-d.stopped:
		d.active.Store(nil)
		return errors.New("vufront: device closed")
	default:
		// Never on the transport's path (one activation, then one reset
		// that waits): refuse rather than hold a vCPU.
		d.active.Store(nil)
		return errors.New("vufront: the device is busy with an earlier activation")
	}
}

// Reset implements virtio.Device: the back-end stops the rings
// (GET_VRING_BASE) before it returns, or the connection is dropped.
func (d *Device) Reset() { d.do(opReset) }

// Close stops the rings, disconnects and ends the device's goroutines.
// The device cannot be used afterwards.
func (d *Device) Close() error {
	d.closeOnce.Do(func() {
		d.do(opClose)
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

// Inflight reports whether the back-end keeps an inflight region
// (INFLIGHT_SHMFD), without which a reconnection may lose or repeat the
// requests it had taken.
func (d *Device) Inflight() bool {
	d.factsMu.Lock()
	defer d.factsMu.Unlock()
	return d.protocol&vhostuser.ProtocolInflightShmfd != 0
}

// DirectCall reports whether queue q's back-end signals the queue's
// irqfd itself (its vector deliverable), rather than vio's eventfd.
func (d *Device) DirectCall(q int) bool { return q >= 0 && q < len(d.direct) && d.direct[q].Load() }

// Reconnects reports how many times the device reconnected to a back-end
// that had gone away while the guest used it.
func (d *Device) Reconnects() uint64 { return d.reconnects.Load() }

func (d *Device) do(op int) {
	done := make(chan struct{})
	select {
	case d.cmds <- command{op: op, done: done}:
		// The command may sit in the buffer of a goroutine that has
		// ended (a Reset after Close).
		select {
		case <-done:
		case <-d.stopped:
		}
	case <-d.stopped:
	}
}

// errClosed: the device was closed.
var errClosed = errors.New("vufront: device closed")

// exec runs fn on the device's goroutine and waits for it.
func (d *Device) exec(fn func(*loop)) error {
	done := make(chan struct{})
	select {
	case d.cmds <- command{fn: fn, done: done}:
		select {
		case <-done:
			return nil
		case <-d.stopped:
			return errClosed
		}
	case <-d.stopped:
		return errClosed
	}
}
