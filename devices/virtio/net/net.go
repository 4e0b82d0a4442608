// Package net is virtio-net (virtio 1.2 section 5.1): a NIC on any
// netdev.Backend, with one receive/transmit queue pair per back-end
// (VIRTIO_NET_F_MQ when there are several) and a control queue.
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
//
// The control queue (VIRTIO_NET_F_CTRL_VQ) serves the number of queue
// pairs in use (MQ), the MAC address (CTRL_MAC_ADDR) and the
// acknowledgement of announcements (GUEST_ANNOUNCE). Receive filtering
// (CTRL_RX, CTRL_VLAN) is not offered: the guest sees every frame the
// back-end delivers, as with a NIC in promiscuous mode.
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
	"github.com/viovmm/vio/state"
	"github.com/viovmm/vio/virtio"
)

// Feature bits (spec 5.1.3).
const (
	FeatureCsum      uint64 = 1 << 0
	FeatureGuestCsum uint64 = 1 << 1
	FeatureMTU       uint64 = 1 << 3
	FeatureMAC       uint64 = 1 << 5
	FeatureGuestTSO4 uint64 = 1 << 7
	FeatureGuestTSO6 uint64 = 1 << 8
	FeatureGuestECN  uint64 = 1 << 9
	FeatureGuestUFO  uint64 = 1 << 10
	FeatureHostTSO4  uint64 = 1 << 11
	FeatureHostTSO6  uint64 = 1 << 12
	FeatureHostECN   uint64 = 1 << 13
	FeatureHostUFO   uint64 = 1 << 14
	FeatureMrgRxbuf  uint64 = 1 << 15
	FeatureStatus    uint64 = 1 << 16
	FeatureCtrlVQ    uint64 = 1 << 17
	FeatureCtrlRx    uint64 = 1 << 18
	FeatureCtrlVLAN  uint64 = 1 << 19
	FeatureAnnounce  uint64 = 1 << 21
	FeatureMQ        uint64 = 1 << 22
	FeatureCtrlMAC   uint64 = 1 << 23
	// FeatureStandby says the device is the standby of a primary NIC
	// with the same MAC address, which the guest will find elsewhere
	// (Linux puts both under one net_failover device).
	FeatureStandby     uint64 = 1 << 62
	FeatureSpeedDuplex uint64 = 1 << 63
)

// Bits of the status field.
const (
	StatusLinkUp   = 1 // VIRTIO_NET_S_LINK_UP
	StatusAnnounce = 2 // VIRTIO_NET_S_ANNOUNCE
)

// Queue indexes: pair i uses RxQueue+2i and TxQueue+2i; the control
// queue follows the last pair the driver can use (index 2 without MQ,
// 2×pairs with it).
const (
	RxQueue = 0
	TxQueue = 1
)

// MaxPairs bounds the queue pairs of a device.
const MaxPairs = 64

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
	// when the back-ends support them.
	NoOffloads bool
	// NoControlQueue withholds the control queue (and with it MQ,
	// CTRL_MAC_ADDR and GUEST_ANNOUNCE).
	NoControlQueue bool
	// ExternalQueues says that something else serves the receive and
	// transmit queues (the kernel's vhost-net, on the same back-ends):
	// Activate then takes activations without them and serves only the
	// control queue, while the back-ends are still told the receive
	// offloads the guest accepted and which queues are in use. The
	// device never reads or writes a frame then.
	ExternalQueues bool
	// Standby offers VIRTIO_NET_F_STANDBY: the device backs up a
	// pass-through NIC that has its MAC address.
	Standby bool
}

// Device is a virtio-net device.
type Device struct {
	bes      []netdev.Backend   // one per queue pair
	offl     []netdev.Offloader // nil: the back-ends take no offloads
	cfg      Config
	features uint64
	// wmu serialises the writes to each back-end (which takes one
	// writer at a time): the pair's transmit goroutine and SelfAnnounce.
	wmu []sync.Mutex

	mac      atomic.Uint64 // 48 bits, byte 0 lowest
	linkUp   atomic.Bool
	announce atomic.Bool
	pairs    atomic.Uint32 // queue pairs the driver uses
	stats    counters
	pairStat []pairCounters // per queue pair

	mu     sync.Mutex // guards the running activation and the receive buffers
	run    *activation
	rxBufs [][][]byte // per pair: host buffers for frames read from the back-end, kept across resets

	// pairsMu orders changes of the pair count: a change closes
	// pairsChanged (and makes a new one), waking the receive goroutines
	// of pairs that were out of use; and it guards the queue switches of
	// the back-ends and what they were last told (queueOn).
	pairsMu      sync.Mutex
	pairsChanged chan struct{}
	queueOn      []bool
}

var _ virtio.Device = (*Device)(nil)

// Errors.
var (
	ErrConfig  = errors.New("net: bad configuration")
	ErrNoQueue = errors.New("net: required queue not enabled")
	ErrActive  = errors.New("net: already active")
)

// New returns a virtio-net device with one queue pair on be. The device
// does not own be: the caller closes it after the device is reset for
// good.
func New(be netdev.Backend, cfg Config) (*Device, error) {
	return NewMultiQueue([]netdev.Backend{be}, cfg)
}

// NewMultiQueue returns a virtio-net device with one queue pair per
// back-end (for instance the queues of tap.OpenQueues); more than one
// offers VIRTIO_NET_F_MQ. Offloads are offered as far as every back-end
// supports them. Back-ends that implement netdev.QueueSwitch are switched
// off while the driver does not use their pair, so that a multi-queue TAP
// steers no traffic to a queue nobody reads.
func NewMultiQueue(bes []netdev.Backend, cfg Config) (*Device, error) {
	if len(bes) == 0 || len(bes) > MaxPairs {
		return nil, fmt.Errorf("%w: %d back-ends", ErrConfig, len(bes))
	}
	for _, be := range bes {
		if be == nil {
			return nil, fmt.Errorf("%w: nil back-end", ErrConfig)
		}
	}
	if len(bes) > 1 && cfg.NoControlQueue {
		return nil, fmt.Errorf("%w: several queue pairs need the control queue", ErrConfig)
	}
	d := &Device{bes: bes, cfg: cfg, wmu: make([]sync.Mutex, len(bes))}
	var mac [6]byte
	switch {
	case cfg.MAC == nil:
		if _, err := rand.Read(mac[:]); err != nil {
			return nil, fmt.Errorf("net: random MAC: %w", err)
		}
		mac[0] = mac[0]&^1 | 2 // unicast, locally administered
	case len(cfg.MAC) != 6 || cfg.MAC[0]&1 != 0:
		return nil, fmt.Errorf("%w: MAC %v is not a unicast Ethernet address", ErrConfig, cfg.MAC)
	default:
		copy(mac[:], cfg.MAC)
	}
	d.setMAC(mac)
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
	if cfg.Standby {
		d.features |= FeatureStandby
	}
	if cfg.MTU != 0 {
		d.features |= FeatureMTU
	}
	if !cfg.NoControlQueue {
		d.features |= FeatureCtrlVQ | FeatureCtrlMAC | FeatureAnnounce
		if len(bes) > 1 {
			d.features |= FeatureMQ
		}
	}
	if !cfg.NoOffloads {
		common := ^netdev.Offloads(0)
		for _, be := range bes {
			o, ok := be.(netdev.Offloader)
			if !ok {
				common = 0
				d.offl = nil
				break
			}
			d.offl = append(d.offl, o)
			common &= o.Offloads()
		}
		if d.offl != nil {
			d.features |= offloadFeatures(common)
		}
	}
	d.linkUp.Store(true)
	d.pairs.Store(1)
	d.pairsChanged = make(chan struct{})
	d.queueOn = make([]bool, len(bes))
	d.rxBufs = make([][][]byte, len(bes))
	d.pairStat = make([]pairCounters, len(bes))
	return d, nil
}

func (d *Device) setMAC(m [6]byte) {
	var v uint64
	for i, b := range m {
		v |= uint64(b) << (8 * i)
	}
	d.mac.Store(v)
}

func (d *Device) macBytes() [6]byte {
	var m [6]byte
	v := d.mac.Load()
	for i := range m {
		m[i] = byte(v >> (8 * i))
	}
	return m
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

// QueueMaxSizes implements virtio.Device: a receive and a transmit queue
// per pair, then the control queue (if offered).
func (d *Device) QueueMaxSizes() []uint16 {
	n := 2 * len(d.bes)
	if d.features&FeatureCtrlVQ != 0 {
		n++
	}
	s := make([]uint16, n)
	for i := range s {
		s[i] = d.cfg.QueueSize
	}
	return s
}

// MAC returns the device's current address (the driver may change it
// through the control queue).
func (d *Device) MAC() stdnet.HardwareAddr {
	m := d.macBytes()
	return append(stdnet.HardwareAddr(nil), m[:]...)
}

// ReadConfig implements virtio.Device.
func (d *Device) ReadConfig(offset uint64, data []byte) {
	clear(data)
	if offset >= cfgLength {
		return
	}
	var b [cfgLength]byte
	m := d.macBytes()
	copy(b[cfgMAC:], m[:])
	if d.linkUp.Load() {
		b[cfgStatus] |= StatusLinkUp
	}
	if d.announce.Load() {
		b[cfgStatus] |= StatusAnnounce
	}
	b[cfgMaxPairs] = byte(len(d.bes))
	b[cfgMTU], b[cfgMTU+1] = byte(d.cfg.MTU), byte(d.cfg.MTU>>8)
	copy(data, b[offset:])
}

// WriteConfig implements virtio.Device: the configuration is read-only
// for a virtio 1.x driver (the MAC is set through the control queue).
func (*Device) WriteConfig(uint64, []byte) {}

// configChanged raises the configuration interrupt if a driver is active.
func (d *Device) configChanged() {
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

// SetLink sets the link status the driver sees (VIRTIO_NET_F_STATUS) and
// tells an active driver with a configuration change interrupt.
func (d *Device) SetLink(up bool) {
	if d.linkUp.Swap(up) != up {
		d.configChanged()
	}
}

// Announce asks the guest to announce itself on the network (gratuitous
// ARP and neighbour advertisements), as after a live migration. It
// reports false if the driver did not negotiate GUEST_ANNOUNCE.
func (d *Device) Announce() bool {
	d.mu.Lock()
	ok := d.run != nil && d.run.features&FeatureAnnounce != 0
	d.mu.Unlock()
	if !ok {
		return false
	}
	d.announce.Store(true)
	d.configChanged()
	return true
}

// activation is one Activate..Reset period.
type activation struct {
	stop          chan struct{}
	gate          *state.Gate // Pause and Resume
	paused        atomic.Bool // a Pause succeeded and no Resume followed
	wg            sync.WaitGroup
	features      uint64
	queues        []*virtio.Queue    // every queue served, for stats
	pairQueues    [][2]*virtio.Queue // per pair: receive and transmit queue, nil if left out
	rx            []*rxServer        // per pair; nil for a pair the driver left out
	configChanged func()
}

// goServe runs f on a goroutine of the activation, counted in its gate.
func (run *activation) goServe(f func()) {
	run.wg.Add(1)
	run.gate.Join()
	go func() {
		defer run.wg.Done()
		defer run.gate.Leave()
		f()
	}()
}

// Activate implements virtio.Device: it starts a receive and a transmit
// goroutine per queue pair the driver enabled, and one for the control
// queue.
func (d *Device) Activate(a *virtio.Activation) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.run != nil {
		return ErrActive
	}
	f := a.Features
	pairs := 1
	if f&FeatureMQ != 0 {
		pairs = len(d.bes)
	}
	queue := func(i int) *virtio.Queue {
		if i < len(a.Queues) {
			return a.Queues[i]
		}
		return nil
	}
	if !d.cfg.ExternalQueues && (queue(RxQueue) == nil || queue(TxQueue) == nil) {
		return ErrNoQueue
	}
	var ctrl *virtio.Queue
	if f&FeatureCtrlVQ != 0 {
		if ctrl = queue(2 * pairs); ctrl == nil {
			return ErrNoQueue
		}
	}
	for i, o := range d.offl {
		if i >= pairs {
			break
		}
		if err := o.SetRecvOffloads(rxOffloads(f)); err != nil {
			return fmt.Errorf("net: %w", err)
		}
	}
	for _, be := range d.bes[:pairs] {
		if err := be.SetReadDeadline(time.Time{}); err != nil {
			return fmt.Errorf("net: %w", err)
		}
	}
	run := &activation{stop: make(chan struct{}), gate: state.NewGate(), features: f, configChanged: a.ConfigChanged,
		rx: make([]*rxServer, pairs), pairQueues: make([][2]*virtio.Queue, pairs)}
	if run.configChanged == nil {
		run.configChanged = func() {}
	}
	// Until the driver says otherwise, only the first pair is in use
	// (spec 5.1.6.5.5). What the back-ends were told before the reset is
	// not trusted: each is told again.
	d.setPairs(1, true)
	for i := range pairs {
		rxq, txq := queue(RxQueue+2*i), queue(TxQueue+2*i)
		if rxq == nil || txq == nil || d.cfg.ExternalQueues {
			continue // a pair the driver left out, or one served elsewhere
		}
		if d.rxBufs[i] == nil {
			d.rxBufs[i] = make([][]byte, rxBatch)
			for k := range d.rxBufs[i] {
				d.rxBufs[i][k] = make([]byte, netdev.MaxPacketLen)
			}
		}
		pc := &d.pairStat[i]
		tx := &txServer{d: d, pc: pc, be: d.bes[i], wmu: &d.wmu[i], q: txq, stop: run.stop, gate: run.gate, allowed: txOffloads(f)}
		rx := newRxServer(d, pc, d.bes[i], d.rxBufs[i], rxq, run.stop, run.gate, f)
		rx.pair = i
		run.rx[i] = rx
		run.queues = append(run.queues, rxq, txq)
		run.pairQueues[i] = [2]*virtio.Queue{rxq, txq}
		run.goServe(tx.serve)
		run.goServe(rx.serve)
	}
	if ctrl != nil {
		c := &ctrlServer{d: d, q: ctrl, stop: run.stop, gate: run.gate, features: f, maxPairs: pairs}
		run.queues = append(run.queues, ctrl)
		run.goServe(c.serve)
	}
	d.run = run
	return nil
}

// setPairs makes the first n queue pairs the ones in use: receive
// goroutines of the other pairs deliver nothing (spec 5.1.6.5.5: no
// packets on receive queues beyond the driver's count), and back-ends that
// implement netdev.QueueSwitch are turned on or off to match, so that a
// multi-queue TAP steers no flow to a queue nobody reads. Only back-ends
// whose state changes are told, unless all is set: switching a TAP queue
// takes the host's RTNL lock and waits for an RCU grace period, which a
// guest repeating the same command should not make it do again.
func (d *Device) setPairs(n int, all bool) {
	d.pairsMu.Lock()
	defer d.pairsMu.Unlock()
	if int(d.pairs.Swap(uint32(n))) != n {
		close(d.pairsChanged)
		d.pairsChanged = make(chan struct{})
	}
	for i, be := range d.bes {
		on := i < n
		if !all && d.queueOn[i] == on {
			continue
		}
		d.queueOn[i] = on
		if s, ok := be.(netdev.QueueSwitch); ok {
			// Failing to switch leaves the kernel steering some flows to
			// a queue read late; it is not worth failing the guest for.
			_ = s.SetQueueEnabled(on)
		}
	}
}

// pairsInUse returns the number of pairs in use and a channel closed when
// it changes.
func (d *Device) pairsInUse() (int, <-chan struct{}) {
	d.pairsMu.Lock()
	defer d.pairsMu.Unlock()
	return int(d.pairs.Load()), d.pairsChanged
}

// Reset implements virtio.Device. Receive goroutines may be blocked in
// their back-end's ReadFrames: a read deadline in the past ends that wait.
func (d *Device) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	run := d.run
	if run == nil {
		return
	}
	close(run.stop)
	for _, be := range d.bes {
		be.SetReadDeadline(time.Unix(1, 0))
	}
	run.wg.Wait()
	for _, be := range d.bes {
		be.SetReadDeadline(time.Time{})
	}
	for _, q := range run.queues {
		st := q.Stats()
		d.stats.interrupts.Add(st.Interrupts)
		d.stats.badChains.Add(st.BadChains)
	}
	for i, qs := range run.pairQueues {
		if qs[0] != nil {
			d.pairStat[i].rxInterrupts.Add(qs[0].Stats().Interrupts)
			d.pairStat[i].txInterrupts.Add(qs[1].Stats().Interrupts)
		}
	}
	d.announce.Store(false)
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
	// RxUnused counts receive chains returned with length 0 at a pause
	// because they could not be handed back to the ring untouched.
	RxUnused uint64
	// RxMerged counts frames spread over more than one buffer; RxWaits
	// the times receive stopped until the guest posted buffers.
	RxMerged, RxWaits uint64
	// Notifications (driver kicks observed, all queues), interrupts
	// sent, and chains the virtqueue core rejected.
	Notifications, Interrupts, BadChains uint64
	// Control queue commands served, and those answered with an error.
	CtrlCommands, CtrlErrors uint64
}

type counters struct {
	txFrames, txBytes, rxFrames, rxBytes atomic.Uint64
	txErrors, txDropped, rxErrors        atomic.Uint64
	rxDropped, rxMerged, rxWaits         atomic.Uint64
	rxUnused                             atomic.Uint64
	notifications, interrupts, badChains atomic.Uint64
	ctrlCommands, ctrlErrors             atomic.Uint64
}

// QueueStats are one queue pair's counters since the device was created:
// with several pairs, they show how the guest and the back-end spread the
// traffic (the guest picks a transmit queue per CPU, a multi-queue TAP a
// receive queue per flow).
type QueueStats struct {
	// Frames and bytes (without the virtio-net header) the pair's receive
	// queue gave the guest and its transmit queue sent to the back-end.
	RxFrames, RxBytes, TxFrames, TxBytes uint64
	// Interrupts sent for the pair's receive and transmit queues.
	RxInterrupts, TxInterrupts uint64
}

type pairCounters struct {
	rxFrames, rxBytes, txFrames, txBytes atomic.Uint64
	rxInterrupts, txInterrupts           atomic.Uint64 // of activations that ended
}

// QueueStats returns the counters of each queue pair the device has
// (whether or not the driver uses it), pair 0 first.
func (d *Device) QueueStats() []QueueStats {
	out := make([]QueueStats, len(d.pairStat))
	for i := range d.pairStat {
		c := &d.pairStat[i]
		out[i] = QueueStats{
			RxFrames: c.rxFrames.Load(), RxBytes: c.rxBytes.Load(), TxFrames: c.txFrames.Load(), TxBytes: c.txBytes.Load(),
			RxInterrupts: c.rxInterrupts.Load(), TxInterrupts: c.txInterrupts.Load(),
		}
	}
	d.mu.Lock()
	if d.run != nil {
		for i, qs := range d.run.pairQueues {
			if qs[0] != nil {
				out[i].RxInterrupts += qs[0].Stats().Interrupts
				out[i].TxInterrupts += qs[1].Stats().Interrupts
			}
		}
	}
	d.mu.Unlock()
	return out
}

// Stats returns the device's counters.
func (d *Device) Stats() Stats {
	c := &d.stats
	s := Stats{
		TxFrames: c.txFrames.Load(), TxBytes: c.txBytes.Load(), RxFrames: c.rxFrames.Load(), RxBytes: c.rxBytes.Load(),
		TxErrors: c.txErrors.Load(), TxDropped: c.txDropped.Load(), RxErrors: c.rxErrors.Load(), RxDropped: c.rxDropped.Load(),
		RxMerged: c.rxMerged.Load(), RxWaits: c.rxWaits.Load(), RxUnused: c.rxUnused.Load(),
		Notifications: c.notifications.Load(), Interrupts: c.interrupts.Load(), BadChains: c.badChains.Load(),
		CtrlCommands: c.ctrlCommands.Load(), CtrlErrors: c.ctrlErrors.Load(),
	}
	d.mu.Lock()
	if d.run != nil {
		for _, q := range d.run.queues {
			st := q.Stats()
			s.Interrupts += st.Interrupts
			s.BadChains += st.BadChains
		}
	}
	d.mu.Unlock()
	return s
}
