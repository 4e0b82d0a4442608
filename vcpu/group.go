package vcpu

import (
	"fmt"
	"strings"
	"time"
)

// Group runs a VM's vCPUs together: Pause, Resume and Stop act on all of
// them, kicking every vCPU before waiting for any, so a pause costs one
// round trip rather than one per vCPU.
type Group struct {
	runners []*Runner
}

// NewGroup groups runners (usually all of a VM's vCPUs).
func NewGroup(runners ...*Runner) *Group {
	return &Group{runners: append([]*Runner(nil), runners...)}
}

// Runners returns the group's runners.
func (g *Group) Runners() []*Runner { return g.runners }

// Start starts every runner. On error the ones already started keep
// running; call Stop.
func (g *Group) Start() error {
	for _, r := range g.runners {
		if err := r.Start(); err != nil {
			return err
		}
	}
	return nil
}

// Pause returns once every vCPU is out of KVM_RUN and parked (or stopped).
func (g *Group) Pause() {
	for _, r := range g.runners {
		r.request(Paused)
	}
	for _, r := range g.runners {
		r.waitOut()
	}
}

// Resume lets every paused vCPU run again.
func (g *Group) Resume() {
	for _, r := range g.runners {
		r.Resume()
	}
}

// Stop ends every vCPU's loop and returns once all have ended.
func (g *Group) Stop() {
	for _, r := range g.runners {
		r.request(Stopped)
	}
	for _, r := range g.runners {
		r.Stop()
	}
}

// Wait returns once every vCPU's loop has ended (by Stop or by a Handler
// returning Stop). Every runner must have been started or stopped.
func (g *Group) Wait() {
	for _, r := range g.runners {
		<-r.Done()
	}
}

// StuckError reports vCPUs that did not stop in time.
type StuckError struct {
	Within time.Duration
	Of     int      // vCPUs in the group
	VCPUs  []int    // the ids of those still running
	Doing  []string // what each was doing (Runner.Doing)
}

func (e *StuckError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "vcpu: %d of %d vCPUs did not stop within %v:", len(e.VCPUs), e.Of, e.Within)
	for i, id := range e.VCPUs {
		if i > 0 {
			b.WriteString(";")
		}
		fmt.Fprintf(&b, " vCPU %d is %s", id, e.Doing[i])
	}
	return b.String()
}

// StopWithin is Stop with a deadline: it asks every vCPU to stop and
// waits at most d for all of them. A vCPU that has not stopped by then is
// stuck, in a device's handler that does not return or in the kernel; a
// *StuckError names each and what it is doing, and its thread is left
// running (it ends when its handler returns). Resources the stuck vCPU
// may still use (its fd, guest memory) must then be left alone.
func (g *Group) StopWithin(d time.Duration) error {
	for _, r := range g.runners {
		r.requestStop()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	expired := false
	var stuck []*Runner
	for _, r := range g.runners {
		if !expired {
			select {
			case <-r.done:
				continue
			case <-timer.C:
				expired = true
			}
		}
		select {
		case <-r.done:
		default:
			stuck = append(stuck, r)
		}
	}
	if len(stuck) == 0 {
		return nil
	}
	e := &StuckError{Within: d, Of: len(g.runners)}
	for _, r := range stuck {
		e.VCPUs = append(e.VCPUs, r.ID())
		e.Doing = append(e.Doing, r.Doing())
	}
	return e
}
