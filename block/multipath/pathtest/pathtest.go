// Package pathtest is a test double for a multipath's paths: a view of a
// shared back-end that can be made to fail or to stall on demand, as a
// connection to a storage server can.
package pathtest

import (
	"sync"
	"sync/atomic"

	"github.com/viovmm/vio/block"
)

// Path forwards to a shared back-end unless told to fail or stall. Its
// zero value is not usable; call New.
type Path struct {
	be block.Backend

	mu      sync.Mutex
	err     error         // non-nil: every call fails with it
	gate    chan struct{} // non-nil: every call waits until it is closed
	entered chan struct{} // receives a token each time a call starts waiting

	// Calls counts the calls that reached the shared back-end.
	Calls atomic.Int64
	// Closed is set by Close (which does not close the shared back-end).
	Closed atomic.Bool
}

var _ block.Backend = (*Path)(nil)

// New returns a healthy path to be.
func New(be block.Backend) *Path {
	return &Path{be: be, entered: make(chan struct{}, 1024)}
}

// Fail makes every later call fail with err (nil: healthy again).
func (p *Path) Fail(err error) {
	p.mu.Lock()
	p.err = err
	p.mu.Unlock()
}

// Stall makes every later call wait (before it reaches the back-end)
// until Release.
func (p *Path) Stall() {
	p.mu.Lock()
	if p.gate == nil {
		p.gate = make(chan struct{})
	}
	p.mu.Unlock()
}

// Release lets the stalled calls go on to the back-end, and later ones
// pass unhindered.
func (p *Path) Release() {
	p.mu.Lock()
	if p.gate != nil {
		close(p.gate)
		p.gate = nil
	}
	p.mu.Unlock()
}

// Entered is signalled once for each call that starts waiting at a stall.
func (p *Path) Entered() <-chan struct{} { return p.entered }

func (p *Path) enter() error {
	p.mu.Lock()
	gate, err := p.gate, p.err
	p.mu.Unlock()
	if gate != nil {
		select {
		case p.entered <- struct{}{}:
		default:
		}
		<-gate
		p.mu.Lock()
		err = p.err
		p.mu.Unlock()
	}
	if err == nil {
		p.Calls.Add(1)
	}
	return err
}

func (p *Path) ReadAt(b []byte, off int64) (int, error) {
	if err := p.enter(); err != nil {
		return 0, err
	}
	return p.be.ReadAt(b, off)
}

func (p *Path) WriteAt(b []byte, off int64) (int, error) {
	if err := p.enter(); err != nil {
		return 0, err
	}
	return p.be.WriteAt(b, off)
}

func (p *Path) Flush() error {
	if err := p.enter(); err != nil {
		return err
	}
	return p.be.Flush()
}

func (p *Path) Size() int64 { return p.be.Size() }

// Close releases a stall and marks the path closed.
func (p *Path) Close() error {
	p.Closed.Store(true)
	p.Release()
	return nil
}
