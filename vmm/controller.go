package vmm

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"path"
	"sync"
	"time"

	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/events"
	"github.com/viovmm/vio/sandbox"
)

// State is the lifecycle state of the Controller's VM, spelled as Cloud
// Hypervisor's VmInfo.state.
type State string

const (
	NoVM          State = ""         // nothing created yet, or deleted
	StateCreated  State = "Created"  // configured, never booted
	StateRunning  State = "Running"  // vCPUs running (also across guest reboots)
	StatePaused   State = "Paused"   // vCPUs parked, guest clock frozen
	StateShutdown State = "Shutdown" // the guest stopped; it may be booted again
)

// Machine is one built VM as the Controller drives it; *VM is the real
// one, vmmtest has a double. A Machine runs once: a guest reboot is a new
// Machine built from the same config.
type Machine interface {
	// Start starts the vCPUs and returns at once.
	Start() error
	// Wait blocks until the guest stops on its own (poweroff, reset,
	// panic, a fatal exit) or stop is closed (the exit is then
	// ExitStopped with why() as detail). Every vCPU has stopped when it
	// returns. It is called once, after Start.
	Wait(stop <-chan struct{}, why func() string) Exit
	// Pause parks every vCPU and freezes the guest clock; Resume undoes
	// it. Both are called only between Start and the end of Wait.
	Pause() error
	Resume() error
	// Snapshot writes the paused Machine to dir (see VM.Snapshot); it is
	// called only while paused.
	Snapshot(dir string) error
	// Counters are the VM's counters by device, then by name.
	Counters() map[string]map[string]int64
	// Close releases everything; it is called once, after Wait.
	Close() error
}

var _ Machine = (*VM)(nil)

// BuildFunc builds a Machine from a validated config that the Machine may
// keep (the Controller passes a copy of its own).
type BuildFunc func(cfg *config.VM) (Machine, error)

// Builder returns the BuildFunc that builds real VMs with New.
func Builder(stdio IO, opts Options) BuildFunc {
	stdio = shareInput(stdio)
	return func(cfg *config.VM) (Machine, error) { return New(cfg, stdio, opts) }
}

// RestoreFunc builds a paused Machine from the snapshot in dir and returns
// it with the config it was taken with. Start starts it paused.
type RestoreFunc func(dir string, ro RestoreOptions) (Machine, *config.VM, error)

// Restorer returns the RestoreFunc that restores real VMs with Restore.
func Restorer(stdio IO, opts Options) RestoreFunc {
	stdio = shareInput(stdio)
	return func(dir string, ro RestoreOptions) (Machine, *config.VM, error) {
		v, cfg, err := Restore(dir, stdio, opts, ro)
		if err != nil {
			return nil, nil, err
		}
		return v, cfg, nil
	}
}

// Errors of the Controller, matched with errors.Is. The API maps each to an
// HTTP status; the error's text is the sentence to show.
var (
	// ErrNotCreated: the operation needs a VM and there is none.
	ErrNotCreated = errors.New("no VM has been created: send vm.create first")
	// ErrWrongState: the VM exists but its state does not allow the
	// operation (a *StateError says which and what to do).
	ErrWrongState = errors.New("the VM's state does not allow this operation")
	// ErrInvalidConfig: the config (or a device added to it) is wrong.
	ErrInvalidConfig = errors.New("invalid VM config")
	// ErrNotImplemented: vio does not do this yet.
	ErrNotImplemented = errors.New("not implemented yet")
)

// StateError is an operation refused in a state.
type StateError struct {
	Op    string // what was asked: "pause", "boot", ...
	State State  // the state the VM was in
}

func (e *StateError) Error() string {
	switch {
	case e.Op == "restore":
		return fmt.Sprintf("cannot restore: this VMM has a VM already (%s); restore into a VMM with no VM, or send vm.delete first", e.State)
	case e.Op == "receive a migration":
		return fmt.Sprintf("cannot receive a migration: this VMM has a VM already (%s); receive into a VMM with no VM, or send vm.delete first", e.State)
	case e.Op == "snapshot" && e.State == StateRunning:
		return "cannot snapshot: the VM is running; send vm.pause first"
	case e.Op == "create":
		return fmt.Sprintf("cannot create: a VM exists already (%s); send vm.delete first", e.State)
	case e.Op == "remove a device" && e.State == StatePaused:
		return "cannot remove a device: the VM is paused and its guest cannot release it; send vm.resume first"
	case e.State == StateCreated:
		return fmt.Sprintf("cannot %s: the VM has not been booted yet; send vm.boot first", e.Op)
	case e.State == StateShutdown:
		return fmt.Sprintf("cannot %s: the VM is shut down; send vm.boot to start it again", e.Op)
	case e.Op == "resume" && e.State == StateRunning:
		return "cannot resume: the VM is running, not paused"
	case e.Op == "pause" && e.State == StatePaused:
		return "cannot pause: the VM is paused already"
	case e.Op == "boot" && e.State == StatePaused:
		return "cannot boot: the VM is booted and paused; send vm.resume to continue it"
	case e.Op == "boot":
		return "cannot boot: the VM is running already"
	}
	return fmt.Sprintf("cannot %s: the VM is %s", e.Op, e.State)
}

// configError is a Validate error that matches ErrInvalidConfig and reads
// as the sentence Validate wrote.
type configError struct{ error }

func (e configError) Unwrap() error        { return e.error }
func (e configError) Is(target error) bool { return target == ErrInvalidConfig }

// Is makes a StateError match ErrWrongState.
func (e *StateError) Is(target error) bool { return target == ErrWrongState }

// Info is what vm.info reports.
type Info struct {
	State  State
	Config *config.VM // a copy
}

// Controller owns the one VM of a VMM process and its lifecycle:
//
//	(none) --Create--> Created --Boot--> Running <--Pause/Resume--> Paused
//	Running/Paused --Shutdown, or the guest powers off--> Shutdown --Boot--> Running
//	any --Delete--> (none)
//
// A guest reboot with on_reboot=restart builds a fresh Machine and stays
// Running; with on_reboot=exit it ends in Shutdown like a poweroff. The
// Controller is safe for concurrent use: state-changing operations are
// serialised, Info and Counters never wait for a slow one.
type Controller struct {
	build   BuildFunc
	restore RestoreFunc // nil: vm.restore is not offered
	receive ReceiveFunc // nil: vm.receive-migration is not offered
	log     *slog.Logger
	ev      *events.Monitor // nil: no events (see SetEvents)

	op sync.Mutex // serialises Create, Boot, Pause, Resume, Shutdown, Reboot, Delete, Add*, RemoveDevice

	// mu guards everything below. It is held while a Machine is paused,
	// resumed or closed, so that those never meet.
	mu       sync.Mutex
	state    State
	cfg      *config.VM
	run      *run          // the current boot, nil before the first
	stopped  chan struct{} // closed when the current boot ends in Shutdown
	lastExit Exit
	lastErr  error
	// ejectWait is how long RemoveDevice waits for the guest (0:
	// DefaultEjectWait).
	ejectWait time.Duration
	// beforeStart runs once, between the next Machine's build and the
	// start of its vCPUs (see SetBeforeStart).
	beforeStart func() error
}

// run is one boot: the Machines it goes through (one per guest reboot)
// and the means to stop it.
type run struct {
	m         Machine
	stop      chan struct{} // closed to stop the guest
	why       string        // the detail of ExitStopped
	stopping  bool          // set (under mu) before stop is closed: do not restart
	rebooting bool          // stopped by Reboot: the boot goes on, Stopped stays open
	done      chan struct{} // closed when the boot has ended and m is closed
}

// NewController returns a Controller with no VM that builds Machines with
// build. A nil log discards.
func NewController(build BuildFunc, log *slog.Logger) *Controller {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Controller{build: build, log: log}
}

// SetBeforeStart has f run once, after the next Machine (booted or
// restored) is built and before its vCPUs start: for what must be in
// force before the guest runs a single instruction, such as the sandbox
// (cmd/vio). An error from f fails that boot or restore. Confining there,
// rather than once the guest runs, also means no vCPU thread is inside
// KVM_RUN, and no device is serving the guest, while every thread of the
// process is being changed.
func (c *Controller) SetBeforeStart(f func() error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.beforeStart = f
}

// runBeforeStartLocked runs and forgets the SetBeforeStart hook.
func (c *Controller) runBeforeStartLocked() error {
	f := c.beforeStart
	c.beforeStart = nil
	if f == nil {
		return nil
	}
	return f()
}

// SetRestore lets the Controller restore snapshots with f (see Restore).
// Call it before the Controller is used.
func (c *Controller) SetRestore(f RestoreFunc) { c.restore = f }

// Snapshot writes the paused VM to the directory that url names
// (file:///path), which must not exist or be empty. As in Cloud
// Hypervisor, the VM must be paused; it stays paused.
func (c *Controller) Snapshot(url string) error {
	c.op.Lock()
	defer c.op.Unlock()
	dir, err := snapshotDir("destination", url)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == StateRunning {
		return &StateError{Op: "snapshot", State: c.state}
	}
	if err := c.needLocked("snapshot", StatePaused); err != nil {
		return err
	}
	c.emit("snapshotting", "destination_url", url)
	if err := c.run.m.Snapshot(dir); err != nil {
		return sandbox.Explain(err, dir)
	}
	c.emit("snapshotted", "destination_url", url)
	return nil
}

// Restore builds the VM of the snapshot in the directory that url names,
// in a Controller that has no VM, and leaves it Paused: vm.resume runs
// it. Its config becomes the VM's (vm.info shows it; a guest reboot
// boots it afresh).
func (c *Controller) Restore(url string, ro RestoreOptions) error {
	c.op.Lock()
	defer c.op.Unlock()
	if c.restore == nil {
		return fmt.Errorf("%w: this VMM cannot restore snapshots", ErrNotImplemented)
	}
	dir, err := snapshotDir("source", url)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != NoVM {
		return &StateError{Op: "restore", State: c.state}
	}
	c.emit("restoring", "source_url", url)
	m, cfg, err := c.restore(dir, ro)
	if err != nil {
		return err
	}
	if err := c.runBeforeStartLocked(); err != nil {
		m.Close()
		return err
	}
	if err := m.Start(); err != nil {
		m.Close()
		return fmt.Errorf("starting the vCPUs: %w", err)
	}
	c.cfg = cfg
	r := &run{m: m, stop: make(chan struct{}), done: make(chan struct{})}
	c.run, c.state, c.stopped = r, StatePaused, make(chan struct{})
	c.lastExit, c.lastErr = Exit{}, nil
	go c.follow(r, c.stopped)
	c.emit("restored", "source_url", url)
	return nil
}

// snapshotDir turns a file:// URL into a directory: Cloud Hypervisor's
// form, file:///absolute/path.
func snapshotDir(what, raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "file" || (u.Host != "" && u.Host != "localhost") || !path.IsAbs(u.Path) || u.RawQuery != "" || u.Fragment != "" {
		return "", snapErr(ErrSnapshotRequest, "snapshot %s %q is not a file URL: write file:///absolute/path/to/dir", what, raw)
	}
	return path.Clean(u.Path), nil
}

// Create records the VM's config after checking it (Validate); nothing is
// built until Boot. Values vio accepts but ignores are logged.
func (c *Controller) Create(cfg *config.VM) error {
	c.op.Lock()
	defer c.op.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != NoVM {
		return &StateError{Op: "create", State: c.state}
	}
	cfg = cfg.Clone()
	if cfg.CPUs.MaxVCPUs == 0 {
		cfg.CPUs.MaxVCPUs = cfg.CPUs.BootVCPUs
	}
	if err := cfg.Validate(); err != nil {
		return configError{err}
	}
	if err := assignIDs(cfg); err != nil {
		return configError{err}
	}
	for _, w := range cfg.Unimplemented() {
		c.log.Warn(w)
	}
	c.cfg, c.state = cfg, StateCreated
	c.emit("created")
	return nil
}

// Boot builds the VM and starts its vCPUs; it returns once they run.
func (c *Controller) Boot() error {
	c.op.Lock()
	defer c.op.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	switch c.state {
	case NoVM:
		return ErrNotCreated
	case StateCreated, StateShutdown:
	default:
		return &StateError{Op: "boot", State: c.state}
	}
	c.emit("booting")
	if err := c.startLocked(make(chan struct{})); err != nil {
		return err
	}
	c.emit("booted")
	return nil
}

// startLocked builds and starts a Machine and the goroutine that follows
// it, which closes stopped when the boot ends. c.mu is held.
func (c *Controller) startLocked(stopped chan struct{}) error {
	m, err := c.buildLocked()
	if err != nil {
		return err
	}
	r := &run{m: m, stop: make(chan struct{}), done: make(chan struct{})}
	c.run, c.state, c.stopped = r, StateRunning, stopped
	c.lastExit, c.lastErr = Exit{}, nil
	go c.follow(r, c.stopped)
	return nil
}

func (c *Controller) buildLocked() (Machine, error) {
	cfg := c.cfg.Clone()
	m, err := c.build(cfg)
	if err != nil {
		return nil, fmt.Errorf("building the VM: %w", err)
	}
	// A build pins decisions into its config (a writable disk's probed
	// format: vmm/disk.go); the Machine after a guest reboot must make the
	// same ones, never probe what the guest may have rewritten since.
	c.cfg = cfg
	if err := c.runBeforeStartLocked(); err != nil {
		m.Close()
		return nil, err
	}
	if err := m.Start(); err != nil {
		m.Close()
		return nil, fmt.Errorf("starting the vCPUs: %w", err)
	}
	return m, nil
}

// follow waits for each Machine of run r to end and decides what comes
// next: a fresh Machine after a guest reboot, or Shutdown.
func (c *Controller) follow(r *run, stopped chan struct{}) {
	defer close(r.done)
	for {
		e := r.m.Wait(r.stop, func() string { return r.why })
		c.mu.Lock()
		restart := e.Reason == ExitReboot && c.cfg.OnReboot != "exit" && !r.stopping
		if restart {
			// Said before Close, which cancels a migration in
			// progress: whoever sees the migration fail can already
			// see why.
			if e.Fault {
				// Not a reboot the guest asked for: say where it was.
				c.log.Warn("guest triple-faulted; restarting it as a PC resets", "detail", e.Detail)
			} else {
				c.log.Info("guest rebooted; restarting it", "detail", e.Detail)
			}
			c.emit("rebooting", "reason", "guest", "detail", e.Detail)
		}
		r.m.Close()
		if restart {
			m, err := c.buildLocked()
			if err == nil {
				r.m, c.state = m, StateRunning
				c.emit("rebooted")
				c.mu.Unlock()
				continue
			}
			c.lastErr = fmt.Errorf("restarting the rebooted guest: %w", err)
			e = Exit{Reason: ExitError, Detail: c.lastErr.Error()}
			c.log.Error(c.lastErr.Error())
		}
		c.state, c.lastExit = StateShutdown, e
		if !r.rebooting {
			c.emitExit(e)
			close(stopped)
		}
		c.mu.Unlock()
		return
	}
}

// Pause parks every vCPU and freezes the guest clock.
func (c *Controller) Pause() error {
	c.op.Lock()
	defer c.op.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.needLocked("pause", StateRunning); err != nil {
		return err
	}
	c.emit("pausing")
	if err := c.run.m.Pause(); err != nil {
		return err
	}
	c.state = StatePaused
	c.emit("paused")
	return nil
}

// Resume continues a paused VM where it stopped, clock included.
func (c *Controller) Resume() error {
	c.op.Lock()
	defer c.op.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.needLocked("resume", StatePaused); err != nil {
		return err
	}
	c.emit("resuming")
	if err := c.run.m.Resume(); err != nil {
		return err
	}
	c.state = StateRunning
	c.emit("resumed")
	return nil
}

// needLocked checks that the VM is in one of the states op needs.
func (c *Controller) needLocked(op string, ok ...State) error {
	if c.state == NoVM {
		return ErrNotCreated
	}
	for _, s := range ok {
		if c.state == s {
			return nil
		}
	}
	return &StateError{Op: op, State: c.state}
}

// Shutdown stops the guest (running or paused) as if its power were cut,
// and returns once everything it held is released. The VM stays, in state
// Shutdown, and may be booted again.
func (c *Controller) Shutdown() error {
	c.op.Lock()
	defer c.op.Unlock()
	return c.shutdown("shut down through the API", false)
}

// shutdown stops the current boot; c.op is held. With reboot, the boot is
// about to go on with a new Machine: Stopped is not closed.
func (c *Controller) shutdown(why string, reboot bool) error {
	c.mu.Lock()
	if err := c.needLocked("shut down", StateRunning, StatePaused); err != nil {
		c.mu.Unlock()
		return err
	}
	r := c.run
	if !r.stopping {
		r.stopping, r.why, r.rebooting = true, why, reboot
		close(r.stop)
	}
	c.mu.Unlock()
	<-r.done
	return nil
}

// Reboot stops the guest and boots it again from its config.
func (c *Controller) Reboot() error {
	c.op.Lock()
	defer c.op.Unlock()
	c.mu.Lock()
	if c.state == StateRunning || c.state == StatePaused {
		c.emit("rebooting", "reason", "api")
	}
	c.mu.Unlock()
	if err := c.shutdown("rebooted through the API", true); err != nil {
		if errors.Is(err, ErrWrongState) {
			return &StateError{Op: "reboot", State: err.(*StateError).State}
		}
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.startLocked(c.stopped); err != nil {
		// The boot cannot go on: it has ended.
		c.lastErr = err
		c.emit("shutdown", "reason", ExitError.String(), "detail", err.Error())
		close(c.stopped)
		return err
	}
	c.emit("rebooted")
	return nil
}

// Delete stops the guest if it runs and forgets the VM. Deleting when
// there is no VM does nothing.
func (c *Controller) Delete() error {
	c.op.Lock()
	defer c.op.Unlock()
	c.mu.Lock()
	s := c.state
	c.mu.Unlock()
	if s == StateRunning || s == StatePaused {
		if err := c.shutdown("deleted through the API", false); err != nil {
			return err
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != NoVM {
		c.emit("deleted")
	}
	closeTapFDs(c.cfg)
	c.state, c.cfg = NoVM, nil
	return nil
}

// Info reports the VM's state and a copy of its config.
func (c *Controller) Info() (Info, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == NoVM {
		return Info{}, ErrNotCreated
	}
	return Info{State: c.state, Config: c.cfg.Clone()}, nil
}

// Counters returns the running VM's counters (empty when it does not run).
func (c *Controller) Counters() (map[string]map[string]int64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == NoVM {
		return nil, ErrNotCreated
	}
	if c.state != StateRunning && c.state != StatePaused {
		return map[string]map[string]int64{}, nil
	}
	return c.run.m.Counters(), nil
}

// Stopped returns a channel closed when the current boot ends in
// Shutdown (nil before the first boot).
func (c *Controller) Stopped() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopped
}

// LastExit reports how the last boot ended, and the error that ended it
// if restarting a rebooted guest failed.
func (c *Controller) LastExit() (Exit, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastExit, c.lastErr
}

// Stop shuts the guest down like Shutdown, with why as the detail of its
// ExitStopped (e.g. the signal that stopped vio). It does nothing if the
// guest does not run.
func (c *Controller) Stop(why string) {
	c.op.Lock()
	defer c.op.Unlock()
	c.shutdown(why, false)
}
