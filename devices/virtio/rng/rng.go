// Package rng is virtio-rng (virtio 1.2 section 5.4): one request queue
// whose writable buffers the device fills with random bytes from the
// host's getrandom(2).
package rng

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/state"
	"github.com/viovmm/vio/virtio"
)

// QueueSize is the request queue's maximum size.
const QueueSize = 256

// MaxPerRequest bounds the bytes given for one request, so that one huge
// buffer cannot monopolize the host's entropy source or the device's
// goroutine; the driver asks again for more.
const MaxPerRequest = 64 << 10

// Device is a virtio-rng device.
type Device struct {
	src io.Reader

	mu   sync.Mutex // guards the running goroutine's handles
	stop chan struct{}
	gate *state.Gate
	done chan error

	// The source is read on a goroutine of its own, one read at a time,
	// into a host buffer: a source that blocks then holds up neither a
	// reset nor a pause, and nothing writes guest memory once the
	// device's goroutine has let go of a request. Owned by the serving
	// goroutine (handed from one activation to the next by Reset).
	reading chan readResult // the outstanding read, nil if none
	spare   []byte          // bytes read and not yet given out
}

type readResult struct {
	buf []byte
	err error
}

var _ virtio.Device = (*Device)(nil)

// New returns a virtio-rng device reading from src; nil means getrandom(2).
func New(src io.Reader) *Device {
	if src == nil {
		src = getrandom{}
	}
	return &Device{src: src}
}

type getrandom struct{}

func (getrandom) Read(p []byte) (int, error) {
	for {
		n, err := unix.Getrandom(p, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("rng: getrandom: %w", err)
		}
		return n, nil
	}
}

// Type implements virtio.Device.
func (*Device) Type() virtio.DeviceType { return virtio.TypeRNG }

// Features implements virtio.Device: virtio-rng has no feature bits.
func (*Device) Features() uint64 { return 0 }

// QueueMaxSizes implements virtio.Device: one request queue.
func (*Device) QueueMaxSizes() []uint16 { return []uint16{QueueSize} }

// ReadConfig implements virtio.Device: there is no configuration space.
func (*Device) ReadConfig(_ uint64, data []byte) { clear(data) }

// WriteConfig implements virtio.Device.
func (*Device) WriteConfig(uint64, []byte) {}

// ErrNoQueue is returned by Activate when the driver did not enable the
// request queue.
var ErrNoQueue = errors.New("rng: request queue not enabled")

// Activate implements virtio.Device.
func (d *Device) Activate(a *virtio.Activation) error {
	if len(a.Queues) != 1 || a.Queues[0] == nil {
		return ErrNoQueue
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stop != nil {
		return errors.New("rng: already active")
	}
	d.stop, d.done, d.gate = make(chan struct{}), make(chan error, 1), state.NewGate()
	d.gate.Join()
	go func(q *virtio.Queue, stop chan struct{}, gate *state.Gate, done chan error) {
		defer gate.Leave()
		done <- d.serve(q, stop, gate)
	}(a.Queues[0], d.stop, d.gate, d.done)
	return nil
}

// Reset implements virtio.Device: it returns once the goroutine has
// stopped.
func (d *Device) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stop == nil {
		return
	}
	close(d.stop)
	<-d.done
	d.stop, d.done, d.gate = nil, nil, nil
}

// serve polls at start: a device restored from a snapshot may find
// requests the driver made available before the save.
func (d *Device) serve(q *virtio.Queue, stop chan struct{}, gate *state.Gate) error {
	for {
		for more := true; more; {
			q.DisableNotifications()
			pause, pushed := false, false
			for !pause {
				select {
				case <-stop: // Reset must not wait for a busy guest
					return nil
				case <-gate.Requested():
					pause = true
					continue
				default:
				}
				c, err := q.Next()
				if err != nil {
					return err // broken queue: the transport set DEVICE_NEEDS_RESET
				}
				if c == nil {
					break
				}
				n, err := d.fill(c.Writable, stop, gate.Requested())
				if errors.Is(err, errInterrupted) {
					// Hand the request back untouched; it is served after
					// the pause (or forgotten by the reset).
					if !q.Unget(c) {
						if err := q.Push(c.Head, 0); err != nil {
							return err
						}
						pushed = true
					}
					pause = true
					continue
				}
				if err != nil {
					n = 0 // nothing trustworthy to give; the driver retries
				}
				if err := q.Push(c.Head, n); err != nil {
					return err
				}
				pushed = true
			}
			if pushed {
				// The interrupt path reports its own errors (transport
				// stats); the driver will poll or time out.
				_ = q.Signal()
			}
			if pause {
				select {
				case <-stop:
					return nil
				default:
				}
				if !gate.Park(stop) {
					return nil
				}
				continue
			}
			var err error
			if more, err = q.EnableNotifications(); err != nil {
				return err
			}
		}
		select {
		case <-stop:
			return nil
		case <-gate.Requested():
			if !gate.Park(stop) {
				return nil
			}
		case <-q.Kicks():
		}
	}
}

// errInterrupted reports a fill abandoned for a reset or a pause.
var errInterrupted = errors.New("rng: interrupted")

// fill writes random bytes into guest memory: at most MaxPerRequest,
// taken from the source through a host buffer. If stop or pause fires
// while the source is blocked, it returns errInterrupted; the read goes
// on, and its bytes serve a later request.
func (d *Device) fill(bufs virtio.Buffers, stop, pause <-chan struct{}) (uint32, error) {
	want := int(min(bufs.Len(), MaxPerRequest))
	for got := 0; got < want; {
		if len(d.spare) == 0 {
			if d.reading == nil {
				ch := make(chan readResult, 1)
				buf := make([]byte, want-got)
				go func() {
					n, err := io.ReadFull(d.src, buf)
					ch <- readResult{buf[:n], err}
				}()
				d.reading = ch
			}
			select {
			case <-stop:
				return 0, errInterrupted
			case <-pause:
				return 0, errInterrupted
			case r := <-d.reading:
				d.reading = nil
				d.spare = r.buf
				if r.err != nil {
					d.spare = nil
					return 0, r.err
				}
			}
		}
		n, _ := bufs.WriteAt(d.spare[:min(len(d.spare), want-got)], int64(got))
		d.spare = d.spare[n:]
		got += n
	}
	return uint32(want), nil
}
