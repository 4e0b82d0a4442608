package state

import (
	"context"
	"sync"
)

// Gate implements Pausable for a device whose work runs on several
// goroutines (one per queue, say). Each goroutine Joins the gate when it
// starts and Leaves it when it ends, watches Requested alongside its
// other channels, and when that fires brings itself to a quiet point
// (nothing in flight, no chain held) and calls Park. Pause returns once
// every joined goroutine is parked or has left.
//
// Why a helper: the pause handshake (request, every worker quiet,
// resume, and a stop that must win over both) is the same for every
// device and easy to get subtly wrong.
type Gate struct {
	mu      sync.Mutex
	active  int           // goroutines joined and not left
	parked  int           // of those, parked now
	req     chan struct{} // closed while a pause is requested
	resume  chan struct{} // closed by Resume; replaced by Pause
	paused  bool
	changed chan struct{} // a token whenever parked or active changes
}

// NewGate returns a gate that is not paused.
func NewGate() *Gate {
	return &Gate{req: make(chan struct{}), changed: make(chan struct{}, 1)}
}

// Join counts the calling goroutine in; call it before starting the
// goroutine (so that a Pause right after the start waits for it).
func (g *Gate) Join() {
	g.mu.Lock()
	g.active++
	g.mu.Unlock()
}

// Leave counts a goroutine out, for good; call it when it returns.
func (g *Gate) Leave() {
	g.mu.Lock()
	g.active--
	g.mu.Unlock()
	g.poke()
}

func (g *Gate) poke() {
	select {
	case g.changed <- struct{}{}:
	default:
	}
}

// Requested returns a channel that is closed while a pause is requested.
// Call it afresh each time: Resume replaces it.
func (g *Gate) Requested() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.req
}

// Park blocks the calling goroutine, which must be quiet, until Resume
// (true) or until stop is closed (false). A goroutine woken by a Resume
// that a new Pause has already followed stays parked, so a Pause never
// counts a goroutine that is on its way back to work.
func (g *Gate) Park(stop <-chan struct{}) bool {
	g.mu.Lock()
	if !g.paused {
		g.mu.Unlock()
		return true // resumed before we got here
	}
	g.parked++
	for {
		resume := g.resume
		g.mu.Unlock()
		g.poke()
		select {
		case <-resume:
		case <-stop:
			g.mu.Lock()
			g.parked--
			g.mu.Unlock()
			return false
		}
		g.mu.Lock()
		if !g.paused {
			g.parked--
			g.mu.Unlock()
			return true
		}
	}
}

// Request requests a pause without waiting for it; Pause then waits. A
// device whose goroutines block outside the gate's view (in a read, say)
// requests first and then interrupts them, so that each sees the request
// when it wakes.
func (g *Gate) Request() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.paused {
		g.paused = true
		g.resume = make(chan struct{})
		close(g.req)
	}
}

// Pause requests a pause and waits until every joined goroutine is parked
// or gone. If ctx ends first, it resumes and returns ctx's error.
func (g *Gate) Pause(ctx context.Context) error {
	g.Request()
	for {
		g.mu.Lock()
		done := g.parked >= g.active
		g.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-g.changed:
		case <-ctx.Done():
			g.Resume()
			return ctx.Err()
		}
	}
}

// Resume ends a pause: parked goroutines continue.
func (g *Gate) Resume() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.paused {
		return
	}
	g.paused = false
	g.req = make(chan struct{})
	close(g.resume)
}

// Paused reports whether a pause is requested or in force.
func (g *Gate) Paused() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.paused
}

var _ Pausable = (*Gate)(nil)
