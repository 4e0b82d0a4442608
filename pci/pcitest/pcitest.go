// Package pcitest has test doubles for the interrupt side of package pci —
// an MSIRouter that records the messages it delivers and an INTx line that
// records its level — and a guest-side configuration accessor that goes
// through the CF8/CFC ports like a real guest kernel.
package pcitest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/viovmm/vio/bus"
	"github.com/viovmm/vio/irq"
	"github.com/viovmm/vio/pci"
)

// Message is one MSI delivered through a Router.
type Message struct {
	Vector int
	Addr   uint64
	Data   uint32
}

// Router is a pci.MSIRouter that delivers messages into a channel.
type Router struct {
	msgs chan Message

	mu     sync.Mutex
	routes map[int]Message // vector → last routed message
	calls  int
	fail   error
}

var _ pci.MSIRouter = (*Router)(nil)

// NewRouter returns a router whose channel buffers up to depth messages;
// a Trigger beyond that returns an error instead of blocking.
func NewRouter(depth int) *Router {
	return &Router{msgs: make(chan Message, depth), routes: make(map[int]Message)}
}

// ErrFull is returned by a trigger when the message channel is full.
var ErrFull = errors.New("pcitest: message channel full")

// Route implements pci.MSIRouter.
func (r *Router) Route(vector int, addr uint64, data uint32) (irq.Trigger, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if r.fail != nil {
		return nil, r.fail
	}
	m := Message{vector, addr, data}
	r.routes[vector] = m
	return trigger{r, m}, nil
}

// FailRoutes makes later Route calls fail with err (nil: succeed again).
func (r *Router) FailRoutes(err error) {
	r.mu.Lock()
	r.fail = err
	r.mu.Unlock()
}

// Routes returns the last message routed per vector and the number of
// Route calls.
func (r *Router) Routes() (map[int]Message, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := make(map[int]Message, len(r.routes))
	for k, v := range r.routes {
		m[k] = v
	}
	return m, r.calls
}

// Messages is the channel of delivered messages.
func (r *Router) Messages() <-chan Message { return r.msgs }

// Wait returns the next delivered message, or an error after timeout. The
// timeout only bounds a test that would otherwise hang; it never stands in
// for synchronization.
func (r *Router) Wait(timeout time.Duration) (Message, error) {
	select {
	case m := <-r.msgs:
		return m, nil
	case <-time.After(timeout):
		return Message{}, fmt.Errorf("pcitest: no MSI within %v", timeout)
	}
}

// Pending returns the number of delivered messages not yet received.
func (r *Router) Pending() int { return len(r.msgs) }

type trigger struct {
	r *Router
	m Message
}

func (t trigger) Trigger() error {
	select {
	case t.r.msgs <- t.m:
		return nil
	default:
		return ErrFull
	}
}

// Line is an irq.Line that records its level and counts rising edges.
type Line struct {
	mu     sync.Mutex
	high   bool
	rises  int
	change chan bool
}

var _ irq.Line = (*Line)(nil)

// NewLine returns a low line.
func NewLine() *Line { return &Line{change: make(chan bool, 1024)} }

// SetLevel implements irq.Line.
func (l *Line) SetLevel(high bool) error {
	l.mu.Lock()
	if high && !l.high {
		l.rises++
	}
	l.high = high
	l.mu.Unlock()
	select {
	case l.change <- high:
	default:
	}
	return nil
}

// Level returns the current level and the number of rising edges so far.
func (l *Line) Level() (high bool, rises int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.high, l.rises
}

// Changes delivers every SetLevel call's level, in order (up to 1024
// unreceived).
func (l *Line) Changes() <-chan bool { return l.change }

// CF8 is a guest's view of configuration space through the legacy ports on
// a PIO bus (the Root's ConfigPorts registered at 0xCF8).
type CF8 struct {
	PIO *bus.Bus
}

func (c CF8) addr(a pci.BDF, off int) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], 1<<31|uint32(a.Bus)<<16|uint32(a.Device)<<11|uint32(a.Function)<<8|uint32(off&0xfc))
	c.PIO.Write(pci.ConfigAddressPort, b[:])
}

// Read reads n (1, 2 or 4) bytes at off; the access must not cross a
// 4-byte boundary, as on real hardware.
func (c CF8) Read(a pci.BDF, off, n int) uint32 {
	c.addr(a, off)
	var b [4]byte
	if !c.PIO.Read(pci.ConfigAddressPort+4+uint64(off&3), b[:n]) {
		return 0xffffffff
	}
	return binary.LittleEndian.Uint32(b[:])
}

// Write writes the low n (1, 2 or 4) bytes of v at off.
func (c CF8) Write(a pci.BDF, off, n int, v uint32) {
	c.addr(a, off)
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	c.PIO.Write(pci.ConfigAddressPort+4+uint64(off&3), b[:n])
}

// FindCapability walks the capability list of a and returns the offset of
// the first capability with the given ID at or after start's successor
// (start 0: from the list head), or 0. The walk is bounded, so a corrupt
// list cannot hang a test.
func (c CF8) FindCapability(a pci.BDF, id uint8, after int) int {
	var p int
	if after == 0 {
		p = int(c.Read(a, pci.RegCapabilitiesPtr, 1))
	} else {
		p = int(c.Read(a, after+1, 1))
	}
	for i := 0; p != 0 && i < 48; i++ {
		if uint8(c.Read(a, p, 1)) == id {
			return p
		}
		p = int(c.Read(a, p+1, 1))
	}
	return 0
}
