package vtd

import (
	"errors"
	"sync"
	"sync/atomic"

	"github.com/viovmm/vio/bus"
	"github.com/viovmm/vio/memory"
)

// Config describes one remapping unit.
type Config struct {
	// Mem is guest RAM: the unit reads its tables and the invalidation
	// queue there, writes wait-descriptor status there, and the DMA views
	// reach it after translation. Required.
	Mem *memory.Memory
	// Interrupt sends an MSI to the guest: the fault event and the
	// invalidation completion event are messages whose address and data
	// the guest programmed (FEADDR/FEUADDR/FEDATA, IEADDR/IEUADDR/IEDATA).
	// It is called after the unit has released its lock, from the thread
	// whose register write or DMA access raised the event, so it may take
	// its time but must not block forever. Nil drops the messages (the
	// guest then sees the status bits only).
	Interrupt func(addr uint64, data uint32)
	// CachingMode sets CAP.CM: the guest then invalidates after it maps
	// as well as after it unmaps, which a Notifier can follow.
	CachingMode bool
	// IOTLBSize bounds the number of cached translations (0: 4096).
	IOTLBSize int
	// ContextCacheSize bounds the number of cached context entries
	// (0: 1024).
	ContextCacheSize int
	// Notifier, if not nil, is told of every invalidation and change of
	// translation (see Notifier). It is meant for caching mode.
	Notifier Notifier
}

// Unit is one emulated VT-d remapping unit. It is safe for concurrent use:
// vCPUs write its registers while device threads translate through its
// DMA views.
type Unit struct {
	mem      *memory.Memory
	send     func(addr uint64, data uint32)
	notifier Notifier
	cap      uint64
	ecap     uint64

	// gen is what every DMA view reports as its Generation; see bumpGen.
	gen atomic.Uint64

	mu sync.Mutex
	r  regs // the register file, under mu

	// Translation state, under mu.
	rootPtr  uint64 // root table address latched by SRTP
	ctxCache *contextCache
	iotlb    *iotlb

	// pending interrupts, sent by unlock once mu is released.
	pending []msi

	// stats, under mu; read with Stats.
	stats Stats
}

type msi struct {
	addr uint64
	data uint32
}

// Stats counts what the unit did, for tests and metrics. IOTLB hits and
// misses count the lookups that reach the unit; accesses a view answers
// from its own copy of a translation (see DMA) are not counted.
type Stats struct {
	IOTLBHits, IOTLBMisses uint64
	Faults                 uint64 // translation faults (recorded or not)
	Descriptors            uint64 // queued invalidation descriptors processed
}

var _ bus.Device = (*Unit)(nil)

// ErrConfig reports a Config the unit cannot be built from.
var ErrConfig = errors.New("vtd: bad config")

// New builds a unit in its reset state: translation off, so the DMA
// views are the identity until the guest enables it.
func New(cfg Config) (*Unit, error) {
	if cfg.Mem == nil {
		return nil, errors.Join(ErrConfig, errors.New("vtd: Config.Mem is required"))
	}
	if cfg.IOTLBSize < 0 || cfg.ContextCacheSize < 0 {
		return nil, errors.Join(ErrConfig, errors.New("vtd: cache sizes must not be negative"))
	}
	if cfg.IOTLBSize == 0 {
		cfg.IOTLBSize = 4096
	}
	if cfg.ContextCacheSize == 0 {
		cfg.ContextCacheSize = 1024
	}
	u := &Unit{
		mem:      cfg.Mem,
		send:     cfg.Interrupt,
		notifier: cfg.Notifier,
		cap:      capValue(cfg.CachingMode),
		ecap:     ecapValue,
		ctxCache: newContextCache(cfg.ContextCacheSize),
		iotlb:    newIOTLB(cfg.IOTLBSize),
	}
	u.r.reset()
	return u, nil
}

// Capability returns the CAP register's value.
func (u *Unit) Capability() uint64 { return u.cap }

// ExtendedCapability returns the ECAP register's value.
func (u *Unit) ExtendedCapability() uint64 { return u.ecap }

// Reset puts the unit back in its power-on state (translation off, caches
// empty), as on a machine reset.
func (u *Unit) Reset() {
	u.mu.Lock()
	u.r.reset()
	u.rootPtr = 0
	u.ctxCache.clear()
	u.iotlb.clear()
	u.bumpGen()
	u.notify(Invalidation{Kind: TranslationChanged})
	u.unlock()
}

// Stats returns a copy of the unit's counters.
func (u *Unit) Stats() Stats {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.stats
}

// bumpGen makes every DMA view report a new generation. Callers hold mu and
// call it before the change is reported complete to the guest, as
// memory.DMA's contract requires.
func (u *Unit) bumpGen() { u.gen.Add(1) }

// unlock releases mu and then sends the interrupts raised while it was
// held, so that Config.Interrupt never runs under the unit's lock.
func (u *Unit) unlock() {
	p := u.pending
	u.pending = nil
	u.mu.Unlock()
	if u.send == nil {
		return
	}
	for _, m := range p {
		u.send(m.addr, m.data)
	}
}

// raise queues an MSI for unlock to send.
func (u *Unit) raise(addr uint64, data uint32) {
	u.pending = append(u.pending, msi{addr, data})
}
