package vcpu

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
