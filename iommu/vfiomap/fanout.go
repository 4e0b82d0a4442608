package vfiomap

import (
	"sync"

	"github.com/viovmm/vio/iommu/vtd"
)

// Fanout is a vtd.Notifier that hands every event to each of its
// notifiers in turn: a unit takes one Notifier, a VM may pass several
// devices through behind it. Its zero value is ready; Add may be called
// while the unit runs (the event being delivered then may or may not
// reach the newcomer; vtd.Unit.Resync brings it up to date).
type Fanout struct {
	mu   sync.Mutex
	list []vtd.Notifier
}

var _ vtd.Notifier = (*Fanout)(nil)

// Add appends n.
func (f *Fanout) Add(n vtd.Notifier) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.list = append(f.list, n)
}

// Invalidated implements vtd.Notifier. The list is copied out first, so
// a notifier never runs under the Fanout's lock and Add never waits for
// an event.
func (f *Fanout) Invalidated(ev vtd.Invalidation) {
	f.mu.Lock()
	list := f.list
	f.mu.Unlock()
	for _, n := range list {
		n.Invalidated(ev)
	}
}
