// Package net is virtio-net (virtio 1.2 section 5.1): a NIC on any
// netdev.Backend, with one receive and one transmit queue.
//
// Transmit is zero-copy: the device copies and checks the 12-byte header
// of each chain and hands the back-end a gather list of that copy and the
// frame's buffers in guest memory (a TAP writes it with one writev).
// Receive reads batches of frames from the back-end into host buffers and
// copies each into the guest's buffers, spreading a large frame over
// several of them with VIRTIO_NET_F_MRG_RXBUF.
//
// Receive applies backpressure instead of dropping: the device reads from
// the back-end only while the guest has posted receive buffers, and a
// frame that does not fit yet waits until the guest posts more (its kick
// wakes the device). The back-end (a TAP's queue, say) holds the rest.
//
// Offloads follow the back-end: when it implements netdev.Offloader, the
// device offers checksum offload and TSO in both directions as far as the
// back-end supports them, and tells it what the guest accepted. UFO is
// never offered (Linux no longer produces it), nor USO.
package net

import (
	"crypto/rand"
	"errors"
	"fmt"
	stdnet "net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/virtio"
)

// Feature bits (spec 5.1.3).
const (
	FeatureCsum       uint64 = 1 << 0
	FeatureGuestCsum  uint64 = 1 << 1
	FeatureMTU        uint64 = 1 << 3
	FeatureMAC        uint64 = 1 << 5
	FeatureGuestTSO4  uint64 = 1 << 7
	FeatureGuestTSO6  uint64 = 1 << 8
	FeatureGuestECN   uint64 = 1 << 9
	FeatureGuestUFO   uint64 = 1 << 10
	FeatureHostTSO4   uint64 = 1 << 11
	FeatureHostTSO6   uint64 = 1 << 12
	FeatureHostECN    uint64 = 1 << 13
	FeatureHostUFO    uint64 = 1 << 14
	FeatureMrgRxbuf   uint64 = 1 << 15
	FeatureStatus     uint64 = 1 << 16
	FeatureCtrlVQ     uint64 = 1 << 17
	FeatureMQ         uint64 = 1 << 22
	FeatureSpeedDuplx uint64 = 1 << 63
)

// StatusLinkUp is VIRTIO_NET_S_LINK_UP in the status field.
const StatusLinkUp = 1

// Queue indexes.
const (
	RxQueue = 0
	TxQueue = 1
)

// Configuration space offsets (struct virtio_net_config).
const (
	cfgMAC       = 0
	cfgStatus    = 6
	cfgMaxPairs  = 8
	cfgMTU       = 10
	cfgLength    = 12
	defaultQueue = 256

	// txBatch bounds the frames handed to the back-end in one call;
	// rxBatch the frames read from it at once (each needs a
	// MaxPacketLen host buffer).
	txBatch = 64
	rxBatch = 8
)

// Config describes a virtio-net device.
type Config struct {
	// MAC is the device's address; nil picks a random locally
	// administered unicast address.
	MAC stdnet.HardwareAddr
	// QueueSize is the maximum size of each queue, a power of two
	// (default 256).
	QueueSize uint16
	// MTU, if set, is offered with VIRTIO_NET_F_MTU (68 to 65535).
	MTU uint16
	// NoOffloads withholds every checksum and segmentation offload even
	// when the back-end supports them.
	NoOffloads bool
}

// Device is a virtio-net device.
type Device struct {
	be       netdev.Backend
	offl     netdev.Offloader // nil: the back-end takes no offloads
	cfg      Config
	mac      [6]byte
	features uint64

	linkUp atomic.Bool
	stats  counters

	mu     sync.Mutex // guards the running activation and the receive buffers
	run    *activation
	rxBufs [][]byte // host buffers for frames read from the back-end, kept across resets
}

var _ virtio.Device = (*Device)(nil)

// Errors.
var (
	ErrConfig  = errors.New("net: bad configuration")
	ErrNoQueue = errors.New("net: receive or transmit queue not enabled")
	ErrActive  = errors.New("net: already active")
)

// New returns a virtio-net device on be. The device does not own be: the
// caller closes it after the device is reset for good.
func New(be netdev.Backend, cfg Config) (*Device, error) {
	if be == nil {
		return nil, fmt.Errorf("%w: no back-end", ErrConfig)
	}
	d := &Device{be: be, cfg: cfg}
	switch {
	case cfg.MAC == nil:
		if _, err := rand.Read(d.mac[:]); err != nil {
			return nil, fmt.Errorf("net: random MAC: %w", err)
		}
		d.mac[0] = d.mac[0]&^1 | 2 // unicast, locally administered
	case len(cfg.MAC) != 6 || cfg.MAC[0]&1 != 0:
		return nil, fmt.Errorf("%w: MAC %v is not a unicast Ethernet address", ErrConfig, cfg.MAC)
	default:
		copy(d.mac[:], cfg.MAC)
	}
	if d.cfg.QueueSize == 0 {
		d.cfg.QueueSize = defaultQueue
	}
	if s := d.cfg.QueueSize; s&(s-1) != 0 || s < 2 || s > virtio.MaxQueueSize {
		return nil, fmt.Errorf("%w: queue size %d", ErrConfig, s)
	}
	if cfg.MTU != 0 && cfg.MTU < 68 {
		return nil, fmt.Errorf("%w: MTU %d", ErrConfig, cfg.MTU)
	}
	d.features = FeatureMAC | FeatureStatus | FeatureMrgRxbuf
	if cfg.MTU != 0 {
		d.features |= FeatureMTU
	}
	if o, ok := be.(netdev.Offloader); ok && !cfg.NoOffloads {
		d.offl = o
		d.features |= offloadFeatures(o.Offloads())
	}
	d.linkUp.Store(true)
	return d, nil
}

// offloadFeatures maps what a back-end supports to feature bits. The
// same set serves both directions: a back-end that delivers an offload
// also accepts it.
func offloadFeatures(o netdev.Offloads) uint64 {
	if o&netdev.OffloadCsum == 0 {
		return 0 // segmentation needs checksum offload
	}
	f := FeatureCsum | FeatureGuestCsum
	if o&netdev.OffloadTSO4 != 0 {
		f |= FeatureHostTSO4 | FeatureGuestTSO4
	}
	if o&netdev.OffloadTSO6 != 0 {
		f |= FeatureHostTSO6 | FeatureGuestTSO6
	}
	if o&netdev.OffloadTSOECN != 0 && o&(netdev.OffloadTSO4|netdev.OffloadTSO6) != 0 {
		f |= FeatureHostECN | FeatureGuestECN
	}
	return f
}

// txOffloads is what the guest may send with the negotiated features.
func txOffloads(f uint64) netdev.Offloads {
	var o netdev.Offloads
	if f&FeatureCsum != 0 {
		o |= netdev.OffloadCsum
	}
	if f&FeatureHostTSO4 != 0 {
		o |= netdev.OffloadTSO4
	}
	if f&FeatureHostTSO6 != 0 {
		o |= netdev.OffloadTSO6
	}
	if f&FeatureHostECN != 0 {
		o |= netdev.OffloadTSOECN
	}
	return o
}

// rxOffloads is what the guest accepts with the negotiated features.
func rxOffloads(f uint64) netdev.Offloads {
	var o netdev.Offloads
	if f&FeatureGuestCsum != 0 {
		o |= netdev.OffloadCsum
	}
	if f&FeatureGuestTSO4 != 0 {
		o |= netdev.OffloadTSO4
	}
	if f&FeatureGuestTSO6 != 0 {
		o |= netdev.OffloadTSO6
	}
	if f&FeatureGuestECN != 0 {
		o |= netdev.OffloadTSOECN
	}
	return o
}

// Type implements virtio.Device.
func (*Device) Type() virtio.DeviceType { return virtio.TypeNet }

// Features implements virtio.Device.
func (d *Device) Features() uint64 { return d.features }

// QueueMaxSizes implements virtio.Device: receiveq1 and transmitq1.
func (d *Device) QueueMaxSizes() []uint16 { return []uint16{d.cfg.QueueSize, d.cfg.QueueSize} }

// MAC returns the device's address.
func (d *Device) MAC() stdnet.HardwareAddr { return append(stdnet.HardwareAddr(nil), d.mac[:]...) }

// ReadConfig implements virtio.Device.
func (d *Device) ReadConfig(offset uint64, data []byte) {
	clear(data)
	if offset >= cfgLength {
		return
	}
	var b [cfgLength]byte
	copy(b[cfgMAC:], d.mac[:])
	if d.linkUp.Load() {
		b[cfgStatus] = StatusLinkUp
	}
	b[cfgMaxPairs] = 1
	b[cfgMTU], b[cfgMTU+1] = byte(d.cfg.MTU), byte(d.cfg.MTU>>8)
	copy(data, b[offset:])
}

// WriteConfig implements virtio.Device: the configuration is read-only
// for a virtio 1.x driver (the MAC is set through the control queue,
// which this device does not offer).
func (*Device) WriteConfig(uint64, []byte) {}

// SetLink sets the link status the driver sees (VIRTIO_NET_F_STATUS) and
// tells an active driver with a configuration change interrupt.
func (d *Device) SetLink(up bool) {
	if d.linkUp.Swap(up) == up {
		return
	}
	d.mu.Lock()
	var notify func()
	if d.run != nil {
		notify = d.run.configChanged
	}
	d.mu.Unlock()
	if notify != nil {
		notify()
	}
}

// activation is one Activate..Reset period.
type activation struct {
	stop          chan struct{}
	wg            sync.WaitGroup
	rx, tx        *virtio.Queue
	configChanged func()
}

// Activate implements virtio.Device: it starts the receive and transmit
// goroutines.
func (d *Device) Activate(a *virtio.Activation) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.run != nil {
		return ErrActive
	}
	if len(a.Queues) != 2 || a.Queues[RxQueue] == nil || a.Queues[TxQueue] == nil {
		return ErrNoQueue
	}
	if d.offl != nil {
		if err := d.offl.SetRecvOffloads(rxOffloads(a.Features)); err != nil {
			return fmt.Errorf("net: %w", err)
		}
	}
	run := &activation{stop: make(chan struct{}), rx: a.Queues[RxQueue], tx: a.Queues[TxQueue], configChanged: a.ConfigChanged}
	if run.configChanged == nil {
		run.configChanged = func() {}
	}
	if err := d.be.SetReadDeadline(time.Time{}); err != nil {
		return fmt.Errorf("net: %w", err)
	}
	tx := &txServer{d: d, q: run.tx, stop: run.stop, allowed: txOffloads(a.Features)}
	rx := newRxServer(d, run.rx, run.stop, a.Features)
	run.wg.Add(2)
	go func() { defer run.wg.Done(); tx.serve() }()
	go func() { defer run.wg.Done(); rx.serve() }()
	d.run = run
	return nil
}

// Reset implements virtio.Device. The receive goroutine may be blocked in
// the back-end's ReadFrames: a read deadline in the past ends that wait.
func (d *Device) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	run := d.run
	if run == nil {
		return
	}
	close(run.stop)
	d.be.SetReadDeadline(time.Unix(1, 0))
	run.wg.Wait()
	d.be.SetReadDeadline(time.Time{})
	for _, q := range []*virtio.Queue{run.rx, run.tx} {
		st := q.Stats()
		d.stats.interrupts.Add(st.Interrupts)
		d.stats.badChains.Add(st.BadChains)
	}
	d.run = nil
}

// Stats are the device's counters since it was created.
type Stats struct {
	// Frames and bytes (without the virtio-net header) sent to and
	// received from the back-end.
	TxFrames, TxBytes, RxFrames, RxBytes uint64
	// TxErrors are transmit chains refused by validation (short, too
	// long, bad or unnegotiated header); TxDropped frames the back-end
	// refused or lost after it closed.
	TxErrors, TxDropped uint64
	// RxErrors are frames from the back-end the guest cannot take (bad
	// header, offload it did not negotiate, larger than its buffers) and
	// receive buffers too small to use; RxDropped frames lost to a reset.
	RxErrors, RxDropped uint64
	// RxMerged counts frames spread over more than one buffer; RxWaits
	// the times receive stopped until the guest posted buffers.
	RxMerged, RxWaits uint64
	// Notifications (driver kicks observed, both queues), interrupts
	// sent, and chains the virtqueue core rejected.
	Notifications, Interrupts, BadChains uint64
}

type counters struct {
	txFrames, txBytes, rxFrames, rxBytes atomic.Uint64
	txErrors, txDropped, rxErrors        atomic.Uint64
	rxDropped, rxMerged, rxWaits         atomic.Uint64
	notifications, interrupts, badChains atomic.Uint64
}

// Stats returns the device's counters.
func (d *Device) Stats() Stats {
	c := &d.stats
	s := Stats{
		TxFrames: c.txFrames.Load(), TxBytes: c.txBytes.Load(), RxFrames: c.rxFrames.Load(), RxBytes: c.rxBytes.Load(),
		TxErrors: c.txErrors.Load(), TxDropped: c.txDropped.Load(), RxErrors: c.rxErrors.Load(), RxDropped: c.rxDropped.Load(),
		RxMerged: c.rxMerged.Load(), RxWaits: c.rxWaits.Load(),
		Notifications: c.notifications.Load(), Interrupts: c.interrupts.Load(), BadChains: c.badChains.Load(),
	}
	d.mu.Lock()
	if d.run != nil {
		for _, q := range []*virtio.Queue{d.run.rx, d.run.tx} {
			st := q.Stats()
			s.Interrupts += st.Interrupts
			s.BadChains += st.BadChains
		}
	}
	d.mu.Unlock()
	return s
}
