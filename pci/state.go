package pci

import (
	"encoding/binary"
	"fmt"

	"github.com/viovmm/vio/state"
)

// ConfigState is a function's configuration space as the guest left it.
type ConfigState struct {
	// Data is the whole space (256 or 4096 bytes).
	Data []byte
	// INTx is the device's INTx output.
	INTx bool
}

// SaveState returns the configuration space.
func (c *Config) SaveState() ConfigState {
	c.mu.Lock()
	defer c.mu.Unlock()
	return ConfigState{Data: append([]byte(nil), c.data[:c.size]...), INTx: c.intxLevel}
}

// RestoreState puts back what the guest programmed (every guest-writable
// bit: BAR addresses, command register, interrupt line, capability
// controls) and the INTx level, without calling capability hooks; owners
// of capabilities restore their own state afterwards (MSIX.RestoreState).
//
// The state is hostile and must be of this very function: every
// read-only bit (identity, BAR types, the capability list) must equal
// this function's, except the status register's, which the device
// derives. BAR registrations on the buses are not touched: call
// Root.Resync once every function is restored.
func (c *Config) RestoreState(s ConfigState) error {
	c.mu.Lock()
	if len(s.Data) != c.size {
		c.mu.Unlock()
		return fmt.Errorf("%w: configuration space of %d bytes, this function has %d", state.ErrMismatch, len(s.Data), c.size)
	}
	for o := range c.size {
		if o == RegStatus || o == RegStatus+1 {
			continue
		}
		ro := ^c.wmask[o]
		if s.Data[o]&ro != c.data[o]&ro {
			c.mu.Unlock()
			return fmt.Errorf("%w: configuration space byte %#x is %#02x, this function has %#02x under read-only mask %#02x: the snapshot is of another device",
				state.ErrMismatch, o, s.Data[o], c.data[o], ro)
		}
	}
	for o := range c.size {
		if o == RegStatus || o == RegStatus+1 {
			// Static bits stay; sticky error bits come back.
			c.data[o] = c.data[o]&^c.w1c[o] | s.Data[o]&c.w1c[o]
			continue
		}
		c.data[o] = c.data[o]&^c.wmask[o] | s.Data[o]&c.wmask[o]
	}
	c.intxLevel = s.INTx
	if s.INTx {
		c.data[RegStatus] |= StatusINTx
	} else {
		c.data[RegStatus] &^= StatusINTx
	}
	// The line's real level is unknown after a restore: force the call.
	c.lineHigh = !(c.intxLevel && binary.LittleEndian.Uint16(c.data[RegCommand:])&CommandINTxDisable == 0)
	f := c.updateLineLocked()
	c.mu.Unlock()
	if f != nil {
		return f()
	}
	return nil
}

// MSIXState is an MSI-X table and pending bit array. Enable and function
// mask live in configuration space (ConfigState).
type MSIXState struct {
	Entries []MSIXEntryState
	Pending []uint64
}

// MSIXEntryState is one table entry.
type MSIXEntryState struct {
	Addr   uint64
	Data   uint32
	Masked bool
}

// SaveState returns the table and PBA.
func (m *MSIX) SaveState() MSIXState {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := MSIXState{Entries: make([]MSIXEntryState, len(m.entries)), Pending: append([]uint64(nil), m.pending...)}
	for i, e := range m.entries {
		s.Entries[i] = MSIXEntryState{Addr: e.addr, Data: e.data, Masked: e.masked}
	}
	return s
}

// RestoreState restores the table and PBA; call it after the function's
// Config.RestoreState, whose control word it adopts. Every vector that is
// deliverable then is routed afresh through the MSIRouter (the VMM's GSI
// routes and irqfds belong to the new VM), and a pending bit of a
// deliverable vector is delivered, as unmasking would. An error after the
// checks means some vectors could not be routed; they stay undeliverable
// until the guest reprograms them, as for a failed route at run time.
func (m *MSIX) RestoreState(s MSIXState) error {
	n := len(m.entries)
	if len(s.Entries) != n || len(s.Pending) != len(m.pending) {
		return fmt.Errorf("%w: MSI-X table of %d entries and %d PBA words, this function has %d and %d",
			state.ErrMismatch, len(s.Entries), len(s.Pending), n, len(m.pending))
	}
	if n%64 != 0 && s.Pending[len(s.Pending)-1]>>(n%64) != 0 {
		return fmt.Errorf("%w: MSI-X pending bits beyond vector %d", state.ErrInvalid, n-1)
	}
	ctl := binary.LittleEndian.Uint16(m.cfg.Bytes(m.capOff+2, 2))
	m.mu.Lock()
	for i, e := range s.Entries {
		m.entries[i] = msixEntry{addr: e.Addr, data: e.Data, masked: e.Masked}
	}
	copy(m.pending, s.Pending)
	m.enabled = ctl&MSIXEnable != 0
	m.fnMasked = ctl&MSIXFunctionMask != 0
	before := m.errs
	fire := m.updateLocked()
	failed := m.errs - before
	m.mu.Unlock()
	fireAll(fire)
	if failed != 0 {
		return fmt.Errorf("pci: %d MSI-X vectors could not be routed", failed)
	}
	return nil
}
