package vmm_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/vmm"
	"github.com/viovmm/vio/vmm/vmmtest"
)

func newController(t *testing.T) (*vmm.Controller, *vmmtest.Builder, *config.VM) {
	t.Helper()
	kernel := filepath.Join(t.TempDir(), "bzImage")
	if err := os.WriteFile(kernel, []byte("not booted"), 0o644); err != nil {
		t.Fatal(err)
	}
	b := vmmtest.NewBuilder()
	return vmm.NewController(b.Build, nil), b, vmmtest.Config(kernel)
}

func wantState(t *testing.T, c *vmm.Controller, want vmm.State) {
	t.Helper()
	info, err := c.Info()
	if want == vmm.NoVM {
		if !errors.Is(err, vmm.ErrNotCreated) {
			t.Fatalf("Info with no VM: %v, want ErrNotCreated", err)
		}
		return
	}
	if err != nil || info.State != want {
		t.Fatalf("state %q (%v), want %q", info.State, err, want)
	}
}

func wantWrongState(t *testing.T, err error, sentence string) {
	t.Helper()
	if !errors.Is(err, vmm.ErrWrongState) || !strings.Contains(err.Error(), sentence) {
		t.Fatalf("got %v, want a wrong-state error saying %q", err, sentence)
	}
}

func TestControllerLifecycle(t *testing.T) {
	c, b, cfg := newController(t)
	wantState(t, c, vmm.NoVM)
	if err := c.Boot(); !errors.Is(err, vmm.ErrNotCreated) {
		t.Fatalf("Boot before Create: %v", err)
	}
	if err := c.Pause(); !errors.Is(err, vmm.ErrNotCreated) {
		t.Fatalf("Pause before Create: %v", err)
	}
	if err := c.Create(cfg); err != nil {
		t.Fatal(err)
	}
	wantState(t, c, vmm.StateCreated)
	wantWrongState(t, c.Create(cfg), "exists already")
	wantWrongState(t, c.Pause(), "not been booted")
	wantWrongState(t, c.Shutdown(), "not been booted")
	if b.Last() != nil {
		t.Fatal("Create built a machine; building waits for Boot")
	}

	if err := c.Boot(); err != nil {
		t.Fatal(err)
	}
	wantState(t, c, vmm.StateRunning)
	m := b.Last()
	wantWrongState(t, c.Boot(), "running already")
	wantWrongState(t, c.Resume(), "running, not paused")

	if err := c.Pause(); err != nil {
		t.Fatal(err)
	}
	wantState(t, c, vmm.StatePaused)
	if !m.Paused() {
		t.Fatal("the machine was not paused")
	}
	wantWrongState(t, c.Pause(), "paused already")
	wantWrongState(t, c.Boot(), "send vm.resume")
	if err := c.Resume(); err != nil {
		t.Fatal(err)
	}
	wantState(t, c, vmm.StateRunning)
	cnt, err := c.Counters()
	if err != nil || cnt["vcpu0"]["pauses"] != 1 || cnt["vcpu0"]["resumes"] != 1 {
		t.Fatalf("counters %v %v", cnt, err)
	}

	// Shut down while paused: the stop reaches a parked guest too.
	if err := c.Pause(); err != nil {
		t.Fatal(err)
	}
	if err := c.Shutdown(); err != nil {
		t.Fatal(err)
	}
	wantState(t, c, vmm.StateShutdown)
	if !m.Closed() {
		t.Fatal("Shutdown returned before the machine was closed")
	}
	if e, _ := c.LastExit(); e.Reason != vmm.ExitStopped {
		t.Fatalf("last exit %v, want stopped", e)
	}
	wantWrongState(t, c.Resume(), "shut down")
	wantWrongState(t, c.Shutdown(), "shut down")

	// A shut-down VM boots again, on a new machine.
	if err := c.Boot(); err != nil {
		t.Fatal(err)
	}
	wantState(t, c, vmm.StateRunning)
	if len(b.Machines()) != 2 {
		t.Fatalf("%d machines built, want 2", len(b.Machines()))
	}
	if err := c.Delete(); err != nil {
		t.Fatal(err)
	}
	wantState(t, c, vmm.NoVM)
	for _, m := range b.Machines() {
		if !m.Closed() || m.Err() != nil {
			t.Fatalf("machine closed=%v, contract: %v", m.Closed(), m.Err())
		}
	}
	if err := c.Create(cfg); err != nil {
		t.Fatalf("Create after Delete: %v", err)
	}
}

// Guest events: a reboot builds a fresh machine and stays Running, a
// poweroff ends in Shutdown, and on_reboot=exit makes a reboot a poweroff.
func TestControllerGuestEvents(t *testing.T) {
	c, b, cfg := newController(t)
	if err := c.Create(cfg); err != nil {
		t.Fatal(err)
	}
	if err := c.Boot(); err != nil {
		t.Fatal(err)
	}
	first := <-b.Built
	stopped := c.Stopped()
	first.Exit(vmm.Exit{Reason: vmm.ExitReboot, Detail: "guest reset"})
	second := <-b.Built
	wantState(t, c, vmm.StateRunning)
	if !first.Closed() || second.Closed() {
		t.Fatalf("after a reboot: old closed=%v, new closed=%v", first.Closed(), second.Closed())
	}
	select {
	case <-stopped:
		t.Fatal("a guest reboot counted as a shutdown")
	default:
	}
	// Pause and Resume reach the new machine.
	if err := c.Pause(); err != nil || !second.Paused() {
		t.Fatalf("pause after reboot: %v, paused=%v", err, second.Paused())
	}
	if err := c.Resume(); err != nil {
		t.Fatal(err)
	}
	second.Exit(vmm.Exit{Reason: vmm.ExitPoweroff})
	<-stopped
	wantState(t, c, vmm.StateShutdown)
	if e, err := c.LastExit(); e.Reason != vmm.ExitPoweroff || err != nil {
		t.Fatalf("last exit %v %v", e, err)
	}

	// on_reboot=exit.
	c2, b2, cfg2 := newController(t)
	cfg2.OnReboot = "exit"
	c2.Create(cfg2)
	if err := c2.Boot(); err != nil {
		t.Fatal(err)
	}
	stopped = c2.Stopped()
	(<-b2.Built).Exit(vmm.Exit{Reason: vmm.ExitReboot})
	<-stopped
	wantState(t, c2, vmm.StateShutdown)
	if len(b2.Machines()) != 1 {
		t.Fatal("on_reboot=exit rebuilt the machine")
	}
}

// A reboot whose rebuild fails ends in Shutdown with the error kept.
func TestControllerRebootBuildFails(t *testing.T) {
	c, b, cfg := newController(t)
	c.Create(cfg)
	if err := c.Boot(); err != nil {
		t.Fatal(err)
	}
	stopped := c.Stopped()
	b.Fail(errors.New("out of memory"))
	b.Last().Exit(vmm.Exit{Reason: vmm.ExitReboot})
	<-stopped
	wantState(t, c, vmm.StateShutdown)
	if e, err := c.LastExit(); e.Reason != vmm.ExitError || err == nil || !strings.Contains(err.Error(), "out of memory") {
		t.Fatalf("last exit %v, %v", e, err)
	}
	// A failed Boot leaves the state as it was.
	if err := c.Boot(); err == nil || !strings.Contains(err.Error(), "out of memory") {
		t.Fatalf("Boot with a failing builder: %v", err)
	}
	wantState(t, c, vmm.StateShutdown)
	b.Fail(nil)
	if err := c.Reboot(); !errors.Is(err, vmm.ErrWrongState) {
		t.Fatalf("Reboot of a shut-down VM: %v", err)
	}
	if err := c.Boot(); err != nil {
		t.Fatal(err)
	}
	stopped = c.Stopped()
	if err := c.Reboot(); err != nil {
		t.Fatal(err)
	}
	wantState(t, c, vmm.StateRunning)
	select {
	case <-stopped:
		t.Fatal("vm.reboot ended the boot (Stopped closed)")
	default:
	}
	if c.Stopped() != stopped {
		t.Fatal("vm.reboot started a new boot instead of continuing it")
	}
	if n := len(b.Machines()); n != 3 {
		t.Fatalf("%d machines, want 3 (boot, boot, reboot)", n)
	}
}

func TestControllerConfig(t *testing.T) {
	c, _, cfg := newController(t)
	bad := cfg.Clone()
	bad.Payload.Kernel = ""
	if err := c.Create(bad); !errors.Is(err, vmm.ErrInvalidConfig) || !strings.Contains(err.Error(), "no kernel") {
		t.Fatalf("Create without a kernel: %v", err)
	}
	wantState(t, c, vmm.NoVM)
	if _, err := c.AddDisk(config.Disk{Path: "a.img"}); !errors.Is(err, vmm.ErrNotCreated) {
		t.Fatalf("AddDisk with no VM: %v", err)
	}
	if err := c.Create(cfg); err != nil {
		t.Fatal(err)
	}
	// The Controller keeps its own copy.
	cfg.Payload.Cmdline = "changed by the caller"
	info, _ := c.Info()
	if info.Config.Payload.Cmdline == cfg.Payload.Cmdline {
		t.Fatal("the Controller shares the caller's config")
	}
	if info.Config.CPUs.MaxVCPUs != info.Config.CPUs.BootVCPUs {
		t.Fatalf("max_vcpus %d not defaulted to boot_vcpus", info.Config.CPUs.MaxVCPUs)
	}
	if _, err := c.AddDisk(config.Disk{Path: ""}); !errors.Is(err, vmm.ErrInvalidConfig) {
		t.Fatalf("AddDisk without a path: %v", err)
	}
	if info, err := c.AddDisk(config.Disk{Path: "a.img", ID: "d0"}); err != nil || info != nil {
		t.Fatalf("cold AddDisk: %+v, %v; want no device info", info, err)
	}
	if _, err := c.AddNet(config.Net{Tap: "tap0"}); err != nil {
		t.Fatal(err)
	}
	info, _ = c.Info()
	if len(info.Config.Disks) != 1 || len(info.Config.Net) != 1 {
		t.Fatalf("cold-added devices missing: %+v", info.Config)
	}
	if err := c.Boot(); err != nil {
		t.Fatal(err)
	}
	if info, err := c.AddNet(config.Net{Tap: "tap1"}); err != nil || info == nil || info.ID != "_net1" {
		t.Fatalf("AddNet to a running VM: %+v, %v; want it hot-plugged as _net1", info, err)
	}
	c.Delete()
}

// Many callers at once: every operation either succeeds or is refused for
// the state, the machines' contract holds, and (under -race) no data race.
func TestControllerConcurrent(t *testing.T) {
	c, b, cfg := newController(t)
	c.Create(cfg)
	if err := c.Boot(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	ops := []func() error{c.Pause, c.Resume, c.Shutdown, c.Boot, c.Reboot,
		func() error { _, err := c.Info(); return err },
		func() error { _, err := c.Counters(); return err }}
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				op := ops[(g+i)%len(ops)]
				if err := op(); err != nil && !errors.Is(err, vmm.ErrWrongState) {
					t.Errorf("unexpected error: %v", err)
				}
			}
		}()
	}
	wg.Wait()
	c.Delete()
	for _, m := range b.Machines() {
		if err := m.Err(); err != nil {
			t.Fatal(err)
		}
		if !m.Closed() {
			t.Fatal("a machine was left open")
		}
	}
}

// TestControllerKeepsPinnedFormat: what a build pins into its config (a
// probed disk format) is what the build after a guest reboot gets, so a
// guest that rewrites its raw disk's first sector is never probed again.
func TestControllerKeepsPinnedFormat(t *testing.T) {
	kernel := filepath.Join(t.TempDir(), "bzImage")
	if err := os.WriteFile(kernel, []byte("not booted"), 0o644); err != nil {
		t.Fatal(err)
	}
	b := vmmtest.NewBuilder()
	builds := 0
	pinning := func(cfg *config.VM) (vmm.Machine, error) {
		builds++
		if builds == 1 {
			cfg.Disks[0].ImageType, cfg.Disks[0].ImageTypeProbed = config.ImageRaw, true
		}
		return b.Build(cfg)
	}
	c := vmm.NewController(pinning, nil)
	cfg := vmmtest.Config(kernel)
	cfg.Disks = []config.Disk{{Path: kernel}}
	if err := c.Create(cfg); err != nil {
		t.Fatal(err)
	}
	if err := c.Boot(); err != nil {
		t.Fatal(err)
	}
	(<-b.Built).Exit(vmm.Exit{Reason: vmm.ExitReboot})
	second := <-b.Built
	if d := second.Config.Disks[0]; d.ImageType != config.ImageRaw || !d.ImageTypeProbed {
		t.Errorf("the rebuilt VM got disk %+v, want the pinned raw format", d)
	}
	c.Shutdown()
}

// TestControllerSnapshotRestore: a snapshot needs a paused VM and a new or
// empty destination; a restore needs a Controller with no VM and ends
// Paused with the snapshot's config, and vm.resume runs it.
func TestControllerSnapshotRestore(t *testing.T) {
	c, b, cfg := newController(t)
	dir := filepath.Join(t.TempDir(), "snap")
	url := "file://" + dir
	if err := c.Snapshot(url); !errors.Is(err, vmm.ErrNotCreated) {
		t.Fatalf("Snapshot with no VM: %v", err)
	}
	if err := c.Create(cfg); err != nil {
		t.Fatal(err)
	}
	if err := c.Boot(); err != nil {
		t.Fatal(err)
	}
	wantWrongState(t, c.Snapshot(url), "send vm.pause first")
	if err := c.Pause(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{dir, "http://x" + dir, "file://host" + dir, "file://relative/dir", "file:///a?b"} {
		if err := c.Snapshot(bad); !errors.Is(err, vmm.ErrSnapshotRequest) || !strings.Contains(err.Error(), "file:///") {
			t.Errorf("Snapshot(%q): %v, want a sentence asking for file:///", bad, err)
		}
	}
	if err := c.Snapshot(url); err != nil {
		t.Fatal(err)
	}
	wantState(t, c, vmm.StatePaused)
	if err := c.Snapshot(url); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("second snapshot into the same directory: %v", err)
	}
	if err := b.Last().Err(); err != nil {
		t.Fatal(err)
	}

	// A restore needs a Controller without a VM.
	c.SetRestore(b.Restore)
	wantWrongState(t, c.Restore(url, vmm.RestoreOptions{}), "has a VM already")
	c.Delete()

	// And one that can restore.
	fresh, _, _ := newController(t)
	if err := fresh.Restore(url, vmm.RestoreOptions{}); !errors.Is(err, vmm.ErrNotImplemented) {
		t.Errorf("Restore without a RestoreFunc: %v", err)
	}

	c2 := vmm.NewController(b.Build, nil)
	c2.SetRestore(b.Restore)
	if err := c2.Restore("file://"+filepath.Join(t.TempDir(), "none"), vmm.RestoreOptions{}); !errors.Is(err, vmm.ErrSnapshotRequest) || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("Restore from a missing directory: %v", err)
	}
	wantState(t, c2, vmm.NoVM)
	if err := c2.Restore(url, vmm.RestoreOptions{Prefault: true}); err != nil {
		t.Fatal(err)
	}
	wantState(t, c2, vmm.StatePaused)
	m := b.Last()
	if !m.Restored || !m.Prefault || !m.Paused() {
		t.Errorf("restored machine: restored %v prefault %v paused %v", m.Restored, m.Prefault, m.Paused())
	}
	info, _ := c2.Info()
	if info.Config.Payload.Kernel != cfg.Payload.Kernel {
		t.Errorf("restored config has kernel %q, want %q", info.Config.Payload.Kernel, cfg.Payload.Kernel)
	}
	if err := c2.Resume(); err != nil {
		t.Fatal(err)
	}
	wantState(t, c2, vmm.StateRunning)
	if err := c2.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := m.Err(); err != nil {
		t.Fatal(err)
	}
}

// TestControllerBeforeStart checks the hook the sandbox uses: it runs once,
// on the first Machine built and before its vCPUs start (not again for the
// Machine a guest reboot builds), and its error fails the boot and closes
// the Machine it was about to start.
func TestControllerBeforeStart(t *testing.T) {
	c, b, cfg := newController(t)
	c.Create(cfg)
	c.SetBeforeStart(func() error { return errors.New("no sandbox here") })
	if err := c.Boot(); err == nil || !strings.Contains(err.Error(), "no sandbox here") {
		t.Fatalf("Boot with a failing hook: %v", err)
	}
	if m := b.Last(); m == nil || m.Started() || !m.Closed() {
		t.Fatalf("the machine of a failed hook: %+v; want built, never started, closed", m)
	}
	wantState(t, c, vmm.StateCreated)

	calls := 0
	c.SetBeforeStart(func() error {
		calls++
		if m := b.Last(); m == nil || m.Started() {
			t.Errorf("hook ran with machine %+v; want one built and not started", m)
		}
		return nil
	})
	if err := c.Boot(); err != nil {
		t.Fatal(err)
	}
	if err := c.Reboot(); err != nil {
		t.Fatal(err)
	}
	if calls != 1 {
		t.Fatalf("hook ran %d times over a boot and a reboot, want once", calls)
	}
	if !b.Last().Started() {
		t.Fatal("the rebooted machine was not started")
	}
}
