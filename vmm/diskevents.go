package vmm

import (
	"github.com/viovmm/vio/block/graph"
	"github.com/viovmm/vio/events"
)

// graphEvents is what a disk graph's nodes report through (a mirror that
// dropped a child, a resync): published on the event monitor and logged as
// a warning, so that a degraded disk is loud even without a monitor.
type graphEvents struct{ v *VM }

var _ graph.Publisher = graphEvents{}

func (g graphEvents) Publish(source, event string, kv ...string) {
	if m := g.v.opts.Events; m != nil {
		m.Publish(source, event, kv...)
	}
	args := make([]any, 0, len(kv)+2)
	args = append(args, "source", source)
	for _, s := range kv {
		args = append(args, s)
	}
	if len(kv)%2 == 1 {
		args = append(args, "")
	}
	g.v.log.Warn("disk graph: "+event, args...)
}

var _ events.Publisher = graphEvents{}
