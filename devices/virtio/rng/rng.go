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
	done chan error
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
	d.stop, d.done = make(chan struct{}), make(chan error, 1)
	go func(q *virtio.Queue, stop chan struct{}, done chan error) {
		done <- d.serve(q, stop)
	}(a.Queues[0], d.stop, d.done)
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
	d.stop, d.done = nil, nil
}

func (d *Device) serve(q *virtio.Queue, stop chan struct{}) error {
	for {
		select {
		case <-stop:
			return nil
		case <-q.Kicks():
		}
		for more := true; more; {
			q.DisableNotifications()
			for {
				select {
				case <-stop: // Reset must not wait for a busy guest
					return nil
				default:
				}
				c, err := q.Next()
				if err != nil {
					return err // broken queue: the transport set DEVICE_NEEDS_RESET
				}
				if c == nil {
					break
				}
				n, err := d.fill(c.Writable)
				if err != nil {
					n = 0 // nothing trustworthy to give; the driver retries
				}
				if err := q.Push(c.Head, n); err != nil {
					return err
				}
			}
			if err := q.Signal(); err != nil {
				// The interrupt path reports its own errors (transport
				// stats); the driver will poll or time out.
				_ = err
			}
			var err error
			if more, err = q.EnableNotifications(); err != nil {
				return err
			}
		}
	}
}

// fill writes random bytes straight into guest memory.
func (d *Device) fill(bufs virtio.Buffers) (uint32, error) {
	var n uint32
	for _, b := range bufs {
		if uint64(n)+uint64(len(b)) > MaxPerRequest {
			b = b[:MaxPerRequest-n]
		}
		if _, err := io.ReadFull(d.src, b); err != nil {
			return 0, err
		}
		n += uint32(len(b))
		if n == MaxPerRequest {
			break
		}
	}
	return n, nil
}
