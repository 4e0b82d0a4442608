package pci

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/viovmm/vio/irq"
)

// MSIRouter turns an MSI message into something that injects it.
//
// Route is called when a vector becomes deliverable (MSI-X enabled, neither
// the function nor the vector masked) with an address/data pair that was
// not routed before, and again whenever the guest changes the pair. vector
// is the index in this function's MSI-X table. The returned Trigger injects
// the message; the VMM implements it with a KVM GSI route and an irqfd, so
// Trigger must be cheap and callable from any goroutine. A Route error
// leaves the vector undeliverable until the guest reprograms it.
type MSIRouter interface {
	Route(vector int, addr uint64, data uint32) (irq.Trigger, error)
}

// MSI-X message control bits.
const (
	MSIXEnable       = 1 << 15
	MSIXFunctionMask = 1 << 14
)

// MSIXEntrySize is the size of one MSI-X table entry.
const MSIXEntrySize = 16

// MaxMSIXVectors is the architectural limit of one MSI-X table.
const MaxMSIXVectors = 2048

// Errors returned by MSIX.
var (
	ErrMSIXDisabled = errors.New("pci: MSI-X is disabled")
	ErrBadVector    = errors.New("pci: MSI-X vector out of range")
	ErrNoRoute      = errors.New("pci: MSI-X vector has no route")
)

// MSIXLocation places an MSI-X structure (table or PBA) in a BAR.
type MSIXLocation struct {
	BAR    int
	Offset uint32 // 8-byte aligned
}

type msixEntry struct {
	addr    uint64
	data    uint32
	masked  bool
	trigger irq.Trigger // route for (routedAddr, routedData)
	// routedAddr/Data identify the message trigger was made for.
	routedAddr uint64
	routedData uint32
	routed     bool
}

// MSIX is an MSI-X capability with its table and pending bit array.
//
// The device model places the table and the PBA in one of its BARs and
// forwards accesses there to ReadTable/WriteTable and ReadPBA/WritePBA.
// Notify is the device's side: it fires a vector, or records it pending
// while the vector or the whole function is masked; unmasking delivers a
// pending vector, as the PCI spec requires.
type MSIX struct {
	cfg    *Config
	capOff int
	router MSIRouter

	onChange atomic.Pointer[func()] // see OnChange

	mu       sync.Mutex
	entries  []msixEntry
	pending  []uint64
	enabled  bool
	fnMasked bool
	errs     uint64 // Route or Trigger failures
	held     uint64 // notifications that found their vector masked
}

// NewMSIX adds an MSI-X capability for n vectors to cfg. router may be nil
// until SetRouter is called, which must happen before the guest enables
// MSI-X.
func NewMSIX(cfg *Config, n int, table, pba MSIXLocation, router MSIRouter) (*MSIX, error) {
	if n < 1 || n > MaxMSIXVectors {
		return nil, fmt.Errorf("%w: %d vectors", ErrBadCapability, n)
	}
	for _, l := range []MSIXLocation{table, pba} {
		if l.BAR < 0 || l.BAR >= NumBARs || l.Offset%8 != 0 {
			return nil, fmt.Errorf("%w: MSI-X structure in BAR%d at %#x", ErrBadCapability, l.BAR, l.Offset)
		}
	}
	m := &MSIX{
		cfg:     cfg,
		router:  router,
		entries: make([]msixEntry, n),
		pending: make([]uint64, (n+63)/64),
	}
	for i := range m.entries {
		m.entries[i].masked = true // reset state: every vector masked
	}
	body := make([]byte, 10)
	le := binary.LittleEndian
	le.PutUint16(body[0:], uint16(n-1))
	le.PutUint32(body[2:], table.Offset|uint32(table.BAR))
	le.PutUint32(body[6:], pba.Offset|uint32(pba.BAR))
	wmask := make([]byte, 10)
	le.PutUint16(wmask[0:], MSIXEnable|MSIXFunctionMask)
	off, err := cfg.AddCapability(CapMSIX, body, wmask, CapabilityHooks{Write: m.controlWritten})
	if err != nil {
		return nil, err
	}
	m.capOff = off
	return m, nil
}

// SetRouter sets the router (the VMM knows it only once the VM exists).
func (m *MSIX) SetRouter(r MSIRouter) {
	m.mu.Lock()
	m.router = r
	m.mu.Unlock()
}

// Vectors returns the table size.
func (m *MSIX) Vectors() int { return len(m.entries) }

// TableSize and PBASize are the byte sizes of the structures, for laying
// out a BAR.
func (m *MSIX) TableSize() uint64 { return uint64(len(m.entries)) * MSIXEntrySize }

// PBASize is the byte size of the pending bit array (whole qwords).
func (m *MSIX) PBASize() uint64 { return uint64(len(m.pending)) * 8 }

// CapOffset returns the capability's offset in configuration space.
func (m *MSIX) CapOffset() int { return m.capOff }

// Enabled reports whether the guest enabled MSI-X. While it is disabled a
// device signals through INTx instead.
func (m *MSIX) Enabled() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.enabled
}

// Errors returns how many deliveries failed in the router or trigger.
func (m *MSIX) Errors() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.errs
}

// Held returns how many notifications found their vector (or the
// function) masked and were left pending.
func (m *MSIX) Held() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.held
}

func (m *MSIX) controlWritten(int, []byte) {
	ctl := binary.LittleEndian.Uint16(m.cfg.Bytes(m.capOff+2, 2))
	m.mu.Lock()
	m.enabled = ctl&MSIXEnable != 0
	m.fnMasked = ctl&MSIXFunctionMask != 0
	fire := m.updateLocked()
	m.mu.Unlock()
	fireAll(fire)
	m.changed()
}

// OnChange sets fn to be called after every guest write that may change
// which vectors are deliverable or where they go (enable, function mask,
// a table entry), and after Reset. It runs on the writing vCPU, outside
// the capability's lock, and must not block. A device whose interrupts
// another process signals straight into an irqfd (DirectFD) uses it to
// move that process to and from the irqfd.
func (m *MSIX) OnChange(fn func()) { m.onChange.Store(&fn) }

func (m *MSIX) changed() {
	if fn := m.onChange.Load(); fn != nil && *fn != nil {
		(*fn)()
	}
}

// FDTrigger is an irq.Trigger that is an eventfd (a KVM irqfd), which
// another process can signal itself.
type FDTrigger interface {
	irq.Trigger
	FD() int
}

// DirectFD returns the eventfd that delivers vector v when v is
// deliverable now (MSI-X enabled, neither the function nor the vector
// masked) and routed to an FDTrigger; the route is brought up to date
// with the table entry first. ok is false otherwise: the vector must then
// be signalled through Notify, which keeps it pending while masked.
func (m *MSIX) DirectFD(v int) (fd int, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if v < 0 || v >= len(m.entries) || !m.liveLocked(v) {
		return -1, false
	}
	t, isFD := m.routeLocked(v).(FDTrigger)
	if !isFD {
		return -1, false
	}
	return t.FD(), true
}

// live reports whether vector i would be delivered now.
func (m *MSIX) liveLocked(i int) bool {
	return m.enabled && !m.fnMasked && !m.entries[i].masked
}

// routeLocked makes sure entry i has a trigger for its current message.
func (m *MSIX) routeLocked(i int) irq.Trigger {
	e := &m.entries[i]
	if e.routed && e.routedAddr == e.addr && e.routedData == e.data {
		return e.trigger
	}
	if m.router == nil {
		m.errs++
		return nil
	}
	t, err := m.router.Route(i, e.addr, e.data)
	// Remember the failed message too: retrying every Notify would turn a
	// bad guest programming into an ioctl storm.
	e.routed, e.routedAddr, e.routedData, e.trigger = true, e.addr, e.data, t
	if err != nil {
		e.trigger = nil
		m.errs++
	}
	return e.trigger
}

// updateLocked routes every live vector and collects the pending ones to
// fire (clearing their pending bits).
func (m *MSIX) updateLocked() []irq.Trigger {
	var fire []irq.Trigger
	for i := range m.entries {
		if !m.liveLocked(i) {
			continue
		}
		t := m.routeLocked(i)
		if m.pending[i/64]&(1<<(i%64)) != 0 {
			m.pending[i/64] &^= 1 << (i % 64)
			if t != nil {
				fire = append(fire, t)
			}
		}
	}
	return fire
}

func fireAll(ts []irq.Trigger) {
	for _, t := range ts {
		_ = t.Trigger()
	}
}

// Notify signals vector v: it is delivered now if deliverable, otherwise
// (the vector or the function masked) its pending bit is set and it is
// delivered when unmasked. With MSI-X disabled it returns ErrMSIXDisabled
// and the caller should use INTx.
func (m *MSIX) Notify(v int) error {
	m.mu.Lock()
	if v < 0 || v >= len(m.entries) {
		m.mu.Unlock()
		return fmt.Errorf("%w: %d", ErrBadVector, v)
	}
	if !m.enabled {
		m.mu.Unlock()
		return ErrMSIXDisabled
	}
	if !m.liveLocked(v) {
		m.pending[v/64] |= 1 << (v % 64)
		m.held++
		m.mu.Unlock()
		return nil
	}
	t := m.routeLocked(v)
	m.mu.Unlock()
	if t == nil {
		return fmt.Errorf("%w: %d", ErrNoRoute, v)
	}
	if err := t.Trigger(); err != nil {
		m.mu.Lock()
		m.errs++
		m.mu.Unlock()
		return fmt.Errorf("pci: MSI-X vector %d: %w", v, err)
	}
	return nil
}

// ReadTable serves a guest read of the MSI-X table at offset (relative to
// the table's start). Reads outside the table return zeros.
func (m *MSIX) ReadTable(offset uint64, data []byte) {
	clear(data)
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range data {
		o := offset + uint64(i)
		if o >= m.TableSize() {
			return
		}
		e := &m.entries[o/MSIXEntrySize]
		var b [MSIXEntrySize]byte
		encodeEntry(&b, e)
		data[i] = b[o%MSIXEntrySize]
	}
}

func encodeEntry(b *[MSIXEntrySize]byte, e *msixEntry) {
	le := binary.LittleEndian
	le.PutUint64(b[0:], e.addr)
	le.PutUint32(b[8:], e.data)
	if e.masked {
		b[12] = 1
	}
}

// WriteTable serves a guest write to the MSI-X table. Any width and
// alignment is accepted; each touched entry is re-decoded.
func (m *MSIX) WriteTable(offset uint64, data []byte) {
	m.mu.Lock()
	var fire []irq.Trigger
	le := binary.LittleEndian
	for i := 0; i < len(data); {
		o := offset + uint64(i)
		if o >= m.TableSize() {
			break
		}
		idx := int(o / MSIXEntrySize)
		e := &m.entries[idx]
		var b [MSIXEntrySize]byte
		encodeEntry(&b, e)
		n := copy(b[o%MSIXEntrySize:], data[i:])
		i += n
		wasLive := m.liveLocked(idx)
		e.addr = le.Uint64(b[0:])
		e.data = le.Uint32(b[8:])
		e.masked = b[12]&1 != 0 // the rest of vector control is reserved
		if m.onChange.Load() != nil && m.liveLocked(idx) && e.routed && (e.routedAddr != e.addr || e.routedData != e.data) {
			// A live vector's new message: route it now, for a
			// DirectFD user whose interrupts never reach Notify.
			m.routeLocked(idx)
		}
		if !wasLive && m.liveLocked(idx) {
			t := m.routeLocked(idx)
			if m.pending[idx/64]&(1<<(idx%64)) != 0 {
				m.pending[idx/64] &^= 1 << (idx % 64)
				if t != nil {
					fire = append(fire, t)
				}
			}
		}
	}
	m.mu.Unlock()
	fireAll(fire)
	m.changed()
}

// ReadPBA serves a guest read of the pending bit array.
func (m *MSIX) ReadPBA(offset uint64, data []byte) {
	clear(data)
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range data {
		o := offset + uint64(i)
		if o >= m.PBASize() {
			return
		}
		data[i] = byte(m.pending[o/8] >> (8 * (o % 8)))
	}
}

// WritePBA ignores the write: the PBA is read-only.
func (m *MSIX) WritePBA(uint64, []byte) {}

// Pending reports whether vector v's pending bit is set.
func (m *MSIX) Pending(v int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if v < 0 || v >= len(m.entries) {
		return false
	}
	return m.pending[v/64]&(1<<(v%64)) != 0
}

// Reset returns the table to its power-on state (all vectors masked, no
// pending bits) and disables MSI-X; for a function-level reset.
func (m *MSIX) Reset() {
	m.mu.Lock()
	for i := range m.entries {
		m.entries[i] = msixEntry{masked: true}
	}
	clear(m.pending)
	m.enabled, m.fnMasked = false, false
	m.mu.Unlock()
	m.cfg.SetBytes(m.capOff+2, binary.LittleEndian.AppendUint16(nil, uint16(len(m.entries)-1)))
	m.changed()
}
