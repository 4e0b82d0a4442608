// Package vmmtest has a double of vmm.Machine, so that vmm.Controller and
// the API above it can be tested without KVM: a "guest" that runs until the
// test makes it power off or reboot, or the Controller stops it.
package vmmtest

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/block/graph"
	"github.com/viovmm/vio/block/journal"
	"github.com/viovmm/vio/block/multipath"
	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/migration"
	"github.com/viovmm/vio/state"
	"github.com/viovmm/vio/vmm"
)

// Builder builds Machines and remembers them. Its Build is a vmm.BuildFunc.
type Builder struct {
	mu       sync.Mutex
	machines []*Machine
	incoming *Incoming // the last Receive built
	fail     error
	diskErr  error // what the next Incoming's TakeResources returns
	// Built receives every Machine as it is built (buffered; a test that
	// does not read it loses nothing but the notification).
	Built chan *Machine
}

// NewBuilder returns a Builder with room for 16 build notifications.
func NewBuilder() *Builder { return &Builder{Built: make(chan *Machine, 16)} }

// Fail makes the next builds fail with err (nil: succeed again).
func (b *Builder) Fail(err error) {
	b.mu.Lock()
	b.fail = err
	b.mu.Unlock()
}

// FailTakeResources makes TakeResources of the Machines Receive builds from now
// on fail with err (nil: succeed again), as a destination that cannot
// open the source's disks.
func (b *Builder) FailTakeResources(err error) {
	b.mu.Lock()
	b.diskErr = err
	b.mu.Unlock()
}

// Build is the vmm.BuildFunc.
func (b *Builder) Build(cfg *config.VM) (vmm.Machine, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fail != nil {
		return nil, b.fail
	}
	m := &Machine{Config: cfg, events: make(chan vmm.Exit, 1), balloon: -1}
	b.machines = append(b.machines, m)
	select {
	case b.Built <- m:
	default:
	}
	return m, nil
}

// Restore is the vmm.RestoreFunc: it reads the config a Machine's
// Snapshot wrote into dir and builds a Machine from it that starts
// paused, with Restored set.
func (b *Builder) Restore(dir string, ro vmm.RestoreOptions) (vmm.Machine, *config.VM, error) {
	cfg, err := vmm.ReadSnapshotConfig(dir)
	if err != nil {
		return nil, nil, err
	}
	m, err := b.Build(cfg)
	if err != nil {
		return nil, nil, err
	}
	mm := m.(*Machine)
	mm.mu.Lock()
	mm.paused, mm.Restored, mm.Prefault = true, true, ro.Prefault
	mm.mu.Unlock()
	return m, cfg, nil
}

// Machines returns every Machine built so far.
func (b *Builder) Machines() []*Machine {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]*Machine(nil), b.machines...)
}

// Last returns the Machine built last, or nil.
func (b *Builder) Last() *Machine {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.machines) == 0 {
		return nil
	}
	return b.machines[len(b.machines)-1]
}

// Machine is a vmm.Machine double. It checks the contract the Controller
// must keep (Start once, Pause/Resume only while started and not closed,
// Close once after Wait) and records violations in Err.
type Machine struct {
	Config   *config.VM // what it was built from
	Restored bool       // built by Builder.Restore
	Prefault bool       // the restore asked for it
	// IgnoreButton makes the guest ignore the power button, as one
	// without ACPI support does.
	IgnoreButton bool

	events chan vmm.Exit

	mu              sync.Mutex
	started, waited bool
	closed, paused  bool
	pauses, resumes int
	snapshots       int
	balloon         int64 // last ResizeBalloon size, -1 if none
	presses         int
	resized         map[string]int64
	faults          map[string][]graph.FaultRule
	throttled       map[string]graph.RateLimiterConfig
	journals        map[string]journal.Ops          // journal.go
	multipaths      map[string]*multipath.Multipath // multipath.go
	err             error

	hpOnce sync.Once
	hot    *hotplug
}

var _ vmm.Machine = (*Machine)(nil)

func (m *Machine) violation(s string) {
	if m.err == nil {
		m.err = errors.New("vmmtest: " + s)
	}
}

// Start implements vmm.Machine.
func (m *Machine) Start() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.started {
		m.violation("Start called twice")
	}
	m.started = true
	return nil
}

// Wait implements vmm.Machine.
func (m *Machine) Wait(stop <-chan struct{}, why func() string) vmm.Exit {
	m.mu.Lock()
	if !m.started || m.waited {
		m.violation("Wait before Start, or twice")
	}
	m.waited = true
	m.mu.Unlock()
	select {
	case e := <-m.events:
		return e
	case <-stop:
		return vmm.Exit{Reason: vmm.ExitStopped, Detail: why()}
	}
}

// Pause implements vmm.Machine.
func (m *Machine) Pause() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.started || m.closed {
		m.violation("Pause outside Start..Close")
	}
	m.paused = true
	m.pauses++
	return nil
}

// Resume implements vmm.Machine.
func (m *Machine) Resume() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.started || m.closed || !m.paused {
		m.violation("Resume of a Machine not paused")
	}
	m.paused = false
	m.resumes++
	return nil
}

// Snapshot implements vmm.Machine: it writes the config (all a double
// has) as config.json into dir, which must not exist or be empty.
func (m *Machine) Snapshot(dir string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.started || m.closed || !m.paused {
		m.violation("Snapshot of a Machine not paused")
	}
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return fmt.Errorf("vmmtest: %s is not empty", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	b, err := json.Marshal(m.Config)
	if err != nil {
		return err
	}
	m.snapshots++
	return os.WriteFile(filepath.Join(dir, vmm.SnapshotConfig), b, 0o600)
}

// ResizeBalloon records size, as a VM with a balloon would pass it on to
// the guest; BalloonSize reads it back.
func (m *Machine) ResizeBalloon(size int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.started || m.closed {
		m.violation("ResizeBalloon outside Start..Close")
	}
	m.balloon = size
	return nil
}

// PressPowerButton counts the press and, unless IgnoreButton is set, powers
// the guest off as an ACPI-aware guest would.
func (m *Machine) PressPowerButton() error {
	m.mu.Lock()
	if !m.started || m.closed {
		m.violation("PressPowerButton outside Start..Close")
	}
	m.presses++
	ignore := m.IgnoreButton
	m.mu.Unlock()
	if !ignore {
		m.Exit(vmm.Exit{Reason: vmm.ExitPoweroff, Detail: "ACPI S5 after the power button"})
	}
	return nil
}

// Presses returns how often the power button was pressed.
func (m *Machine) Presses() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.presses
}

// ResizeDisk records the size a disk was asked to grow to; Resized reads
// it back.
func (m *Machine) ResizeDisk(id string, size int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.started || m.closed {
		m.violation("ResizeDisk outside Start..Close")
	}
	if m.resized == nil {
		m.resized = map[string]int64{}
	}
	m.resized[id] = size
	return nil
}

// SetDiskFaults records the rules a faults node got; Faults reads them
// back. Node "missing" does not exist.
func (m *Machine) SetDiskFaults(node string, rules []graph.FaultRule) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if node == "missing" {
		return fmt.Errorf("%w: %q", vmm.ErrNoNode, node)
	}
	if m.faults == nil {
		m.faults = map[string][]graph.FaultRule{}
	}
	m.faults[node] = rules
	return nil
}

// Faults returns the rules SetDiskFaults last gave node.
func (m *Machine) Faults(node string) []graph.FaultRule {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.faults[node]
}

// SetDiskThrottle records that node's limits changed; Throttled reads it.
func (m *Machine) SetDiskThrottle(node string, c graph.RateLimiterConfig) error {
	if _, err := c.Limits(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.throttled == nil {
		m.throttled = map[string]graph.RateLimiterConfig{}
	}
	m.throttled[node] = c
	return nil
}

// Throttled returns the limits SetDiskThrottle last gave node.
func (m *Machine) Throttled(node string) (graph.RateLimiterConfig, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := m.throttled[node]
	return c, ok
}

// Resized returns the last size ResizeDisk got for the disk, -1 if none.
func (m *Machine) Resized(id string) int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if n, ok := m.resized[id]; ok {
		return n
	}
	return -1
}

// BalloonSize returns the last size ResizeBalloon got, -1 if none.
func (m *Machine) BalloonSize() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.balloon
}

// Counters implements vmm.Machine: pauses and resumes seen.
func (m *Machine) Counters() map[string]map[string]int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return map[string]map[string]int64{"vcpu0": {"pauses": int64(m.pauses), "resumes": int64(m.resumes), "snapshots": int64(m.snapshots)}}
}

// Close implements vmm.Machine.
func (m *Machine) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		m.violation("Close called twice")
	}
	m.closed = true
	return nil
}

// Exit makes the guest stop on its own with e (a poweroff, a reboot...).
// Only the first exit counts, as with a real VM.
func (m *Machine) Exit(e vmm.Exit) {
	select {
	case m.events <- e:
	default:
	}
}

// Paused reports whether the Machine is paused.
func (m *Machine) Paused() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.paused
}

// Started reports whether the Machine's vCPUs have been started.
func (m *Machine) Started() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.started
}

// Closed reports whether the Machine has been closed.
func (m *Machine) Closed() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.closed
}

// Err returns the first contract violation seen, or nil.
func (m *Machine) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.err
}

// Config returns a valid config whose kernel is the file kernel (which
// must exist; it is never booted).
func Config(kernel string) *config.VM {
	c := config.Default()
	c.Payload.Kernel = kernel
	c.Memory.Size = config.MinMemory
	return c
}

// IncomingRAM is the RAM of a Machine that Receive builds: one region at
// GPA 0.
const IncomingRAM = 64 << 10

// Incoming is a Machine built by a migration's destination: paused, with
// RAM the migration fills and the state it restored.
type Incoming struct {
	*Machine
	Regions []migration.Region
	State   *state.Snapshot // what RestoreState got
	// DisksTaken: TakeResources succeeded (after RestoreState, before
	// Start, or it is a violation).
	DisksTaken bool
	diskErr    error
	// Shared: Regions map a local migration's memfd; Close unmaps them
	// and sets Unmapped.
	Shared   bool
	Unmapped bool
}

// Close closes the Machine and unmaps shared RAM.
func (i *Incoming) Close() error {
	err := i.Machine.Close()
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.Shared && !i.Unmapped {
		for _, r := range i.Regions {
			unix.Munmap(r.Data)
		}
		i.Unmapped = true
	}
	return err
}

var _ vmm.IncomingMachine = (*Incoming)(nil)

// Receive is the vmm.ReceiveFunc: a Machine that starts paused (like
// Restore's), with IncomingRAM of zeroed RAM, or, in a local migration,
// ram's regions mapped shared (which Close unmaps).
func (b *Builder) Receive(cfg *config.VM, ram *migration.SharedRAM) (vmm.IncomingMachine, error) {
	var regions []migration.Region
	if ram == nil {
		regions = []migration.Region{{GPA: 0, Data: make([]byte, IncomingRAM)}}
	} else {
		for _, r := range ram.Regions {
			d, err := unix.Mmap(ram.FD, int64(r.Offset), int(r.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
			if err != nil {
				for _, r := range regions {
					unix.Munmap(r.Data)
				}
				return nil, err
			}
			regions = append(regions, migration.Region{GPA: r.GPA, Data: d})
		}
	}
	m, err := b.Build(cfg)
	if err != nil {
		for _, r := range regions {
			if ram != nil {
				unix.Munmap(r.Data)
			}
		}
		return nil, err
	}
	mm := m.(*Machine)
	mm.mu.Lock()
	mm.paused, mm.Restored = true, true
	mm.mu.Unlock()
	in := &Incoming{Machine: mm, Regions: regions, Shared: ram != nil}
	b.mu.Lock()
	in.diskErr = b.diskErr
	b.incoming = in
	b.mu.Unlock()
	return in, nil
}

// LastIncoming returns the Machine Receive built last.
func (b *Builder) LastIncoming() (*Incoming, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.incoming, b.incoming != nil
}

// RAM implements vmm.IncomingMachine.
func (i *Incoming) RAM() []migration.Region { return i.Regions }

// RestoreState implements vmm.IncomingMachine: it keeps the state.
func (i *Incoming) RestoreState(s *state.Snapshot) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.started {
		i.violation("RestoreState after Start")
	}
	i.State = s
	return nil
}

// TakeResources implements vmm.IncomingMachine: it fails as FailTakeResources
// said, and records the call.
func (i *Incoming) TakeResources() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.State == nil || i.started {
		i.violation("TakeResources before RestoreState or after Start")
	}
	if i.diskErr != nil {
		return i.diskErr
	}
	i.DisksTaken = true
	return nil
}
