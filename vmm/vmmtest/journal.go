package vmmtest

import (
	"fmt"

	"github.com/viovmm/vio/block/journal"
	"github.com/viovmm/vio/vmm"
)

// SetJournal makes ops the journal node named node of the machine's disk
// graphs (a real journal, so that the API's operations really run).
func (m *Machine) SetJournal(node string, ops journal.Ops) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.journals == nil {
		m.journals = map[string]journal.Ops{}
	}
	m.journals[node] = ops
}

// DiskJournal runs r on the journal SetJournal gave node.
func (m *Machine) DiskJournal(node string, r journal.Request) (journal.Status, error) {
	m.mu.Lock()
	ops, ok := m.journals[node]
	m.mu.Unlock()
	if !ok {
		return journal.Status{}, fmt.Errorf("%w: %q", vmm.ErrNoNode, node)
	}
	return journal.Do(ops, r)
}
