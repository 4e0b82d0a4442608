// Package balloon is virtio-balloon (virtio 1.2 section 5.5): the host
// asks the guest for memory by setting a target, the guest hands pages
// over (inflate) or takes them back (deflate) by page frame number, and
// the host really gives the pages it got back to the host kernel, so that
// several guests can be promised more RAM than the host has.
//
// What is offered: VIRTIO_BALLOON_F_STATS_VQ always (the guest's memory
// statistics, refreshed on request), and, when the Config asks,
// VIRTIO_BALLOON_F_DEFLATE_ON_OOM (the guest may take pages back under
// memory pressure without being asked) and VIRTIO_BALLOON_F_REPORTING
// (the guest hands over free pages for the host to release, and takes
// them back simply by using them). MUST_TELL_HOST is not offered: a
// deflated page needs nothing from the host, it faults back in on first
// touch. FREE_PAGE_HINT (a migration aid) and PAGE_POISON are not offered.
//
// Everything in a request is the guest's: every page frame number is
// checked against guest RAM, and a number outside it is counted and
// skipped, never released and never a panic.
package balloon

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/state"
	"github.com/viovmm/vio/virtio"
)

// Feature bits (spec 5.5.3).
const (
	FeatureMustTellHost uint64 = 1 << 0
	FeatureStatsVQ      uint64 = 1 << 1
	FeatureDeflateOnOOM uint64 = 1 << 2
	FeatureFreePageHint uint64 = 1 << 3
	FeaturePagePoison   uint64 = 1 << 4
	FeatureReporting    uint64 = 1 << 5
)

// PageSize is the balloon's page: page frame numbers count 4 KiB pages
// whatever the guest's own page size (VIRTIO_BALLOON_PFN_SHIFT).
const PageSize = 4096

// QueueSize is every queue's maximum size. Linux needs at least 32 on
// the reporting queue (it reports up to 32 ranges at once).
const QueueSize = 128

// MaxPFNsPerRequest bounds the page numbers read from one inflate or
// deflate request (Linux sends 256); the rest of a longer request is
// counted as bad and ignored, so that one request cannot keep the device
// busy for long.
const MaxPFNsPerRequest = 1 << 16

// Configuration space offsets (spec 5.5.4).
const (
	cfgNumPages = 0 // le32, the target in pages, written by the device
	cfgActual   = 4 // le32, pages in the balloon, written by the driver
	cfgLength   = 8 // free_page_hint_cmd_id and poison_val are not offered
)

// RAM is guest memory as the balloon needs it: where RAM is, to check
// page numbers, and the means to give pages back to the host.
// *memory.Memory implements it.
type RAM interface {
	// Regions returns guest RAM's regions, fixed for the RAM's life.
	Regions() []memory.Region
	// Discard releases [gpa, gpa+n), page aligned and inside one region;
	// the range reads as zeros (or, for a private file mapping, as the
	// file) afterwards, and a later touch faults a page back in.
	Discard(gpa, n uint64) error
}

var _ RAM = (*memory.Memory)(nil)

// Config selects the optional features.
type Config struct {
	// DeflateOnOOM offers VIRTIO_BALLOON_F_DEFLATE_ON_OOM.
	DeflateOnOOM bool
	// FreePageReporting offers VIRTIO_BALLOON_F_REPORTING.
	FreePageReporting bool
	// StatsInterval, if positive, asks the guest for fresh statistics that
	// often; otherwise they are refreshed only on RequestStats.
	StatsInterval time.Duration
}

// Stats counts what the balloon did; the JSON names are the counter names
// vm.counters shows.
type Stats struct {
	TargetBytes   uint64 `json:"target_bytes"`   // what the host asks the guest to give up
	ActualBytes   uint64 `json:"actual_bytes"`   // what the guest says it gave up
	InflatedPages uint64 `json:"inflated_pages"` // page numbers received on the inflate queue
	DeflatedPages uint64 `json:"deflated_pages"` // page numbers received on the deflate queue
	ReleasedBytes uint64 `json:"released_bytes"` // inflated memory released to the host
	ReportedBytes uint64 `json:"reported_bytes"` // free memory reported and released to the host
	BadPFNs       uint64 `json:"bad_pfns"`       // page numbers outside guest RAM, or beyond MaxPFNsPerRequest
	BadRequests   uint64 `json:"bad_requests"`   // requests of the wrong shape (odd lengths, unaligned reports)
	ReleaseErrors uint64 `json:"release_errors"` // host refusals to release (madvise/fallocate errors)
	StatsUpdates  uint64 `json:"stats_updates"`  // statistics buffers received from the guest
	// Guest is the guest's last statistics report by name (bytes for the
	// memory amounts, counts for the rest); empty until the first.
	Guest map[string]uint64 `json:"guest,omitempty"`
	// GuestAge is how long ago the guest sent them, in milliseconds.
	GuestAgeMs int64 `json:"guest_age_ms,omitempty"`
}

// Device is a virtio-balloon device.
type Device struct {
	ram      RAM
	cfg      Config
	features uint64
	ramSpans []pageSpan // guest RAM in pages, sorted

	mu       sync.Mutex // guards everything below
	numPages uint32     // config num_pages: the target
	actual   uint32     // config actual, as the driver wrote it
	stats    Stats
	guest    map[string]uint64
	guestAt  time.Time
	run      *activation
}

var _ virtio.Device = (*Device)(nil)

// activation is one DRIVER_OK-to-reset period.
type activation struct {
	stop          chan struct{}
	done          chan error
	gate          *state.Gate
	statsReq      chan struct{} // a token: push the held stats buffer
	configChanged func()
}

// New returns a balloon over ram with an empty target.
func New(ram RAM, cfg Config) *Device {
	d := &Device{ram: ram, cfg: cfg, features: FeatureStatsVQ}
	if cfg.DeflateOnOOM {
		d.features |= FeatureDeflateOnOOM
	}
	if cfg.FreePageReporting {
		d.features |= FeatureReporting
	}
	for _, r := range ram.Regions() {
		d.ramSpans = append(d.ramSpans, pageSpan{r.GPA / PageSize, r.End() / PageSize})
	}
	return d
}

// Type implements virtio.Device.
func (*Device) Type() virtio.DeviceType { return virtio.TypeBalloon }

// Features implements virtio.Device.
func (d *Device) Features() uint64 { return d.features }

// QueueMaxSizes implements virtio.Device: inflateq, deflateq, statsq and,
// when reporting is offered, reporting_vq.
//
// The spec numbers the queues 0 to 4 with gaps for absent features, but
// Linux (and so every device that works with it) numbers only the queues
// of negotiated features, in order: with STATS_VQ and REPORTING but not
// FREE_PAGE_HINT the reporting queue is queue 3. Activate assigns queues
// the same way, from the features the driver accepted.
func (d *Device) QueueMaxSizes() []uint16 {
	n := 3
	if d.features&FeatureReporting != 0 {
		n++
	}
	s := make([]uint16, n)
	for i := range s {
		s[i] = QueueSize
	}
	return s
}

// ReadConfig implements virtio.Device.
func (d *Device) ReadConfig(offset uint64, data []byte) {
	var b [cfgLength]byte
	d.mu.Lock()
	binary.LittleEndian.PutUint32(b[cfgNumPages:], d.numPages)
	binary.LittleEndian.PutUint32(b[cfgActual:], d.actual)
	d.mu.Unlock()
	clear(data)
	if offset < cfgLength {
		copy(data, b[offset:])
	}
}

// WriteConfig implements virtio.Device: only actual is the driver's to
// write; a partial write changes the bytes it covers.
func (d *Device) WriteConfig(offset uint64, data []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], d.actual)
	for i, v := range data {
		if o := offset + uint64(i); o >= cfgActual && o < cfgActual+4 {
			b[o-cfgActual] = v
		}
	}
	d.actual = binary.LittleEndian.Uint32(b[:])
}

// ErrTarget reports a target the balloon cannot express.
var ErrTarget = errors.New("balloon: target too large")

// SetTarget asks the guest to give up bytes of memory (rounded down to
// whole pages); 0 asks for everything back. The guest gets a
// configuration change interrupt if its driver is running; otherwise it
// reads the target when the driver starts.
func (d *Device) SetTarget(bytes uint64) error {
	pages := bytes / PageSize
	if pages > 1<<32-1 {
		return fmt.Errorf("%w: %d bytes is more than the 16 TiB a balloon can hold", ErrTarget, bytes)
	}
	d.mu.Lock()
	d.numPages = uint32(pages)
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

// Target returns the target in bytes and what the guest says it has
// given up so far.
func (d *Device) Target() (target, actual uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return uint64(d.numPages) * PageSize, uint64(d.actual) * PageSize
}

// RequestStats asks the guest for fresh statistics (it answers on the
// stats queue; Stats shows them once it has). It never blocks, and does
// nothing if the driver has no statistics buffer with the device.
func (d *Device) RequestStats() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.run != nil {
		select {
		case d.run.statsReq <- struct{}{}:
		default:
		}
	}
}

// Stats returns the counters and the guest's last statistics.
func (d *Device) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.stats
	s.TargetBytes, s.ActualBytes = uint64(d.numPages)*PageSize, uint64(d.actual)*PageSize
	if d.guest != nil {
		s.Guest = make(map[string]uint64, len(d.guest))
		for k, v := range d.guest {
			s.Guest[k] = v
		}
		s.GuestAgeMs = max(time.Since(d.guestAt).Milliseconds(), 1)
	}
	return s
}

// count applies f to the counters under the lock.
func (d *Device) count(f func(s *Stats)) {
	d.mu.Lock()
	f(&d.stats)
	d.mu.Unlock()
}

// Errors of Activate.
var (
	ErrNoQueue = errors.New("balloon: inflate or deflate queue not enabled")
	ErrActive  = errors.New("balloon: already active")
)

// queues are the activation's queues by role; nil when absent.
type queues struct {
	inflate, deflate, stats, report *virtio.Queue
}

// assign maps the transport's queue list to roles by the negotiated
// features (see QueueMaxSizes).
func assign(features uint64, qs []*virtio.Queue) (queues, error) {
	at := func(i int) *virtio.Queue {
		if i < len(qs) {
			return qs[i]
		}
		return nil
	}
	q := queues{inflate: at(0), deflate: at(1)}
	if q.inflate == nil || q.deflate == nil {
		return queues{}, ErrNoQueue
	}
	next := 2
	if features&FeatureStatsVQ != 0 {
		q.stats = at(next)
		next++
	}
	if features&FeatureReporting != 0 {
		q.report = at(next)
	}
	return q, nil
}

// Activate implements virtio.Device.
func (d *Device) Activate(a *virtio.Activation) error {
	qs, err := assign(a.Features, a.Queues)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.run != nil {
		return ErrActive
	}
	run := &activation{stop: make(chan struct{}), done: make(chan error, 1), gate: state.NewGate(),
		statsReq: make(chan struct{}, 1), configChanged: a.ConfigChanged}
	d.run = run
	run.gate.Join()
	go func() {
		defer run.gate.Leave()
		run.done <- d.serve(run, qs)
	}()
	return nil
}

// Reset implements virtio.Device: it returns once the goroutine has
// stopped. The target stays (it is the host's); actual and the held
// statistics buffer go with the driver.
func (d *Device) Reset() {
	d.mu.Lock()
	run := d.run
	d.mu.Unlock()
	if run == nil {
		return
	}
	close(run.stop)
	<-run.done
	d.mu.Lock()
	d.run, d.actual = nil, 0
	d.mu.Unlock()
}

// serve is the device's one goroutine: page lists are short and releasing
// them is a system call per run of pages, so one goroutine keeps up with
// any guest, and the queues never race each other.
func (d *Device) serve(run *activation, qs queues) error {
	var held *virtio.Chain // the statistics buffer the driver lent us
	pushStats := func() error {
		if held == nil || qs.stats == nil {
			return nil
		}
		c := held
		held = nil
		if err := qs.stats.Push(c.Head, 0); err != nil {
			return err
		}
		_ = qs.stats.Signal() // the interrupt path reports its own errors
		return nil
	}
	var tick <-chan time.Time
	if d.cfg.StatsInterval > 0 {
		t := time.NewTicker(d.cfg.StatsInterval)
		defer t.Stop()
		tick = t.C
	}
	kicks := func(q *virtio.Queue) <-chan struct{} {
		if q == nil {
			return nil
		}
		return q.Kicks()
	}
	// Poll once at start: a restored device may find requests made
	// before the save.
	for _, q := range []*virtio.Queue{qs.inflate, qs.deflate, qs.stats, qs.report} {
		if q != nil {
			q.Kick()
		}
	}
	for {
		var err error
		select {
		case <-run.stop:
			return nil
		case <-run.gate.Requested():
			// Nothing is in flight between requests; the statistics
			// buffer is handed back (the driver refills it and lends it
			// again after the pause), so the queues can be saved.
			if err := pushStats(); err != nil {
				return err
			}
			if !run.gate.Park(run.stop) {
				return nil
			}
		case <-kicks(qs.inflate):
			err = d.drain(qs.inflate, d.inflate)
		case <-kicks(qs.deflate):
			err = d.drain(qs.deflate, d.deflate)
		case <-kicks(qs.report):
			err = d.drain(qs.report, d.report)
		case <-kicks(qs.stats):
			err = d.drain(qs.stats, func(c *virtio.Chain) bool {
				d.takeStats(c)
				if held != nil {
					// A second buffer while one is held: the driver
					// gets the older back (a spec violation, harmless;
					// a push that fails broke the queue, which the next
					// Next reports).
					_ = pushStats()
				}
				held = c
				return false
			})
		case <-run.statsReq:
			err = pushStats()
		case <-tick:
			err = pushStats()
		}
		if err != nil {
			return err // broken queue: the transport set DEVICE_NEEDS_RESET
		}
	}
}

// drain serves up to one queue's worth of chains with handle, which
// reports whether to return the chain at once (with length 0: the device
// writes nothing into any balloon buffer). If more are waiting it kicks
// the queue itself, so that the serve loop checks for a reset or a pause
// between batches however fast the guest adds requests.
func (d *Device) drain(q *virtio.Queue, handle func(*virtio.Chain) bool) error {
	q.DisableNotifications()
	pushed := false
	defer func() {
		if pushed {
			_ = q.Signal()
		}
	}()
	for range QueueSize {
		c, err := q.Next()
		if err != nil {
			return err
		}
		if c == nil {
			more, err := q.EnableNotifications()
			if err != nil {
				return err
			}
			if more {
				q.Kick()
			}
			return nil
		}
		if handle(c) {
			if err := q.Push(c.Head, 0); err != nil {
				return err
			}
			pushed = true
		}
	}
	q.Kick()
	return nil
}

// inflate releases the pages a request lists.
func (d *Device) inflate(c *virtio.Chain) bool {
	var runs []pageSpan
	n, bad, malformed := readPFNs(c.Readable, d.ramSpans, &runs)
	var released, failed uint64
	for _, r := range runs {
		if err := d.ram.Discard(r.start*PageSize, (r.end-r.start)*PageSize); err != nil {
			failed++
			continue
		}
		released += (r.end - r.start) * PageSize
	}
	d.count(func(s *Stats) {
		s.InflatedPages += n
		s.BadPFNs += bad
		s.ReleasedBytes += released
		s.ReleaseErrors += failed
		if malformed {
			s.BadRequests++
		}
	})
	return true
}

// deflate needs nothing from the host: a page the guest takes back faults
// in (as zeros) on its first touch. The numbers are checked and counted.
func (d *Device) deflate(c *virtio.Chain) bool {
	var runs []pageSpan
	n, bad, malformed := readPFNs(c.Readable, d.ramSpans, &runs)
	d.count(func(s *Stats) {
		s.DeflatedPages += n
		s.BadPFNs += bad
		if malformed {
			s.BadRequests++
		}
	})
	return true
}

// report releases the free pages a reporting request hands over: each
// device-writable buffer is a range of free guest memory (Linux reports
// blocks of 2 MiB or more). The device writes nothing into them.
func (d *Device) report(c *virtio.Chain) bool {
	var released, failed, malformed uint64
	if len(c.Readable) > 0 {
		malformed++
	}
	for i, b := range c.Writable {
		addr, ok := c.WritableAddr(i)
		if !ok {
			break
		}
		// Only whole pages are released; a range that is not page
		// aligned is a driver bug, and its partial pages stay.
		start := (addr + PageSize - 1) / PageSize
		end := (addr + uint64(len(b))) / PageSize
		if addr%PageSize != 0 || len(b)%PageSize != 0 {
			malformed++
		}
		if start >= end {
			continue
		}
		// The queue resolved the buffer inside guest RAM already;
		// Discard checks again.
		if err := d.ram.Discard(start*PageSize, (end-start)*PageSize); err != nil {
			failed++
			continue
		}
		released += (end - start) * PageSize
	}
	d.count(func(s *Stats) {
		s.ReportedBytes += released
		s.ReleaseErrors += failed
		s.BadRequests += malformed
	})
	return true
}

// takeStats records the statistics in a buffer the driver lent.
func (d *Device) takeStats(c *virtio.Chain) {
	got, malformed := parseStats(c.Readable)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stats.StatsUpdates++
	if malformed {
		d.stats.BadRequests++
	}
	if d.guest == nil {
		d.guest = map[string]uint64{}
	}
	for k, v := range got {
		d.guest[k] = v
	}
	d.guestAt = time.Now()
}
