package vmm

import "github.com/viovmm/vio/internal/latency"

// LatencyReporter is a Machine that times its devices' requests (*VM
// does, for virtio-blk). The Controller asks for it with a type
// assertion, so doubles need not implement it.
type LatencyReporter interface {
	// Latencies returns request latency histograms by device name (as
	// in Counters), then by request kind.
	Latencies() map[string]map[string]latency.Snapshot
}

var _ LatencyReporter = (*VM)(nil)

// Latencies implements LatencyReporter.
func (v *VM) Latencies() map[string]map[string]latency.Snapshot {
	out := map[string]map[string]latency.Snapshot{}
	for _, d := range v.pciDevices {
		if l, ok := d.dev.(interface {
			Latency() map[string]latency.Snapshot
		}); ok {
			out[d.name] = l.Latency()
		}
	}
	return out
}

// Latencies returns the running VM's request latency histograms (nil when
// no VM runs or its Machine keeps none). Like Counters, they count since
// the current Machine was built: a guest reboot starts them again.
func (c *Controller) Latencies() map[string]map[string]latency.Snapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != StateRunning && c.state != StatePaused {
		return nil
	}
	if l, ok := c.run.m.(LatencyReporter); ok {
		return l.Latencies()
	}
	return nil
}
