package vmm

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/viovmm/vio/arch/x86"
	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/kvm"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/migration"
	"github.com/viovmm/vio/state"
)

// Live migration (docs/migration.md): package migration has the stream
// and the pre-copy loop; this file gives it the VM (a migration.Source on
// the sending side, a migration.Incoming on the receiving one) and the
// Controller's two operations.

// ErrMigrationRequest: a migration URL or option cannot be used. The
// error's text is the sentence to show.
var ErrMigrationRequest = errors.New("unusable migration request")

type migrationRequestError struct{ error }

func (e migrationRequestError) Unwrap() error        { return e.error }
func (e migrationRequestError) Is(target error) bool { return target == ErrMigrationRequest }

// SendMigration is vm.send-migration's request (Cloud Hypervisor's
// SendMigrationData, the parts vio honours).
type SendMigration struct {
	DestinationURL string        // tcp:HOST:PORT or unix:PATH
	Downtime       time.Duration // 0: migration.DefaultDowntime
	Timeout        time.Duration // 0: migration.DefaultTimeout
	IgnoreTimeout  bool          // timeout_strategy Ignore: finish anyway
	// TLSDir, when set, holds the credentials for mutual TLS (ca-cert.pem,
	// client-cert.pem, client-key.pem; tcp: only).
	TLSDir string
	// Local migrates to a vio on this host by passing guest RAM's memfd
	// over the UNIX socket instead of copying it (Cloud Hypervisor's
	// local): RAM must be shared (memory shared=on), and there is no
	// pre-copy, so Downtime and Timeout do not apply.
	Local bool
	// CopyDisks names the disks that are not on storage both hosts see:
	// the destination takes a copy of each into its own image
	// (diskcopy.go). CopyAllDisks copies every writable disk with a path.
	CopyDisks    []string
	CopyAllDisks bool
	// UnplugWait bounds how long the source waits for the guest to
	// release its failover primaries before it migrates (0:
	// DefaultUnplugWait; failover.go).
	UnplugWait time.Duration
}

// ReceiveMigration is where and how to wait for a migration.
type ReceiveMigration struct {
	ReceiverURL string // tcp:HOST:PORT or unix:PATH
	// TLSDir, when set, holds the credentials for mutual TLS (ca-cert.pem,
	// server-cert.pem, server-key.pem; tcp: only): only senders with a
	// certificate ca-cert.pem signed get in.
	TLSDir string
	// DiskPaths gives disks the source copies (its copy_disks) a path
	// here other than their config's: on one host the copy must be
	// another file. Disk id to path.
	DiskPaths map[string]string
	// DevicePaths gives failover primaries the host device to plug here
	// once the guest runs: id to sysfs path, or NoDevice to leave one
	// out. A primary not named gets its path on the source (the same
	// address on this host). See failover.go.
	DevicePaths map[string]string
}

// migrationGuard keeps a VM's memory mapped while a migration reads it:
// Close cancels the migrations in progress and waits for them.
type migrationGuard struct {
	mu      sync.Mutex
	closed  bool
	cancels map[*migrationSource]context.CancelCauseFunc
	wg      sync.WaitGroup
}

// abortAndWait cancels the migrations in progress with cause, which their
// errors quote, and waits for them.
func (g *migrationGuard) abortAndWait(cause error) {
	g.mu.Lock()
	g.closed = true
	for _, cancel := range g.cancels {
		cancel(cause)
	}
	g.mu.Unlock()
	g.wg.Wait()
}

// migrationSource is a running VM as migration.Send sees it.
type migrationSource struct {
	v          *VM
	ctx        context.Context
	wasPaused  bool // paused by the Controller before the migration
	paused     []state.Pausable
	logging    bool
	vhostLogs  bool // the vhost-user devices' dirty logs run
	releaseOne sync.Once
	// stuck: Resume could not take the disks back, so the VM stays
	// paused with its devices paused (the Controller then holds it).
	stuck bool
	// copy copies the disks not on shared storage (diskcopy.go), or nil.
	copy *diskCopy
	// primaries are the failover primaries unplugged for the migration
	// (failover.go): the destination plugs them again.
	primaries []config.Device
}

var _ migration.LocalSource = (*migrationSource)(nil)

// migratable is a Machine that can be migrated (*VM; vmmtest's double
// is not).
type migratable interface {
	migrationSource(ctx context.Context, paused, local bool) (*migrationSource, error)
}

// migrationSource checks that the VM can migrate (the same checks and
// sentences as Snapshot; and for pre-copy, not local, that its vhost-user
// back-ends can log what they write) and registers a migration of it;
// release ends it. ctx is the migration's: Close of the VM cancels it.
func (v *VM) migrationSource(ctx context.Context, paused, local bool) (*migrationSource, error) {
	if err := v.checkSaveable("migrate", "to migrate it"); err != nil {
		return nil, err
	}
	if ps := v.primaries(); paused && len(ps) > 0 {
		d := ps[0].cfg
		return nil, snapErr(ErrNotSaveable, "cannot migrate a paused VM with failover primary %s (%s) plugged: the guest must release it first, which it cannot do paused; resume the VM (vm.resume) and migrate it running", d.ID, d.BDF())
	}
	if !local {
		if err := v.checkVhostUserLog(); err != nil {
			return nil, err
		}
	}
	for _, n := range v.cfg.Net {
		if len(n.TapFDs) > 0 {
			return nil, snapErr(ErrNotSaveable, "cannot migrate: NIC %s uses TAP descriptors passed to this process, which the destination cannot open; name its TAP device (tap=NAME) instead", n.ID)
		}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	s := &migrationSource{v: v, ctx: ctx, wasPaused: paused}
	g := &v.mig
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		cancel(nil)
		return nil, errors.New("cannot migrate: the VM is stopping")
	}
	if g.cancels == nil {
		g.cancels = map[*migrationSource]context.CancelCauseFunc{}
	}
	g.cancels[s] = cancel
	g.wg.Add(1)
	return s, nil
}

// release ends the migration: Close may unmap memory from then on.
func (s *migrationSource) release() {
	s.releaseOne.Do(func() {
		g := &s.v.mig
		g.mu.Lock()
		g.cancels[s](nil)
		delete(g.cancels, s)
		g.mu.Unlock()
		g.wg.Done()
	})
}

// Config is the VM's config, whose pass-through devices are the failover
// primaries unplugged for the migration (the destination plugs them
// again) and no others (the migration refuses them).
func (s *migrationSource) Config() ([]byte, error) {
	cfg := *s.v.cfg
	cfg.Devices = s.primaries
	b, err := json.Marshal(&cfg)
	if err != nil {
		return nil, fmt.Errorf("encoding the VM config: %w", err)
	}
	return b, nil
}

// SharedRAM is guest RAM's memfd, for a local migration: one file holds
// every region (memory's Memfd backing).
func (s *migrationSource) SharedRAM() (int, []uint64, error) {
	fd := -1
	var offsets []uint64
	for _, r := range s.v.mem.Regions() {
		f, off, ok := r.File()
		if !ok || (fd >= 0 && f != fd) {
			return -1, nil, migrationRequestError{errNotShared}
		}
		fd, offsets = f, append(offsets, off)
	}
	return fd, offsets, nil
}

var errNotShared = errors.New("cannot migrate locally: guest RAM is not shared, so the destination cannot map it; start the VM with --memory shared=on (memory.shared in its config), or leave out local to copy RAM over the socket")

// disown cuts this process off the guest RAM a local migration handed
// over (memory.Disown): the destination runs the guest on those pages now,
// and nothing of the source's shutdown may reach them.
func (s *migrationSource) disown() {
	if err := s.v.mem.Disown(); err != nil {
		s.v.log.Warn("replacing the migrated guest RAM's mapping", "err", err)
	}
}

func (s *migrationSource) RAM() []migration.Region {
	var rs []migration.Region
	for _, r := range s.v.mem.Regions() {
		rs = append(rs, migration.Region{GPA: r.GPA, Data: r.Data})
	}
	return rs
}

// setLogging turns KVM's dirty log on or off for every slot (slot i is
// region i, see setupMemory).
func (s *migrationSource) setLogging(on bool) error {
	for i, r := range s.v.mem.Regions() {
		if err := s.v.kvm.SetUserMemoryRegion(kvm.MemoryRegion{Slot: uint32(i), GPA: r.GPA, Host: r.Data, LogDirty: on}); err != nil {
			return err
		}
	}
	return nil
}

// StartDirtyLog turns on KVM's dirty log first, the VMM's record of
// device writes second, and the vhost-user back-ends' logs last: a write
// either happened before (and is in the full copy that follows) or is
// recorded. Each back-end has its log in effect when this returns.
func (s *migrationSource) StartDirtyLog() error {
	if err := s.setLogging(true); err != nil {
		s.setLogging(false)
		return err
	}
	s.v.mem.EnableDirtyTracking()
	s.logging = true
	if err := s.v.startVhostUserLogs(); err != nil {
		s.StopDirtyLog()
		return err
	}
	s.vhostLogs = true
	return nil
}

// Dirty collects region i's pages written by the vCPUs (KVM's log), the
// VMM's devices and the vhost-user back-ends (their logs).
func (s *migrationSource) Dirty(i int) ([]uint64, error) {
	b, err := s.v.mem.CollectDirty(i, func(b []uint64) error { return s.v.kvm.GetDirtyLog(uint32(i), b) })
	if err != nil || !s.vhostLogs {
		return b, err
	}
	if err := s.v.takeVhostUserLogs(i, b); err != nil {
		return nil, err
	}
	return b, nil
}

func (s *migrationSource) StopDirtyLog() {
	if s.vhostLogs {
		s.v.stopVhostUserLogs()
		s.vhostLogs = false
	}
	if !s.logging {
		return
	}
	s.v.mem.DisableDirtyTracking()
	if err := s.setLogging(false); err != nil {
		s.v.log.Warn("turning KVM's dirty log off after the migration", "err", err)
	}
	s.logging = false
}

// Pause parks the vCPUs, freezes the clock (VM.Pause) and pauses every
// device, so that nothing writes guest RAM or is in flight; then it
// releases the disks' images for the destination (diskhandoff.go): each
// flushed, so that everything the guest wrote is on the storage, and
// closed, which drops its locks; the NICs' TAPs (nethandoff.go); and
// the vhost-user back-ends, their rings stopped by the pause
// (vhostuser.go).
func (s *migrationSource) Pause() error {
	if err := s.v.Pause(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(s.ctx, pauseDevicesTimeout)
	defer cancel()
	for _, d := range s.v.pciDevices {
		if err := d.transport.Pause(ctx); err != nil {
			s.Resume()
			return fmt.Errorf("pausing device %s: %w", d.name, err)
		}
		s.paused = append(s.paused, d.transport)
	}
	if s.copy != nil {
		// The copies must hold everything before the images go.
		if err := s.copy.settle(); err != nil {
			if rerr := s.Resume(); rerr != nil {
				return fmt.Errorf("%w; %w", err, rerr)
			}
			return err
		}
	}
	if err := s.v.releaseResources(); err != nil {
		if rerr := s.Resume(); rerr != nil {
			return fmt.Errorf("%w; %w", err, rerr)
		}
		return err
	}
	return nil
}

// Resume undoes Pause: the disks' images are opened again first, with
// their locks, and the TAPs attached, so that no device or vCPU runs
// without them; if one cannot be, nothing resumes and the error says so.
func (s *migrationSource) Resume() error {
	if err := s.v.takeResources(); err != nil {
		s.stuck = true
		return fmt.Errorf("the VM stays paused here because its %s could not be opened again (%w); vm.resume tries again", resourcesOf(err), err)
	}
	for _, p := range s.paused {
		p.Resume()
	}
	s.paused = nil
	s.stuck = false
	if s.wasPaused {
		return nil
	}
	err := s.v.Resume()
	if errors.Is(err, ErrNotPaused) {
		return nil
	}
	return err
}

// hold hands the VM's paused devices and released disks and TAPs over to
// the VM when the migration left them so (its outcome unknown, or Resume
// stuck): the VM's Resume finishes the job.
func (s *migrationSource) hold() {
	s.v.holdForResume(s.paused)
	s.paused = nil
}

func (s *migrationSource) State() ([]byte, error) {
	s.v.pauseMu.Lock()
	defer s.v.pauseMu.Unlock()
	start := time.Now()
	var times sectionTimes
	snap, err := s.v.saveState(&times)
	if err != nil {
		return nil, err
	}
	saved := time.Now()
	var b bytesBuffer
	if err := snap.Encode(&b); err != nil {
		return nil, err
	}
	s.v.log.Debug("state saved for the migration", "save", saved.Sub(start), "encode", time.Since(saved), "bytes", len(b), "slowest", times.slowest(4))
	return b, nil
}

// bytesBuffer is the smallest io.Writer into a byte slice.
type bytesBuffer []byte

func (b *bytesBuffer) Write(p []byte) (int, error) { *b = append(*b, p...); return len(p), nil }

// NewIncoming builds the VM of cfg as a migration's destination: the
// machine with zeroed RAM and no payload, its vCPUs created but parked.
// RestoreState then applies the state that arrives after the RAM. With
// ram (a local migration) guest RAM is the source's memfd, mapped shared,
// instead: its regions must be the ones cfg lays out.
func NewIncoming(cfg *config.VM, ram *migration.SharedRAM, stdio IO, opts Options) (*VM, error) {
	v, err := assemble(cfg, stdio, opts, &snapshotSource{dir: "(migration)", incoming: true, shared: ram})
	if err != nil {
		return nil, err
	}
	// Before the destination answers ready: the restore in the source's
	// pause then pays the steady-state cost only (warmup.go).
	v.warmUpCodecs()
	if err := v.warmUpKVM(); err != nil {
		// Its vCPUs may be half written: not a VM to restore into.
		v.Close()
		return nil, fmt.Errorf("reading and writing back the new vCPUs' state: %w", err)
	}
	return v, nil
}

// setupSharedMemory maps a local migration's guest RAM.
func (v *VM) setupSharedMemory(ram *migration.SharedRAM) error {
	layout, err := x86.RAMLayout(uint64(v.cfg.Memory.Size))
	if err != nil {
		return err
	}
	if !v.cfg.Memory.Shared {
		return errors.New("the source passed guest RAM's memfd, but its config does not say memory shared=on")
	}
	if len(layout) != len(ram.Regions) {
		return fmt.Errorf("the source's guest RAM has %d regions, this VM %d: migrate between the same vio versions", len(ram.Regions), len(layout))
	}
	regions := make([]memory.FileRegion, len(layout))
	for i, l := range layout {
		r := ram.Regions[i]
		if r.GPA != l.GPA || r.Size != l.Size {
			return fmt.Errorf("the source's RAM region %d is %#x+%#x, this VM's %#x+%#x: migrate between the same vio versions", i, r.GPA, r.Size, l.GPA, l.Size)
		}
		regions[i] = memory.FileRegion{GPA: r.GPA, Size: r.Size, Offset: r.Offset}
	}
	if v.mem, err = memory.NewFromFile(ram.FD, regions, memory.Shared); err != nil {
		return err
	}
	for i, r := range v.mem.Regions() {
		if err := v.kvm.SetUserMemoryRegion(kvm.MemoryRegion{Slot: uint32(i), GPA: r.GPA, Host: r.Data}); err != nil {
			return fmt.Errorf("registering guest RAM at %#x with KVM: %w", r.GPA, err)
		}
	}
	return nil
}

// RAM is guest RAM, for the migration to fill in place.
func (v *VM) RAM() []migration.Region {
	return (&migrationSource{v: v}).RAM()
}

// RestoreState applies a migration's device and vCPU state to a VM from
// NewIncoming. It stays paused: Start starts its vCPUs parked and Resume
// runs it, its clock moved on by the time since the source paused.
func (v *VM) RestoreState(snap *state.Snapshot) error {
	return v.restore(&snapshotSource{dir: "(migration)", snap: snap})
}

// IncomingMachine is a Machine being received by a migration.
type IncomingMachine interface {
	Machine
	RAM() []migration.Region
	RestoreState(*state.Snapshot) error
	// TakeResources opens the disks' images and attaches the NICs' TAPs,
	// which the Machine was built without (the source held them until
	// its stop-and-copy), once the state is restored and before the
	// guest runs.
	TakeResources() error
}

var _ IncomingMachine = (*VM)(nil)

// ReceiveFunc builds a migration's destination from the source's config,
// on the source's guest RAM when ram is set (a local migration; ram.FD is
// the caller's, so a VM keeps a duplicate).
type ReceiveFunc func(cfg *config.VM, ram *migration.SharedRAM) (IncomingMachine, error)

// Receiver returns the ReceiveFunc that builds real VMs with NewIncoming.
func Receiver(stdio IO, opts Options) ReceiveFunc {
	return func(cfg *config.VM, ram *migration.SharedRAM) (IncomingMachine, error) {
		v, err := NewIncoming(cfg, ram, stdio, opts)
		if err != nil {
			return nil, err
		}
		return v, nil
	}
}

// SetReceive lets the Controller receive migrations (see
// ReceiveMigration). Call it before the Controller is used.
func (c *Controller) SetReceive(f ReceiveFunc) { c.receive = f }

// diskProgress publishes how far a migration's disk copy got, on both
// sides.
func (c *Controller) diskProgress(copied, total uint64) {
	c.emit("migration-disk-progress",
		"copied_bytes", strconv.FormatUint(copied, 10),
		"total_bytes", strconv.FormatUint(total, 10))
}

func (c *Controller) progress(p migration.Progress) {
	c.emit("migration-progress",
		"iteration", strconv.Itoa(p.Iteration),
		"final", strconv.FormatBool(p.Final),
		"dirty_pages", strconv.FormatUint(p.DirtyPages, 10),
		"remaining_pages", strconv.FormatUint(p.Remaining, 10),
		"data_pages", strconv.FormatUint(p.DataPages, 10),
		"zero_pages", strconv.FormatUint(p.ZeroPages, 10),
		"bytes", strconv.FormatUint(p.Bytes, 10),
		"bandwidth_mbps", strconv.FormatFloat(p.Bandwidth*8/1e6, 'f', 1, 64))
}

// statsKV is a migration's account as event properties; downtime and the
// reason pre-copy stopped are the source's to know.
func statsKV(s migration.Stats) []string {
	kv := []string{
		"iterations", strconv.Itoa(s.Iterations),
		"bytes", strconv.FormatUint(s.Bytes, 10),
		"data_pages", strconv.FormatUint(s.DataPages, 10),
		"zero_pages", strconv.FormatUint(s.ZeroPages, 10),
		"total_ms", strconv.FormatInt(s.Total.Milliseconds(), 10),
	}
	if s.DiskBytes > 0 || s.DiskTime > 0 {
		kv = append(kv, "disk_bytes", strconv.FormatUint(s.DiskBytes, 10))
		if s.DiskTime > 0 {
			kv = append(kv, "disk_ms", strconv.FormatInt(s.DiskTime.Milliseconds(), 10))
		}
	}
	if s.Reason != "" {
		kv = append(kv, "downtime_ms", strconv.FormatInt(s.Downtime.Milliseconds(), 10), "reason", s.Reason,
			"pause_ms", strconv.FormatInt(s.PauseTime.Milliseconds(), 10),
			"send_ms", strconv.FormatInt(s.SendTime.Milliseconds(), 10),
			"resume_ms", strconv.FormatInt(s.ResumeTime.Milliseconds(), 10))
	}
	return kv
}

// SendMigration migrates the running (or paused) VM to a vio waiting in
// ReceiveMigration at req.DestinationURL, by pre-copy (package migration),
// and returns once the destination runs it; the VM here then ends in
// Shutdown. On failure the VM keeps running here (or stays paused if it
// was), except when the outcome is unknown (migration.ErrOutcomeUnknown):
// then it stays paused, and the state says so. ctx cancels it.
func (c *Controller) SendMigration(ctx context.Context, req SendMigration) (err error) {
	ep, err := migration.ParseURL(req.DestinationURL)
	if err != nil {
		return migrationRequestError{err}
	}
	copying := len(req.CopyDisks) > 0 || req.CopyAllDisks
	if req.Local && copying {
		return migrationRequestError{errors.New("a local migration does not copy disks: the destination on this host opens the same images; leave out copy_disks, or leave out local to copy them to other files")}
	}
	if req.Local && ep.Network != "unix" {
		return migrationRequestError{fmt.Errorf("%s: a local migration passes guest RAM's memfd over a UNIX socket to a vio on this host; use unix:/path, or leave out local to copy RAM over TCP", ep)}
	}
	var tlsCfg *tls.Config
	if req.TLSDir != "" {
		if tlsCfg, err = migration.SenderTLS(ep, req.TLSDir); err != nil {
			return migrationRequestError{err}
		}
	}
	c.op.Lock()
	defer c.op.Unlock()
	c.mu.Lock()
	if err := c.needLocked("migrate", StateRunning, StatePaused); err != nil {
		c.mu.Unlock()
		return err
	}
	if req.Local && !c.cfg.Memory.Shared {
		c.mu.Unlock()
		return migrationRequestError{errNotShared}
	}
	mm, ok := c.run.m.(migratable)
	if !ok {
		c.mu.Unlock()
		return fmt.Errorf("%w: this VM cannot migrate", ErrNotImplemented)
	}
	wasPaused := c.state == StatePaused
	src, err := mm.migrationSource(ctx, wasPaused, req.Local)
	c.mu.Unlock()
	if err != nil {
		return err
	}
	defer src.release()
	// The failover primaries leave first: the guest's traffic moves to
	// their standbys. If the migration fails here, they come back.
	if err := c.unplugForMigration(src, req.UnplugWait); err != nil {
		c.emit("migration-failed", "destination_url", ep.String(), "error", err.Error())
		return err
	}
	handled := false
	defer func() {
		if !handled && err != nil {
			c.replugAfterFailure(src, true)
		}
	}()
	// Before pre-copy or the local handoff: the pause then pays the
	// state codec's steady-state cost only (warmup.go).
	src.v.warmUpCodecs()
	if copying {
		if src.copy, err = src.v.newDiskCopy(src.ctx, req.CopyDisks, req.CopyAllDisks, ep, tlsCfg); err != nil {
			return migrationRequestError{err}
		}
		// A failed migration leaves the disks on their images alone.
		defer func() {
			if err != nil {
				src.copy.abort()
			}
		}()
	}
	conn, err := migration.Dial(src.ctx, ep)
	if err != nil {
		return migrationRequestError{err}
	}
	if tlsCfg != nil {
		if conn, err = migration.Secure(src.ctx, conn, tlsCfg, false); err != nil {
			c.emit("migration-failed", "destination_url", ep.String(), "error", err.Error())
			return err
		}
	}
	defer conn.Close()
	c.emit("migrating", "destination_url", ep.String())
	c.log.Info("migration started", "destination", ep.String())
	opts := migration.Options{
		Downtime: req.Downtime, Timeout: req.Timeout, OnTimeout: timeoutStrategy(req.IgnoreTimeout), Progress: c.progress,
		Local: req.Local}
	if src.copy != nil {
		opts.Disks, opts.DiskProgress = src.copy, c.diskProgress
	}
	stats, err := migration.Send(src.ctx, conn, src, opts)
	if err == nil && req.Local {
		src.disown()
	}
	// Left paused, with its devices paused and its disks and TAPs
	// released: the destination may run the guest, or they could not be
	// taken back. vm.resume takes them and resumes the devices first.
	stayPaused := err != nil && (errors.Is(err, migration.ErrOutcomeUnknown) || src.stuck)
	if stayPaused {
		src.hold()
	}
	if err != nil {
		// Before the release: the VM must not be closing.
		c.replugAfterFailure(src, !stayPaused)
	}
	handled = true
	// The VM may close from here on. Before c.mu is taken: a guest that
	// stopped during the migration has follow holding c.mu in Close,
	// which waits for this release.
	src.release()
	if err != nil {
		c.emit("migration-failed", "destination_url", ep.String(), "error", err.Error())
		if stayPaused {
			c.mu.Lock()
			if c.state == StateRunning {
				c.state = StatePaused
			}
			c.mu.Unlock()
		}
		return fmt.Errorf("migration to %s failed: %w", ep, err)
	}
	c.log.Info("migration sent", append([]any{"destination", ep.String()}, anys(statsKV(stats))...)...)
	// The event's milliseconds hide a same-host hop's parts.
	c.log.Debug("migration downtime", "downtime", stats.Downtime, "pause", stats.PauseTime, "send", stats.SendTime, "resume", stats.ResumeTime)
	c.emit("migrated", append([]string{"destination_url", ep.String()}, statsKV(stats)...)...)
	return c.shutdown("migrated to "+ep.String(), false)
}

func timeoutStrategy(ignore bool) migration.TimeoutStrategy {
	if ignore {
		return migration.Ignore
	}
	return migration.Cancel
}

func anys(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

// ReceiveMigration waits at req.ReceiverURL (tcp:HOST:PORT or unix:PATH)
// for one migration from SendMigration, in a Controller with no VM, and
// returns once the VM runs here (Running). A failed migration leaves no
// VM. ctx ends the wait and the migration.
func (c *Controller) ReceiveMigration(ctx context.Context, req ReceiveMigration) error {
	ep, err := migration.ParseURL(req.ReceiverURL)
	if err != nil {
		return migrationRequestError{err}
	}
	var tlsCfg *tls.Config
	if req.TLSDir != "" {
		if tlsCfg, err = migration.ReceiverTLS(ep, req.TLSDir); err != nil {
			return migrationRequestError{err}
		}
	}
	c.op.Lock()
	defer c.op.Unlock()
	if c.receive == nil {
		return fmt.Errorf("%w: this VMM cannot receive migrations", ErrNotImplemented)
	}
	c.mu.Lock()
	if c.state != NoVM {
		s := c.state
		c.mu.Unlock()
		return &StateError{Op: "receive a migration", State: s}
	}
	c.mu.Unlock()
	l, err := migration.Listen(ep)
	if err != nil {
		return migrationRequestError{err}
	}
	if ep.Network == "tcp" {
		// The bound address: tcp:HOST:0 asks for a free port, and the
		// event is where the orchestrator learns which.
		ep.Address = l.Addr().String()
	}
	c.emit("receiving-migration", "receiver_url", ep.String())
	// The listener stays open after the migration stream for the
	// connections of a disk copy (diskexport.go), until the copy ends.
	conn, side, err := migration.AcceptMigration(ctx, l, tlsCfg)
	if err != nil {
		c.emit("migration-failed", "receiver_url", ep.String(), "error", err.Error())
		return err
	}
	side.Rejected = func(remote string, err error) {
		c.log.Warn("refused a connection to the migration's listener", "from", remote, "err", err)
	}
	defer side.Close()
	defer conn.Close()
	t := &incomingTarget{c: c, side: side, paths: req.DiskPaths, devicePaths: req.DevicePaths}
	defer t.stopExports()
	rec, err := migration.Receive(ctx, conn, t, migration.ReceiveOptions{Progress: c.progress, DiskProgress: c.diskProgress})
	if err != nil {
		c.emit("migration-failed", "receiver_url", ep.String(), "error", err.Error())
		return fmt.Errorf("receiving the migration: %w", err)
	}
	m := t.m
	restored := time.Now()
	// The source flushed and disconnected its copies before it sent the
	// state: the images are closed here before the VM opens them.
	if err := t.stopExports(); err != nil {
		m.Close()
		c.emit("migration-failed", "receiver_url", ep.String(), "error", err.Error())
		rec.Finish(err)
		return err
	}
	// The source released the disks and TAPs before it sent the state:
	// take them now, before any vCPU runs. If that fails the source
	// resumes with them (it hears "failed"), so the guest runs on one
	// side only.
	if err := m.TakeResources(); err != nil {
		m.Close()
		err = fmt.Errorf("the destination cannot open the VM's %s (%w)", resourcesOf(err), err)
		c.emit("migration-failed", "receiver_url", ep.String(), "error", err.Error())
		rec.Finish(err)
		return err
	}
	taken := time.Now()
	if err := m.Start(); err != nil {
		m.Close()
		err = fmt.Errorf("starting the vCPUs: %w", err)
		rec.Finish(err)
		return err
	}
	started := time.Now()
	c.mu.Lock()
	r := &run{m: m, stop: make(chan struct{}), done: make(chan struct{})}
	c.cfg, c.run, c.state, c.stopped = t.cfg, r, StatePaused, make(chan struct{})
	c.lastExit, c.lastErr = Exit{}, nil
	go c.follow(r, c.stopped)
	err = m.Resume()
	if err == nil {
		c.state = StateRunning
	}
	c.mu.Unlock()
	if err != nil {
		// Not running here: stop it before the source resumes its own.
		c.shutdown("the migrated VM did not resume", false)
		err = fmt.Errorf("resuming the migrated VM: %w", err)
		rec.Finish(err)
		return err
	}
	// Where the destination's part of the downtime went after the
	// restore (logged by it): the disks, the vCPUs' start, the resume.
	c.log.Debug("migrated VM running", "take_resources", taken.Sub(restored), "start", started.Sub(taken), "resume", time.Since(started))
	if ferr := rec.Finish(nil); ferr != nil {
		// The VM runs here; the source stays paused, unsure.
		c.log.Warn("the migration source did not hear that the VM runs here; it stays paused there", "err", ferr)
	}
	c.log.Info("migration received", anys(statsKV(rec.Stats))...)
	c.emit("migration-received", append([]string{"receiver_url", ep.String()}, statsKV(rec.Stats)...)...)
	// Once the guest runs here: it finds its failover primaries as it
	// found them unplugged on the source, through ACPI hot plug.
	c.plugMigratedPrimaries(m, t.cfg)
	return nil
}

// incomingTarget builds the destination VM through the Controller's
// ReceiveFunc.
type incomingTarget struct {
	c   *Controller
	cfg *config.VM
	m   IncomingMachine
	// side is the migration's listener, which serves a disk copy's
	// connections (nil: none can be served); paths are disk_paths, and
	// exports the images a copy goes into.
	side    *migration.Listener
	paths   map[string]string
	exports *diskExports
	// devicePaths are ReceiveMigration.DevicePaths.
	devicePaths map[string]string
}

func (t *incomingTarget) Build(b []byte) (migration.Incoming, error) {
	if len(t.paths) > 0 {
		return nil, errors.New("disk_paths gives disks paths of their own here, but the source copies no disk: give copy_disks at the source, or leave out disk_paths if both hosts see the images")
	}
	if t.side != nil {
		t.side.Close() // no disk connection will come
	}
	return t.build(b, nil)
}

var _ migration.DiskTarget = (*incomingTarget)(nil)

// BuildCopying builds the VM of a migration that copies disks: the
// destination's own images of them are opened and served to the source
// first, so that a missing or mis-sized image fails before anything else.
func (t *incomingTarget) BuildCopying(b []byte, disks []migration.Disk, token migration.Token) (migration.Incoming, error) {
	if t.side == nil {
		return nil, errors.New("this receiver cannot take copies of disks")
	}
	cfg, err := decodeConfig(b)
	if err != nil {
		return nil, err
	}
	if err := applyDiskPaths(cfg, t.paths, disks); err != nil {
		return nil, err
	}
	ex, err := openExports(cfg, disks, t.c.log)
	if err != nil {
		return nil, err
	}
	t.exports = ex
	if err := t.side.Serve(token, ex.srv.ServeConn); err != nil {
		t.stopExports()
		return nil, err
	}
	t.c.log.Info("serving the migrated disks' copies to the source", "disks", len(disks))
	in, err := t.buildFrom(cfg, nil)
	if err != nil {
		t.stopExports()
		return nil, err
	}
	return in, nil
}

// stopExports ends a disk copy's service: no more connections, the
// server stopped and the images closed. It can be called again.
func (t *incomingTarget) stopExports() error {
	if t.exports == nil {
		return nil
	}
	if t.side != nil {
		t.side.Close()
	}
	return t.exports.stop()
}

func decodeConfig(b []byte) (*config.VM, error) {
	cfg, err := config.Decode(b)
	if err != nil {
		return nil, fmt.Errorf("the source's VM config: %w", err)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("the source's VM config: %w", err)
	}
	return cfg, nil
}

// BuildShared builds the VM of a local migration on the source's RAM.
func (t *incomingTarget) BuildShared(b []byte, ram migration.SharedRAM) (migration.Incoming, error) {
	if len(t.paths) > 0 {
		return nil, errors.New("disk_paths gives disks paths of their own here, but a local migration copies no disk: leave out disk_paths")
	}
	if t.side != nil {
		t.side.Close()
	}
	return t.build(b, &ram)
}

var _ migration.LocalTarget = (*incomingTarget)(nil)

func (t *incomingTarget) build(b []byte, ram *migration.SharedRAM) (migration.Incoming, error) {
	cfg, err := decodeConfig(b)
	if err != nil {
		return nil, err
	}
	return t.buildFrom(cfg, ram)
}

func (t *incomingTarget) buildFrom(cfg *config.VM, ram *migration.SharedRAM) (migration.Incoming, error) {
	if err := applyDevicePaths(cfg, t.devicePaths); err != nil {
		return nil, err
	}
	m, err := t.c.receive(cfg.Clone(), ram)
	if err != nil {
		return nil, fmt.Errorf("building the VM here: %w", err)
	}
	t.cfg, t.m = cfg, m
	return incoming{m}, nil
}

// incoming adapts an IncomingMachine to migration.Incoming.
type incoming struct{ m IncomingMachine }

func (i incoming) RAM() []migration.Region         { return i.m.RAM() }
func (i incoming) Restore(s *state.Snapshot) error { return i.m.RestoreState(s) }
func (i incoming) Discard()                        { i.m.Close() }
