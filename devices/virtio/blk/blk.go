// Package blk is virtio-blk (virtio 1.2 section 5.2): a disk on any
// block.Backend.
//
// Each request queue is served by its own goroutine, which takes chains off
// the available ring and hands them to a small pool of workers, so that
// several requests of one queue are in flight on the back-end at once.
// Completions go back to the queue's goroutine, which returns them to the
// used ring (in completion order, which virtio allows) and interrupts the
// driver once per batch. Data moves between the back-end and guest memory
// directly (readv/writev on the descriptors' buffers): there is no bounce
// copy in the device.
//
// A hostile driver gets the defined status for a bad request: IOERR for a
// short header, a length that is not a multiple of 512 bytes, a range
// beyond the capacity or a write to a read-only disk; UNSUPP for unknown or
// unnegotiated request types. A chain without a single writable byte has
// nowhere to put a status and is returned with length 0.
package blk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/internal/latency"
	"github.com/viovmm/vio/irq/coalesce"
	"github.com/viovmm/vio/state"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/ringpoll"
)

// Feature bits (spec 5.2.3).
const (
	FeatureSizeMax     uint64 = 1 << 1
	FeatureSegMax      uint64 = 1 << 2
	FeatureGeometry    uint64 = 1 << 4
	FeatureRO          uint64 = 1 << 5
	FeatureBlkSize     uint64 = 1 << 6
	FeatureFlush       uint64 = 1 << 9
	FeatureTopology    uint64 = 1 << 10
	FeatureConfigWCE   uint64 = 1 << 11
	FeatureMQ          uint64 = 1 << 12
	FeatureDiscard     uint64 = 1 << 13
	FeatureWriteZeroes uint64 = 1 << 14
)

// Request types (spec 5.2.6).
const (
	TypeIn          = 0
	TypeOut         = 1
	TypeFlush       = 4
	TypeGetID       = 8
	TypeGetLifetime = 10
	TypeDiscard     = 11
	TypeWriteZeroes = 13
	TypeSecureErase = 14
)

// Request status values.
const (
	StatusOK     = 0
	StatusIOErr  = 1
	StatusUnsupp = 2
)

// Sizes fixed by the specification.
const (
	SectorSize  = 512
	HeaderSize  = 16 // struct virtio_blk_req up to the data: type, reserved, sector
	SegmentSize = 16 // struct virtio_blk_discard_write_zeroes
	IDBytes     = 20 // VIRTIO_BLK_ID_BYTES: the serial returned by GET_ID

	// flags of a discard / write-zeroes segment
	segmentUnmap = 1
)

// Configuration space offsets (struct virtio_blk_config).
const (
	cfgCapacity          = 0
	cfgSizeMax           = 8
	cfgSegMax            = 12
	cfgBlkSize           = 20
	cfgPhysBlockExp      = 24
	cfgAlignmentOffset   = 25
	cfgMinIOSize         = 26
	cfgOptIOSize         = 28
	cfgWriteback         = 32
	cfgNumQueues         = 34
	cfgMaxDiscardSectors = 36
	cfgMaxDiscardSeg     = 40
	cfgDiscardAlignment  = 44
	cfgMaxWZSectors      = 48
	cfgMaxWZSeg          = 52
	cfgWZMayUnmap        = 56
	cfgLength            = 60 // through unused1; secure erase and zoned are not offered
)

// Defaults and limits of Config.
const (
	DefaultQueueSize   = 256
	DefaultWorkers     = 8
	DefaultMaxSegments = 32
	MaxNumQueues       = 64
	MaxWorkers         = 64
	// MaxSegments bounds max_discard_seg / max_write_zeroes_seg: the
	// device copies a request's segments out of guest memory, and this
	// keeps that copy small (4 KiB).
	MaxSegments = 256
	// DefaultMaxZeroSectors is the default per-segment bound of discard
	// and write-zeroes requests (1 GiB).
	DefaultMaxZeroSectors = 1 << 21
)

// Config describes a virtio-blk device. The zero value, with a back-end,
// is a writable single-queue disk with 512-byte blocks.
type Config struct {
	// Serial is returned by GET_ID (at most IDBytes bytes).
	Serial string
	// ReadOnly offers VIRTIO_BLK_F_RO and fails writes. A back-end that
	// reports itself read-only (block.ReadOnlyReporter) forces it.
	ReadOnly bool
	// NumQueues is the number of request queues (default 1); more than
	// one offers VIRTIO_BLK_F_MQ. Each queue is served by its own
	// goroutine.
	NumQueues int
	// QueueSize is each queue's maximum size, a power of two (default 256).
	QueueSize uint16
	// Workers bounds the requests of one queue that run on the back-end
	// concurrently (default 8).
	Workers int
	// Coalesce is the completion interrupt policy (default off: one
	// interrupt per batch of completions).
	Coalesce coalesce.Config
	// BlockSize is the logical block size reported in blk_size, a power of
	// two from 512 to 4096 (default 512). Requests still address 512-byte
	// sectors.
	BlockSize uint32
	// PhysicalBlockExp, MinIOSize and OptIOSize, if any is set, are
	// offered as VIRTIO_BLK_F_TOPOLOGY: physical blocks of
	// BlockSize<<PhysicalBlockExp bytes, I/O sizes in logical blocks.
	PhysicalBlockExp uint8
	MinIOSize        uint16
	OptIOSize        uint32
	// SizeMax, if set, is offered as VIRTIO_BLK_F_SIZE_MAX: no single data
	// buffer of a request may be larger (requests breaking it fail with
	// IOERR).
	SizeMax uint32
	// Writethrough makes the disk start with its write cache disabled:
	// every write is flushed before it completes. The driver can change it
	// through the writeback field (VIRTIO_BLK_F_CONFIG_WCE). Set it when
	// the back-end's cache mode gives the guest no volatile cache.
	Writethrough bool
	// MaxDiscardSegments and MaxWriteZeroesSegments bound the segments of
	// one request (default 32, at most MaxSegments);
	// MaxDiscardSectors and MaxWriteZeroesSectors bound one segment
	// (default DefaultMaxZeroSectors).
	MaxDiscardSegments, MaxWriteZeroesSegments uint32
	MaxDiscardSectors, MaxWriteZeroesSectors   uint32
	// NoDiscard and NoWriteZeroes withhold the features even when the
	// back-end could serve them.
	NoDiscard, NoWriteZeroes bool
	// Poll is how long each queue's goroutine keeps polling the
	// available ring after a batch, with the driver's notifications
	// disabled, before it sleeps (default off; see package ringpoll).
	Poll ringpoll.Config
	// NoInlineReads sends every read to a worker, even one the back-end
	// could serve at once from a cache (block.TryReader), which the
	// queue's goroutine otherwise serves itself. NoDirectCompletion makes
	// workers always hand completions back to the queue's goroutine,
	// even when it sleeps and the request was the only one in flight.
	// Both shortcuts save a thread wake-up per request; the switches are
	// there to measure them (the environment variables VIO_BLK_INLINE=off
	// and VIO_BLK_DIRECT_COMPLETE=off set them for every device New
	// makes).
	NoInlineReads, NoDirectCompletion bool
	// OnBackendError, if set, is told of each request the back-end
	// failed (op is "read", "write", "flush", ...), on the worker that
	// served it: it must not block.
	OnBackendError func(op string, err error)
}

// Device is a virtio-blk device.
type Device struct {
	be       block.Backend
	cfg      Config // normalised
	features uint64
	serial   [IDBytes]byte
	discard  block.Discarder  // nil: no discard
	zeroer   block.ZeroWriter // nil: zeroes are written
	readOnly bool
	// tryReader serves reads inline (nil: not offered, or switched off);
	// noTry is set for good once it says it never can.
	tryReader block.TryReader
	noTry     atomic.Bool

	capacity  atomic.Uint64 // in sectors
	wce       atomic.Bool   // the writeback field
	negotiate atomic.Uint64 // negotiated features of the current activation

	stats   counters
	latency [numOps]latency.Histogram

	mu     sync.Mutex // guards the running activation
	run    *activation
	served int // queues served one at a time (ServeQueue, served.go)
	closed bool
}

var _ virtio.Device = (*Device)(nil)

// Errors.
var (
	ErrConfig     = errors.New("blk: bad configuration")
	ErrNoQueue    = errors.New("blk: no request queue enabled")
	ErrActive     = errors.New("blk: already active")
	ErrNotResizer = errors.New("blk: back-end cannot resize")
)

// New returns a virtio-blk device on be. The device does not own be: the
// caller closes it after the device is reset for good.
func New(be block.Backend, cfg Config) (*Device, error) {
	if be == nil {
		return nil, fmt.Errorf("%w: no back-end", ErrConfig)
	}
	if len(cfg.Serial) > IDBytes {
		return nil, fmt.Errorf("%w: serial %q longer than %d bytes", ErrConfig, cfg.Serial, IDBytes)
	}
	if cfg.NumQueues == 0 {
		cfg.NumQueues = 1
	}
	if cfg.NumQueues < 1 || cfg.NumQueues > MaxNumQueues {
		return nil, fmt.Errorf("%w: %d queues", ErrConfig, cfg.NumQueues)
	}
	if cfg.QueueSize == 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	// A request needs a header and a status descriptor besides its data.
	if s := cfg.QueueSize; s&(s-1) != 0 || s < 4 || s > virtio.MaxQueueSize {
		return nil, fmt.Errorf("%w: queue size %d", ErrConfig, s)
	}
	if cfg.Workers == 0 {
		cfg.Workers = DefaultWorkers
	}
	if cfg.Workers < 1 || cfg.Workers > MaxWorkers {
		return nil, fmt.Errorf("%w: %d workers", ErrConfig, cfg.Workers)
	}
	if err := cfg.Coalesce.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if err := cfg.Poll.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	// For A/B measurements of the shortcuts (docs/disks.md, "Fast path").
	if os.Getenv("VIO_BLK_INLINE") == "off" {
		cfg.NoInlineReads = true
	}
	if os.Getenv("VIO_BLK_DIRECT_COMPLETE") == "off" {
		cfg.NoDirectCompletion = true
	}
	if cfg.BlockSize == 0 {
		cfg.BlockSize = SectorSize
	}
	if b := cfg.BlockSize; b&(b-1) != 0 || b < SectorSize || b > 4096 {
		return nil, fmt.Errorf("%w: block size %d", ErrConfig, b)
	}
	if cfg.PhysicalBlockExp > 15 {
		return nil, fmt.Errorf("%w: physical block exponent %d", ErrConfig, cfg.PhysicalBlockExp)
	}
	for _, p := range []*uint32{&cfg.MaxDiscardSegments, &cfg.MaxWriteZeroesSegments} {
		if *p == 0 {
			*p = DefaultMaxSegments
		}
		if *p > MaxSegments {
			return nil, fmt.Errorf("%w: %d discard/write-zeroes segments", ErrConfig, *p)
		}
	}
	for _, p := range []*uint32{&cfg.MaxDiscardSectors, &cfg.MaxWriteZeroesSectors} {
		if *p == 0 {
			*p = DefaultMaxZeroSectors
		}
	}
	d := &Device{be: be, cfg: cfg}
	copy(d.serial[:], cfg.Serial)
	d.readOnly = cfg.ReadOnly
	if r, ok := be.(block.ReadOnlyReporter); ok && r.ReadOnly() {
		d.readOnly = true
	}
	d.capacity.Store(uint64(be.Size()) / SectorSize)
	d.wce.Store(!cfg.Writethrough)

	d.features = FeatureSegMax | FeatureBlkSize | FeatureFlush | FeatureConfigWCE
	if cfg.SizeMax != 0 {
		d.features |= FeatureSizeMax
	}
	if d.readOnly {
		d.features |= FeatureRO
	}
	if cfg.PhysicalBlockExp != 0 || cfg.MinIOSize != 0 || cfg.OptIOSize != 0 {
		d.features |= FeatureTopology
	}
	if cfg.NumQueues > 1 {
		d.features |= FeatureMQ
	}
	if disc, ok := be.(block.Discarder); ok && !d.readOnly && !cfg.NoDiscard {
		d.discard = disc
		d.features |= FeatureDiscard
	}
	if z, ok := be.(block.ZeroWriter); ok {
		d.zeroer = z
	}
	if tr, ok := be.(block.TryReader); ok && !cfg.NoInlineReads {
		d.tryReader = tr
	}
	if !d.readOnly && !cfg.NoWriteZeroes {
		// Without a ZeroWriter the device writes zeroes itself.
		d.features |= FeatureWriteZeroes
	}
	return d, nil
}

// Type implements virtio.Device.
func (*Device) Type() virtio.DeviceType { return virtio.TypeBlock }

// Features implements virtio.Device.
func (d *Device) Features() uint64 { return d.features }

// QueueMaxSizes implements virtio.Device.
func (d *Device) QueueMaxSizes() []uint16 {
	s := make([]uint16, d.cfg.NumQueues)
	for i := range s {
		s[i] = d.cfg.QueueSize
	}
	return s
}

// segMax is the number of data buffers a request may have: the whole
// chain must fit the device's maximum queue size, and the header and
// status take two descriptors. A queue made smaller than that still
// takes chains this long (newServer: virtio.Queue.AllowChains).
func (d *Device) segMax() uint32 { return uint32(d.cfg.QueueSize) - 2 }

// configImage renders struct virtio_blk_config.
func (d *Device) configImage() [cfgLength]byte {
	var b [cfgLength]byte
	le := binary.LittleEndian
	le.PutUint64(b[cfgCapacity:], d.capacity.Load())
	le.PutUint32(b[cfgSizeMax:], d.cfg.SizeMax)
	le.PutUint32(b[cfgSegMax:], d.segMax())
	le.PutUint32(b[cfgBlkSize:], d.cfg.BlockSize)
	b[cfgPhysBlockExp] = d.cfg.PhysicalBlockExp
	le.PutUint16(b[cfgMinIOSize:], d.cfg.MinIOSize)
	le.PutUint32(b[cfgOptIOSize:], d.cfg.OptIOSize)
	if d.wce.Load() {
		b[cfgWriteback] = 1
	}
	le.PutUint16(b[cfgNumQueues:], uint16(d.cfg.NumQueues))
	if d.features&FeatureDiscard != 0 {
		le.PutUint32(b[cfgMaxDiscardSectors:], d.cfg.MaxDiscardSectors)
		le.PutUint32(b[cfgMaxDiscardSeg:], d.cfg.MaxDiscardSegments)
		le.PutUint32(b[cfgDiscardAlignment:], d.cfg.BlockSize/SectorSize)
	}
	if d.features&FeatureWriteZeroes != 0 {
		le.PutUint32(b[cfgMaxWZSectors:], d.cfg.MaxWriteZeroesSectors)
		le.PutUint32(b[cfgMaxWZSeg:], d.cfg.MaxWriteZeroesSegments)
		if d.zeroer != nil {
			b[cfgWZMayUnmap] = 1
		}
	}
	return b
}

// ReadConfig implements virtio.Device.
func (d *Device) ReadConfig(offset uint64, data []byte) {
	clear(data)
	if offset >= cfgLength {
		return
	}
	img := d.configImage()
	copy(data, img[offset:])
}

// WriteConfig implements virtio.Device: only writeback is writable
// (VIRTIO_BLK_F_CONFIG_WCE); the rest ignores writes.
func (d *Device) WriteConfig(offset uint64, data []byte) {
	if offset <= cfgWriteback && offset+uint64(len(data)) > cfgWriteback {
		d.wce.Store(data[cfgWriteback-offset] != 0)
	}
}

// writeback reports whether completed writes may sit in a volatile cache
// until FLUSH (spec 5.2.6.3): the writeback field when the driver
// negotiated CONFIG_WCE, otherwise exactly when it negotiated FLUSH.
func (d *Device) writeback() bool {
	f := d.negotiate.Load()
	if f&FeatureConfigWCE != 0 {
		return d.wce.Load()
	}
	return f&FeatureFlush != 0
}

// Capacity returns the disk's size in 512-byte sectors.
func (d *Device) Capacity() uint64 { return d.capacity.Load() }

// Resize grows or shrinks the back-end (which must implement
// block.Resizer) to size bytes and tells an active driver through a
// configuration change interrupt. Requests beyond the new capacity fail
// from then on.
func (d *Device) Resize(size int64) error {
	r, ok := d.be.(block.Resizer)
	if !ok {
		return ErrNotResizer
	}
	if size < 0 {
		return fmt.Errorf("%w: size %d", ErrConfig, size)
	}
	if err := r.Resize(size); err != nil {
		return fmt.Errorf("blk: resize: %w", err)
	}
	d.capacity.Store(uint64(d.be.Size()) / SectorSize)
	d.mu.Lock()
	var notify func()
	if d.run != nil {
		notify = d.run.configChanged
	}
	d.mu.Unlock()
	if notify != nil {
		notify()
	}
	return nil
}

// activation is the state of one Activate..Reset period.
type activation struct {
	stop          chan struct{}
	gate          *state.Gate // Pause and Resume
	wg            sync.WaitGroup
	queues        []*virtio.Queue
	configChanged func()
}

// Activate implements virtio.Device: it starts one goroutine per enabled
// queue.
func (d *Device) Activate(a *virtio.Activation) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.run != nil || d.served > 0 {
		return ErrActive
	}
	run := &activation{stop: make(chan struct{}), gate: state.NewGate(), configChanged: a.ConfigChanged}
	for _, q := range a.Queues {
		if q != nil {
			run.queues = append(run.queues, q)
		}
	}
	if len(run.queues) == 0 {
		return ErrNoQueue
	}
	if run.configChanged == nil {
		run.configChanged = func() {}
	}
	d.negotiate.Store(a.Features)
	for _, q := range run.queues {
		s := newServer(d, q, run.stop)
		s.gate = run.gate
		run.wg.Add(1)
		run.gate.Join()
		go func() {
			defer run.wg.Done()
			defer run.gate.Leave()
			s.serve()
		}()
	}
	d.run = run
	return nil
}

// Reset implements virtio.Device: it returns once every queue goroutine
// and every request in flight has finished (a request already on the
// back-end is waited for, since it reads into guest memory).
func (d *Device) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	run := d.run
	if run == nil {
		return
	}
	close(run.stop)
	// A request held back by a throttle would keep the reset waiting for
	// the rate limit: have such requests fail instead (the driver that
	// sent them is resetting the device and takes nothing back).
	if dr, ok := d.be.(block.Drainer); ok {
		dr.Drain(true)
		defer dr.Drain(false)
	}
	run.wg.Wait()
	for _, q := range run.queues {
		st := q.Stats()
		d.stats.interrupts.Add(st.Interrupts)
		d.stats.badChains.Add(st.BadChains)
	}
	d.run = nil
	d.negotiate.Store(0)
	d.wce.Store(!d.cfg.Writethrough)
}

// Stats are the device's counters since it was created.
type Stats struct {
	// Requests by type.
	Reads, Writes, Flushes, GetIDs, Discards, WriteZeroes, Other uint64
	// Bytes moved by successful reads and writes.
	ReadBytes, WrittenBytes uint64
	// Requests completed with IOERR, with UNSUPP, and chains returned
	// without a status because they had no writable byte.
	IOErrors, Unsupported, NoStatus uint64
	BackendErrors                   uint64 // IOErrors the back-end caused
	// Notifications is the number of times a queue goroutine woke for a
	// driver notification (kicks coalesce while it is busy).
	Notifications uint64
	// Interrupts is the number of used-ring interrupts sent; BadChains the
	// chains the virtqueue core rejected before the device saw them.
	Interrupts, BadChains uint64
	// MaxInFlight is the largest number of requests of one queue seen in
	// flight at once.
	MaxInFlight uint64
	// Coalesced is the number of completions that waited for a later
	// batch's interrupt (Config.Coalesce); CoalesceDelay the time they
	// waited in all.
	Coalesced     uint64
	CoalesceDelay time.Duration
	// InlineReads is the number of reads a queue's goroutine served
	// itself, the back-end having the data at hand (block.TryReader);
	// InlineMisses the tries that would have waited and went to a worker.
	InlineReads, InlineMisses uint64
	// DirectCompletions is the number of requests a worker returned to
	// the used ring itself, the queue's goroutine being asleep.
	DirectCompletions uint64
	// Polls is the number of times a queue's goroutine polled the
	// available ring after a batch (Config.Poll), PolledChains the
	// chains those polls found, and PollTime the time they took.
	Polls, PolledChains uint64
	PollTime            time.Duration
}

type counters struct {
	reads, writes, flushes, getIDs, discards, writeZeroes, other atomic.Uint64
	readBytes, writtenBytes                                      atomic.Uint64
	ioErrors, unsupported, noStatus                              atomic.Uint64
	backendErrors                                                atomic.Uint64
	notifications, interrupts, badChains, maxInFlight            atomic.Uint64
	coalesced, coalesceDelay                                     atomic.Uint64
	inlineReads, inlineMisses, directCompletions                 atomic.Uint64
	polls, polledChains, pollTime                                atomic.Uint64
}

// Stats returns the device's counters.
func (d *Device) Stats() Stats {
	c := &d.stats
	s := Stats{
		Reads: c.reads.Load(), Writes: c.writes.Load(), Flushes: c.flushes.Load(),
		GetIDs: c.getIDs.Load(), Discards: c.discards.Load(), WriteZeroes: c.writeZeroes.Load(),
		Other: c.other.Load(), ReadBytes: c.readBytes.Load(), WrittenBytes: c.writtenBytes.Load(),
		IOErrors: c.ioErrors.Load(), Unsupported: c.unsupported.Load(), NoStatus: c.noStatus.Load(),
		BackendErrors: c.backendErrors.Load(),
		Notifications: c.notifications.Load(), Interrupts: c.interrupts.Load(),
		BadChains: c.badChains.Load(), MaxInFlight: c.maxInFlight.Load(),
		Coalesced: c.coalesced.Load(), CoalesceDelay: time.Duration(c.coalesceDelay.Load()),
		InlineReads: c.inlineReads.Load(), InlineMisses: c.inlineMisses.Load(),
		DirectCompletions: c.directCompletions.Load(),
		Polls:             c.polls.Load(), PolledChains: c.polledChains.Load(),
		PollTime: time.Duration(c.pollTime.Load()),
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

func (c *counters) noteInFlight(n int) {
	for {
		old := c.maxInFlight.Load()
		if uint64(n) <= old || c.maxInFlight.CompareAndSwap(old, uint64(n)) {
			return
		}
	}
}

// capacityOK reports whether n sectors at sector lie within the disk,
// without overflow.
func capacityOK(sector, n, capacity uint64) bool {
	return sector <= capacity && n <= capacity-sector
}
