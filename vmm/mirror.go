package vmm

import (
	"errors"
	"fmt"

	"github.com/viovmm/vio/block/graph"
	"github.com/viovmm/vio/block/mirror"
)

// MirrorRequest is vio.disk-mirror's body: an operation on the mirror node
// of a disk graph named Node (docs/disks.md).
type MirrorRequest struct {
	Node string `json:"node"`
	// Op is "status", "attach" (Child into Slot, or the next free slot
	// when Slot is absent) or "remove" (Slot).
	Op    string      `json:"op"`
	Slot  *int        `json:"slot,omitempty"`
	Child *graph.Node `json:"child,omitempty"`
}

// mirrorController is a Machine whose mirror nodes can be changed while
// the guest runs (*VM is one).
type mirrorController interface {
	DiskMirror(MirrorRequest) (mirror.Status, error)
}

var _ mirrorController = (*VM)(nil)

// DiskMirror runs req on a running or paused VM and returns the mirror's
// status afterwards. Attach returns once the new child is syncing; poll
// status for the rebuild's progress.
func (c *Controller) DiskMirror(req MirrorRequest) (mirror.Status, error) {
	c.op.Lock()
	defer c.op.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.needLocked("change the mirror of a disk of", StateRunning, StatePaused); err != nil {
		return mirror.Status{}, err
	}
	m, ok := c.run.m.(mirrorController)
	if !ok {
		return mirror.Status{}, fmt.Errorf("%w: this VM cannot change its disks' mirrors", ErrNotImplemented)
	}
	return m.DiskMirror(req)
}

// DiskMirror implements mirrorController.
func (v *VM) DiskMirror(req MirrorRequest) (mirror.Status, error) {
	n, err := v.graphNode(req.Node)
	if err != nil {
		return mirror.Status{}, err
	}
	m := mirror.Of(n)
	if m == nil {
		return mirror.Status{}, configError{fmt.Errorf("node %q is not a mirror node", req.Node)}
	}
	switch req.Op {
	case "status":
	case "attach":
		slot := -1
		if req.Slot != nil {
			slot = *req.Slot
		}
		be, err := v.graphs.OpenChild(req.Child, fmt.Sprintf("mirror %q's new child", req.Node))
		if err != nil {
			return mirror.Status{}, configError{err}
		}
		got, err := m.Attach(slot, be)
		if err != nil {
			if got < 0 {
				be.Close()
			}
			return mirror.Status{}, configError{err}
		}
		v.log.Info("mirror child attached", "node", req.Node, "slot", got)
	case "remove":
		if req.Slot == nil {
			return mirror.Status{}, configError{errors.New("remove needs the slot of the child to remove (see status)")}
		}
		if err := m.Remove(*req.Slot); err != nil {
			return mirror.Status{}, configError{err}
		}
		v.log.Info("mirror child removed", "node", req.Node, "slot", *req.Slot)
	default:
		return mirror.Status{}, configError{fmt.Errorf("op %q: want status, attach or remove", req.Op)}
	}
	return m.Status(), nil
}
