package vmm_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/vmm"
)

// TestStopGracefully: the power button ends a guest that answers it as a
// poweroff (nil); a guest that ignores it is stopped after the timeout,
// and so is a paused one at once, each with an error that says so.
func TestStopGracefully(t *testing.T) {
	c, b, cfg := newController(t)
	if err := c.PowerButton(); !errors.Is(err, vmm.ErrNotCreated) {
		t.Fatalf("PowerButton with no VM: %v", err)
	}
	if err := c.Create(cfg); err != nil {
		t.Fatal(err)
	}
	wantWrongState(t, c.PowerButton(), "power button")
	if err := c.Boot(); err != nil {
		t.Fatal(err)
	}
	if err := c.StopGracefully(time.Minute, "stopped by terminated", nil); err != nil {
		t.Fatalf("a guest that powers off on the button: %v", err)
	}
	if e, _ := c.LastExit(); e.Reason != vmm.ExitPoweroff || b.Last().Presses() != 1 {
		t.Fatalf("exit %+v after %d presses, want a poweroff after one", e, b.Last().Presses())
	}

	// A guest that ignores the button: the (short) timeout is the path
	// under test, not a wait for something to happen.
	if err := c.Boot(); err != nil {
		t.Fatal(err)
	}
	b.Last().IgnoreButton = true
	err := c.StopGracefully(10*time.Millisecond, "stopped by terminated", nil)
	if err == nil || !strings.Contains(err.Error(), "did not power off within 10ms") {
		t.Fatalf("a guest that ignores the button: %v", err)
	}
	if e, _ := c.LastExit(); e.Reason != vmm.ExitStopped {
		t.Fatalf("exit %+v, want stopped", e)
	}

	// A second signal stops it at once.
	if err := c.Boot(); err != nil {
		t.Fatal(err)
	}
	b.Last().IgnoreButton = true
	now := make(chan struct{})
	close(now)
	if err := c.StopGracefully(time.Hour, "stopped by interrupt", now); err == nil || !strings.Contains(err.Error(), "then again") {
		t.Fatalf("a second signal: %v", err)
	}

	// A paused guest cannot answer: it is stopped at once.
	if err := c.Boot(); err != nil {
		t.Fatal(err)
	}
	if err := c.Pause(); err != nil {
		t.Fatal(err)
	}
	if err := c.StopGracefully(time.Hour, "stopped by terminated", nil); err == nil || !strings.Contains(err.Error(), "Paused") {
		t.Fatalf("a paused guest: %v", err)
	}
	wantState(t, c, vmm.StateShutdown)
}

// TestResizeDisk: only a booted VM's disks grow; unknown ids are refused.
func TestResizeDisk(t *testing.T) {
	c, b, cfg := newController(t)
	cfg.Disks = append(cfg.Disks, config.Disk{Path: "a.img", ID: "d1"})
	if err := c.Create(cfg); err != nil {
		t.Fatal(err)
	}
	if err := c.ResizeDisk("d1", 1<<30); !errors.Is(err, vmm.ErrWrongState) || !strings.Contains(err.Error(), "vio image resize") {
		t.Fatalf("ResizeDisk before boot: %v", err)
	}
	if err := c.Boot(); err != nil {
		t.Fatal(err)
	}
	if err := c.ResizeDisk("nope", 1<<30); !errors.Is(err, vmm.ErrNoDevice) {
		t.Fatalf("ResizeDisk of an unknown id: %v", err)
	}
	if err := c.ResizeDisk("d1", 1<<30); err != nil || b.Last().Resized("d1") != 1<<30 {
		t.Fatalf("ResizeDisk: %v, the machine got %d", err, b.Last().Resized("d1"))
	}
}
