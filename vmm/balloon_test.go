package vmm_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/vmm"
)

func ptr[T any](v T) *T { return &v }

// TestResizeBalloon: vm.resize's balloon size is checked, recorded in the
// config before boot (the boot then uses it) and passed to the running
// machine after; vCPU and RAM resizing are refused as not implemented.
func TestResizeBalloon(t *testing.T) {
	c, b, cfg := newController(t)
	if err := c.Resize(vmm.Resize{DesiredBalloon: ptr(int64(0))}); !errors.Is(err, vmm.ErrNotCreated) {
		t.Fatalf("resize with no VM: %v", err)
	}
	if err := c.Create(cfg); err != nil {
		t.Fatal(err)
	}
	if err := c.Resize(vmm.Resize{DesiredBalloon: ptr(int64(1 << 20))}); !errors.Is(err, vmm.ErrInvalidConfig) || !strings.Contains(err.Error(), "no balloon") {
		t.Fatalf("resize without a balloon: %v", err)
	}
	c.Delete()
	cfg.Balloon = &config.Balloon{Size: 0, FreePageReporting: true}
	if err := c.Create(cfg); err != nil {
		t.Fatal(err)
	}
	if err := c.Resize(vmm.Resize{DesiredBalloon: ptr(int64(16 << 20))}); err != nil {
		t.Fatal(err)
	}
	if info, _ := c.Info(); info.Config.Balloon.Size != 16<<20 {
		t.Fatalf("config balloon size %d before boot", info.Config.Balloon.Size)
	}
	if err := c.Boot(); err != nil {
		t.Fatal(err)
	}
	m := b.Last()
	if m.Config.Balloon.Size != 16<<20 {
		t.Errorf("booted with balloon size %d", m.Config.Balloon.Size)
	}
	for _, r := range []struct {
		req  vmm.Resize
		want error
		says string
	}{
		{vmm.Resize{DesiredBalloon: ptr(cfg.Memory.Size + 1)}, vmm.ErrInvalidConfig, "more than the guest's"},
		{vmm.Resize{DesiredBalloon: ptr(int64(-1))}, vmm.ErrInvalidConfig, "negative"},
		{vmm.Resize{}, vmm.ErrInvalidConfig, "needs desired_balloon"},
		{vmm.Resize{DesiredVCPUs: ptr(2)}, vmm.ErrNotImplemented, "vCPU hotplug"},
		{vmm.Resize{DesiredRAM: ptr(int64(1 << 30))}, vmm.ErrNotImplemented, "memory hotplug"},
	} {
		if err := c.Resize(r.req); !errors.Is(err, r.want) || !strings.Contains(err.Error(), r.says) {
			t.Errorf("%+v: %v, want %v saying %q", r.req, err, r.want, r.says)
		}
	}
	if m.BalloonSize() != -1 {
		t.Fatalf("a refused resize reached the machine: %d", m.BalloonSize())
	}
	if err := c.Resize(vmm.Resize{DesiredBalloon: ptr(int64(24 << 20))}); err != nil {
		t.Fatal(err)
	}
	if m.BalloonSize() != 24<<20 {
		t.Errorf("machine got %d", m.BalloonSize())
	}
	if err := c.Pause(); err != nil {
		t.Fatal(err)
	}
	if err := c.Resize(vmm.Resize{DesiredBalloon: ptr(int64(0))}); err != nil || m.BalloonSize() != 0 {
		t.Errorf("resize while paused: %v, machine has %d", err, m.BalloonSize())
	}
	if info, _ := c.Info(); info.Config.Balloon.Size != 0 {
		t.Errorf("config balloon size %d after resizes", info.Config.Balloon.Size)
	}
	if err := m.Err(); err != nil {
		t.Error(err)
	}
}
