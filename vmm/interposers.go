package vmm

import (
	"errors"
	"fmt"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/faults"
	"github.com/viovmm/vio/block/graph"
	"github.com/viovmm/vio/block/throttle"
)

// Run-time control of a disk graph's interposers, by node name (the
// "name" of a node in a disk's graph, docs/disks.md): vio's own API
// endpoints vio.disk-faults and vio.disk-throttle.

// interposerController is a Machine whose disk graphs can be changed while
// the guest runs (*VM is one).
type interposerController interface {
	SetDiskFaults(node string, rules []graph.FaultRule) error
	SetDiskThrottle(node string, c graph.RateLimiterConfig) error
}

var _ interposerController = (*VM)(nil)

// ErrNoNode: no disk graph has a node of that name.
var ErrNoNode = errors.New("no such graph node")

// SetDiskFaults replaces the rules of the faults node named node (an
// empty list passes everything through again).
func (c *Controller) SetDiskFaults(node string, rules []graph.FaultRule) error {
	return c.interposers("change the faults of", func(m interposerController) error { return m.SetDiskFaults(node, rules) })
}

// SetDiskThrottle changes the limits of the throttle node named node;
// requests waiting in it stay queued.
func (c *Controller) SetDiskThrottle(node string, rc graph.RateLimiterConfig) error {
	return c.interposers("change the limits of", func(m interposerController) error { return m.SetDiskThrottle(node, rc) })
}

func (c *Controller) interposers(op string, f func(interposerController) error) error {
	c.op.Lock()
	defer c.op.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.needLocked(op+" a disk of", StateRunning, StatePaused); err != nil {
		return fmt.Errorf("%w (before boot, put the rules or limits in the disk's graph)", err)
	}
	m, ok := c.run.m.(interposerController)
	if !ok {
		return fmt.Errorf("%w: this VM cannot change its disks' interposers", ErrNotImplemented)
	}
	return f(m)
}

func (v *VM) graphNode(name string) (block.Backend, error) {
	if v.graphs != nil {
		if be := v.graphs.Node(name); be != nil {
			return be, nil
		}
	}
	return nil, fmt.Errorf("%w: no disk graph of this VM has a node named %q", ErrNoNode, name)
}

// SetDiskFaults implements interposerController.
func (v *VM) SetDiskFaults(node string, rules []graph.FaultRule) error {
	n, err := v.graphNode(node)
	if err != nil {
		return err
	}
	f := faults.Of(n)
	if f == nil {
		return configError{fmt.Errorf("node %q is not a faults node", node)}
	}
	rs := make([]faults.Rule, 0, len(rules))
	for i, r := range rules {
		fr, err := r.Rule()
		if err != nil {
			return configError{fmt.Errorf("rule %d: %w", i, err)}
		}
		rs = append(rs, fr)
	}
	if err := f.SetRules(rs); err != nil {
		return configError{err}
	}
	v.log.Info("disk faults changed", "node", node, "rules", len(rs))
	return nil
}

// SetDiskThrottle implements interposerController.
func (v *VM) SetDiskThrottle(node string, rc graph.RateLimiterConfig) error {
	n, err := v.graphNode(node)
	if err != nil {
		return err
	}
	d := throttle.Of(n)
	if d == nil {
		return configError{fmt.Errorf("node %q is not a throttle node", node)}
	}
	l, err := rc.Limits()
	if err != nil {
		return configError{err}
	}
	if err := d.Group().SetLimits(l); err != nil {
		return configError{err}
	}
	v.log.Info("disk limits changed", "node", node)
	return nil
}
