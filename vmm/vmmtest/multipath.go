package vmmtest

import (
	"fmt"

	"github.com/viovmm/vio/block/multipath"
	"github.com/viovmm/vio/vmm"
)

// SetMultipath makes mp the multipath node named node of the machine's
// disk graphs (a real one, so that the API reports real paths).
func (m *Machine) SetMultipath(node string, mp *multipath.Multipath) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.multipaths == nil {
		m.multipaths = map[string]*multipath.Multipath{}
	}
	m.multipaths[node] = mp
}

// DiskMultipath reports the status of the multipath SetMultipath gave node.
func (m *Machine) DiskMultipath(node string) (multipath.Status, error) {
	m.mu.Lock()
	mp, ok := m.multipaths[node]
	m.mu.Unlock()
	if !ok {
		return multipath.Status{}, fmt.Errorf("%w: %q", vmm.ErrNoNode, node)
	}
	return mp.Status(), nil
}
