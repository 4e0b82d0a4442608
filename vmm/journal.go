package vmm

import (
	"errors"
	"fmt"

	"github.com/viovmm/vio/block/journal"
)

// Run-time operations on a journal node of a disk graph (docs/journal.md),
// by node name: vio's own API endpoint vio.disk-journal. Offline, the same
// operations are `vio image journal`.

// journalController is a Machine whose disk graphs can hold journal nodes
// (*VM is one).
type journalController interface {
	DiskJournal(node string, r journal.Request) (journal.Status, error)
}

var _ journalController = (*VM)(nil)

// DiskJournal runs r on the journal node named node of a running or
// paused VM and returns the history after it. A revert changes the disk
// under the guest's caches: pause the VM, or have the guest unmount
// first.
func (c *Controller) DiskJournal(node string, r journal.Request) (journal.Status, error) {
	c.op.Lock()
	defer c.op.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.needLocked("operate the journal of a disk of", StateRunning, StatePaused); err != nil {
		return journal.Status{}, fmt.Errorf("%w (while no VM runs, use vio image journal)", err)
	}
	m, ok := c.run.m.(journalController)
	if !ok {
		return journal.Status{}, fmt.Errorf("%w: this VM has no journal operations", ErrNotImplemented)
	}
	return m.DiskJournal(node, r)
}

// DiskJournal implements journalController.
func (v *VM) DiskJournal(node string, r journal.Request) (journal.Status, error) {
	n, err := v.graphNode(node)
	if err != nil {
		return journal.Status{}, err
	}
	j := journal.Of(n)
	if j == nil {
		return journal.Status{}, configError{fmt.Errorf("node %q is not a journal node", node)}
	}
	st, err := journal.Do(j, r)
	if errors.Is(err, journal.ErrBadRequest) || errors.Is(err, journal.ErrNoPoint) {
		return st, configError{err}
	}
	if err == nil && r.Op != "list" {
		v.log.Info("disk journal operation", "node", node, "op", r.Op, "point", r.Point, "name", r.Name)
	}
	return st, err
}
