package vmm

import (
	"fmt"

	"github.com/viovmm/vio/block/multipath"
)

// The status of a multipath node of a disk graph (docs/disks.md,
// "Multipath"), by node name: vio's own API endpoint vio.disk-multipath.

// multipathController is a Machine whose disk graphs can hold multipath
// nodes (*VM is one).
type multipathController interface {
	DiskMultipath(node string) (multipath.Status, error)
}

var _ multipathController = (*VM)(nil)

// DiskMultipath returns the state and counters of each path of the
// multipath node named node of a running or paused VM.
func (c *Controller) DiskMultipath(node string) (multipath.Status, error) {
	c.op.Lock()
	defer c.op.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.needLocked("read the paths of a disk of", StateRunning, StatePaused); err != nil {
		return multipath.Status{}, err
	}
	m, ok := c.run.m.(multipathController)
	if !ok {
		return multipath.Status{}, fmt.Errorf("%w: this VM has no multipath status", ErrNotImplemented)
	}
	return m.DiskMultipath(node)
}

// DiskMultipath implements multipathController.
func (v *VM) DiskMultipath(node string) (multipath.Status, error) {
	n, err := v.graphNode(node)
	if err != nil {
		return multipath.Status{}, err
	}
	mp := multipath.Of(n)
	if mp == nil {
		return multipath.Status{}, configError{fmt.Errorf("node %q is not a multipath node", node)}
	}
	return mp.Status(), nil
}
