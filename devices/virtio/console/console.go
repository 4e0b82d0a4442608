// Package console is virtio-console (virtio 1.2 section 5.3) with a single
// port, the console (hvc0 in a Linux guest): host input from an io.Reader
// goes to the guest through receiveq0, guest output through transmitq0 to
// an io.Writer. MULTIPORT and EMERG_WRITE are not offered; SIZE is when
// the configuration gives a size.
package console

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/viovmm/vio/devices/sink"
	"github.com/viovmm/vio/state"
	"github.com/viovmm/vio/virtio"
)

// Feature bits (spec 5.3.3).
const (
	FeatureSize       uint64 = 1 << 0
	FeatureMultiport  uint64 = 1 << 1
	FeatureEmergWrite uint64 = 1 << 2
)

// Queue indexes of port 0.
const (
	RxQueue = 0 // receiveq0: host to guest
	TxQueue = 1 // transmitq0: guest to host
)

const (
	cfgCols   = 0
	cfgRows   = 2
	cfgLength = 12 // cols, rows, max_nr_ports, emerg_wr

	defaultQueueSize = 64
	chunkSize        = 4096
)

// Config describes a virtio console.
type Config struct {
	// Cols and Rows, if both set, are the console size, offered with
	// VIRTIO_CONSOLE_F_SIZE; Resize changes them.
	Cols, Rows uint16
	// QueueSize is each queue's maximum size (default 64).
	QueueSize uint16
	// OutBuffer bounds the guest output held for a slow output (default
	// 1 MiB); beyond it output is dropped and counted (Stats.OutDropped).
	OutBuffer int
}

// DefaultOutBuffer is the output buffer of a Config that sets none.
const DefaultOutBuffer = 1 << 20

// Device is a virtio console.
type Device struct {
	in       io.Reader
	out      io.Writer // async, or io.Discard
	async    *sink.AsyncWriter
	cfg      Config
	features uint64
	size     atomic.Uint32 // cols | rows<<16

	pumpOnce  sync.Once
	input     chan []byte   // chunks read from in; closed at its end
	closing   chan struct{} // closed by Close: the pump stops waiting for the guest
	closeOnce sync.Once

	stats counters

	mu      sync.Mutex // guards the running activation and pending
	run     *activation
	pending []byte // input taken from the pump, not yet given to the guest
	inEOF   bool   // input ended (the pump closed input)
}

var _ virtio.Device = (*Device)(nil)

// Errors.
var (
	ErrConfig  = errors.New("console: bad configuration")
	ErrNoQueue = errors.New("console: receive or transmit queue not enabled")
	ErrActive  = errors.New("console: already active")
)

// New returns a console whose input comes from in (nil: none) and whose
// output goes to out (nil: discarded).
//
// Input is read by a goroutine started at the first activation, one
// chunk ahead of the guest: it blocks in in.Read when there is nothing
// to read, and on the guest when it has a chunk the guest has not taken,
// so input is never lost, only held. The goroutine ends when in returns an
// error (io.EOF, or because the caller closed it). Output goes to out
// through a bounded buffer and a goroutine of its own (sink.AsyncWriter):
// an output that blocks (a paused terminal, a socket client that stopped
// reading) costs the output beyond Config.OutBuffer, never the guest's
// progress nor a reset. Close flushes it.
func New(in io.Reader, out io.Writer, cfg Config) (*Device, error) {
	if cfg.QueueSize == 0 {
		cfg.QueueSize = defaultQueueSize
	}
	if s := cfg.QueueSize; s&(s-1) != 0 || s > virtio.MaxQueueSize {
		return nil, fmt.Errorf("%w: queue size %d", ErrConfig, s)
	}
	if cfg.OutBuffer <= 0 {
		cfg.OutBuffer = DefaultOutBuffer
	}
	d := &Device{in: in, out: io.Discard, cfg: cfg, input: make(chan []byte), closing: make(chan struct{})}
	if out != nil {
		d.async = sink.NewAsyncWriter(out, cfg.OutBuffer)
		d.out = d.async
	}
	if cfg.Cols != 0 && cfg.Rows != 0 {
		d.features |= FeatureSize
		d.size.Store(uint32(cfg.Cols) | uint32(cfg.Rows)<<16)
	}
	if in == nil {
		close(d.input)
	}
	return d, nil
}

// Type implements virtio.Device.
func (*Device) Type() virtio.DeviceType { return virtio.TypeConsole }

// Features implements virtio.Device.
func (d *Device) Features() uint64 { return d.features }

// QueueMaxSizes implements virtio.Device: port 0's receive and transmit
// queues.
func (d *Device) QueueMaxSizes() []uint16 { return []uint16{d.cfg.QueueSize, d.cfg.QueueSize} }

// ReadConfig implements virtio.Device.
func (d *Device) ReadConfig(offset uint64, data []byte) {
	clear(data)
	if offset >= cfgLength {
		return
	}
	var b [cfgLength]byte
	s := d.size.Load()
	b[cfgCols], b[cfgCols+1] = byte(s), byte(s>>8)
	b[cfgRows], b[cfgRows+1] = byte(s>>16), byte(s>>24)
	copy(data, b[offset:])
}

// WriteConfig implements virtio.Device: emerg_wr is not offered, so
// nothing is writable.
func (*Device) WriteConfig(uint64, []byte) {}

// Resize sets the console size the driver sees and tells an active driver.
// It does nothing unless the device was created with a size (SIZE is
// offered only then).
func (d *Device) Resize(cols, rows uint16) {
	if d.features&FeatureSize == 0 {
		return
	}
	d.size.Store(uint32(cols) | uint32(rows)<<16)
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

// pump reads input ahead of the guest, one chunk at a time.
func (d *Device) pump() {
	defer close(d.input)
	for {
		buf := make([]byte, chunkSize)
		n, err := d.in.Read(buf)
		if n > 0 {
			d.stats.inRead.Add(uint64(n))
			select {
			case d.input <- buf[:n]:
			case <-d.closing:
				return // the device is gone: nobody will take it
			}
		}
		if err != nil {
			return
		}
	}
}

type activation struct {
	stop          chan struct{}
	gate          *state.Gate
	paused        atomic.Bool // a Pause succeeded and no Resume followed
	rxs           *rxServer
	wg            sync.WaitGroup
	rx, tx        *virtio.Queue
	configChanged func()
}

// Activate implements virtio.Device.
func (d *Device) Activate(a *virtio.Activation) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.run != nil {
		return ErrActive
	}
	if len(a.Queues) != 2 || a.Queues[RxQueue] == nil || a.Queues[TxQueue] == nil {
		return ErrNoQueue
	}
	if d.in != nil {
		d.pumpOnce.Do(func() { go d.pump() })
	}
	run := &activation{stop: make(chan struct{}), gate: state.NewGate(), rx: a.Queues[RxQueue], tx: a.Queues[TxQueue], configChanged: a.ConfigChanged}
	if run.configChanged == nil {
		run.configChanged = func() {}
	}
	// The goroutines own pending and inEOF until Reset has waited for
	// them.
	rx := &rxServer{d: d, q: run.rx, stop: run.stop, gate: run.gate, pending: d.pending, eof: d.inEOF}
	run.rxs = rx
	run.wg.Add(2)
	run.gate.Join()
	run.gate.Join()
	go func() {
		defer run.wg.Done()
		defer run.gate.Leave()
		rx.serve()
		d.pending, d.inEOF = rx.pending, rx.eof
	}()
	go func() { defer run.wg.Done(); defer run.gate.Leave(); d.serveTx(run.tx, run.stop, run.gate) }()
	d.run = run
	return nil
}

// Reset implements virtio.Device. Input taken from the reader but not
// yet delivered is kept for the next activation.
func (d *Device) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	run := d.run
	if run == nil {
		return
	}
	close(run.stop)
	run.wg.Wait()
	for _, q := range []*virtio.Queue{run.rx, run.tx} {
		d.stats.interrupts.Add(q.Stats().Interrupts)
	}
	d.run = nil
}

// Close writes out the output still buffered and stops the output
// goroutine; it blocks as long as the output does, and returns the first
// error the output reported. The input goroutine stops waiting for the
// guest to take a chunk; it ends when the input reader returns (close
// that reader to end it). Reset the device first: output written after
// Close is counted as failed.
func (d *Device) Close() error {
	d.closeOnce.Do(func() { close(d.closing) })
	if d.async == nil {
		return nil
	}
	return d.async.Close()
}

// Stats are the console's counters.
type Stats struct {
	// InBytes were delivered to the guest, InRead read from the input
	// (the difference is held, waiting for guest buffers).
	InBytes, InRead uint64
	// OutBytes were taken from the guest for the output; OutDropped of
	// them were discarded because the output was too slow (its buffer was
	// full); OutErrors counts failed writes (their bytes are lost).
	OutBytes, OutDropped, OutErrors uint64
	// Notifications are driver kicks observed, Interrupts those sent.
	Notifications, Interrupts uint64
}

type counters struct {
	inBytes, inRead, outBytes, outErrors, notifications, interrupts atomic.Uint64
}

// Stats returns the console's counters.
func (d *Device) Stats() Stats {
	c := &d.stats
	s := Stats{InBytes: c.inBytes.Load(), InRead: c.inRead.Load(), OutBytes: c.outBytes.Load(),
		OutErrors: c.outErrors.Load(), Notifications: c.notifications.Load(), Interrupts: c.interrupts.Load()}
	if d.async != nil {
		s.OutDropped = d.async.Dropped()
	}
	d.mu.Lock()
	if d.run != nil {
		s.Interrupts += d.run.rx.Stats().Interrupts + d.run.tx.Stats().Interrupts
	}
	d.mu.Unlock()
	return s
}

// serveTx writes the guest's output. It polls at start: a device
// restored from a snapshot may find output the driver queued before the
// save.
func (d *Device) serveTx(q *virtio.Queue, stop chan struct{}, gate *state.Gate) {
	for {
		for more := true; more; {
			q.DisableNotifications()
			pushed, pause := false, false
			for !pause {
				select {
				case <-stop:
					return
				case <-gate.Requested():
					pause = true
					continue
				default:
				}
				c, err := q.Next()
				if err != nil {
					return
				}
				if c == nil {
					break
				}
				for _, b := range c.Readable {
					n, err := d.out.Write(b)
					d.stats.outBytes.Add(uint64(n))
					if err != nil {
						d.stats.outErrors.Add(1)
						break
					}
				}
				if q.Push(c.Head, 0) != nil {
					return
				}
				pushed = true
			}
			if pushed {
				_ = q.Signal()
			}
			if pause {
				if !gate.Park(stop) {
					return
				}
				continue
			}
			var err error
			if more, err = q.EnableNotifications(); err != nil {
				return
			}
		}
		select {
		case <-stop:
			return
		case <-gate.Requested():
			if !gate.Park(stop) {
				return
			}
		case <-q.Kicks():
			d.stats.notifications.Add(1)
		}
	}
}

// rxServer gives input to the guest.
type rxServer struct {
	d       *Device
	q       *virtio.Queue
	stop    chan struct{}
	gate    *state.Gate
	pending []byte
	eof     bool
	held    *virtio.Chain
	pushed  bool // used entries pushed since the last Signal
}

// signal interrupts the driver, if it wants one, for what was pushed.
func (s *rxServer) signal() {
	if s.pushed {
		s.pushed = false
		_ = s.q.Signal()
	}
}

// rest serves a pause: the chain held (if any) goes back to the ring
// untouched, or with length 0 if it cannot; pending input stays. It
// reports false if the device stops.
func (s *rxServer) rest() bool {
	if c := s.held; c != nil {
		s.held = nil
		if !s.q.Unget(c) {
			if s.q.Push(c.Head, 0) != nil {
				return false
			}
			s.pushed = true
		}
	}
	s.signal()
	return s.gate.Park(s.stop)
}

func (s *rxServer) serve() {
	for {
		if len(s.pending) == 0 {
			input := s.d.input
			if s.eof {
				input = nil // nothing more will come: only stop or pause
			}
			select {
			case <-s.stop:
				return
			case <-s.gate.Requested():
				if !s.rest() {
					return
				}
				continue
			case chunk, ok := <-input:
				if !ok {
					s.eof = true
					continue
				}
				s.pending = chunk
			}
		}
		// Fill as many buffers as the input needs, then interrupt once.
		for len(s.pending) > 0 {
			ok, pause := s.waitChain()
			if !ok {
				return
			}
			if pause {
				if !s.rest() {
					return
				}
				continue
			}
			c := s.held
			s.held = nil
			n, _ := c.Writable.WriteAt(s.pending, 0)
			s.d.stats.inBytes.Add(uint64(n)) // counted before the guest can see it
			if s.q.Push(c.Head, uint32(n)) != nil {
				return
			}
			s.pushed = true
			s.pending = s.pending[n:]
		}
		s.signal()
	}
}

// waitChain holds a receive chain with room, waiting for the guest to post
// one. It reports false when the device stops or the queue breaks, and
// pause when a pause was requested (then it takes no chain).
func (s *rxServer) waitChain() (ok, pause bool) {
	for s.held == nil {
		select {
		case <-s.gate.Requested():
			return true, true
		default:
		}
		c, err := s.q.Next()
		if err != nil {
			return false, false
		}
		if c != nil {
			if c.Writable.Len() == 0 {
				if s.q.Push(c.Head, 0) != nil {
					return false, false
				}
				s.pushed = true
				continue
			}
			s.held = c
			return true, false
		}
		s.signal()
		more, err := s.q.EnableNotifications()
		if err != nil {
			return false, false
		}
		if more {
			continue
		}
		select {
		case <-s.stop:
			return false, false
		case <-s.gate.Requested():
			return true, true
		case <-s.q.Kicks():
			s.d.stats.notifications.Add(1)
			s.q.DisableNotifications()
		}
	}
	return true, false
}
