package vmm_test

import (
	"errors"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/events"
	"github.com/viovmm/vio/vmm"
)

// takeEvents reads what the subscription holds now: every event the
// Controller published before its operations returned.
func takeEvents(s *events.Subscription) []string {
	var got []string
	for {
		select {
		case e := <-s.Events():
			name := e.Source + ":" + e.Event
			if r := e.Properties["reason"]; r != "" {
				name += "(" + r + ")"
			}
			got = append(got, name)
		default:
			return got
		}
	}
}

func wantEvents(t *testing.T, s *events.Subscription, want ...string) {
	t.Helper()
	if got := takeEvents(s); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("events\n got %v\nwant %v", got, want)
	}
}

func TestControllerPublishesLifecycle(t *testing.T) {
	c, b, cfg := newController(t)
	m := events.NewMonitor()
	c.SetEvents(m)
	s := m.Subscribe(64)

	if err := c.Create(cfg); err != nil {
		t.Fatal(err)
	}
	if err := c.Boot(); err != nil {
		t.Fatal(err)
	}
	wantEvents(t, s, "vm:created", "vm:booting", "vm:booted")
	// Refused operations publish nothing.
	c.Resume()
	c.Boot()
	wantEvents(t, s)

	c.Pause()
	c.Resume()
	wantEvents(t, s, "vm:pausing", "vm:paused", "vm:resuming", "vm:resumed")

	if err := c.Reboot(); err != nil {
		t.Fatal(err)
	}
	wantEvents(t, s, "vm:rebooting(api)", "vm:rebooted")

	// A guest reboot: the Controller's goroutine publishes, so wait for
	// the events rather than for the state.
	b.Last().Exit(vmm.Exit{Reason: vmm.ExitReboot, Detail: "reset"})
	for _, want := range []string{"vm:rebooting", "vm:rebooted"} {
		e := next(t, s)
		if e.Source+":"+e.Event != want {
			t.Fatalf("got %+v, want %s", e, want)
		}
	}

	c.Pause()
	dir := filepath.Join(t.TempDir(), "snap")
	u := (&url.URL{Scheme: "file", Path: dir}).String()
	if err := c.Snapshot(u); err != nil {
		t.Fatal(err)
	}
	wantEvents(t, s, "vm:pausing", "vm:paused", "vm:snapshotting", "vm:snapshotted")

	// A panic is the guest's event, then the VM's shutdown.
	stopped := c.Stopped()
	b.Last().Exit(vmm.Exit{Reason: vmm.ExitPanic, Detail: "Kernel panic - not syncing"})
	<-stopped
	if e := next(t, s); e.Source != events.SourceGuest || e.Event != "panic" || e.Properties["detail"] != "Kernel panic - not syncing" {
		t.Fatalf("got %+v, want the guest's panic", e)
	}
	wantEvents(t, s, "vm:shutdown(panic)")

	if err := c.Boot(); err != nil {
		t.Fatal(err)
	}
	if err := c.Shutdown(); err != nil {
		t.Fatal(err)
	}
	c.Delete()
	c.Delete()
	wantEvents(t, s, "vm:booting", "vm:booted", "vm:shutdown(stopped)", "vm:deleted")

	// A restore.
	c.SetRestore(b.Restore)
	if err := c.Restore(u, vmm.RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	wantEvents(t, s, "vm:restoring", "vm:restored")

	// A reboot whose rebuild fails ends the boot with an error.
	c.Resume()
	takeEvents(s)
	stopped = c.Stopped()
	b.Fail(errors.New("out of memory"))
	b.Last().Exit(vmm.Exit{Reason: vmm.ExitReboot})
	<-stopped
	wantEvents(t, s, "vm:rebooting(guest)", "vm:shutdown(error)")
}

// next waits for the next event; the Controller's own goroutine
// publishes what the guest did.
func next(t *testing.T, s *events.Subscription) events.Event {
	t.Helper()
	select {
	case e := <-s.Events():
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10 s")
	}
	return events.Event{}
}

// TestControllerPublishesHotplug: a hot-plugged device is announced with
// its id and address, and its removal once the guest has let it go.
func TestControllerPublishesHotplug(t *testing.T) {
	c, _, cfg := newController(t)
	m := events.NewMonitor()
	c.SetEvents(m)
	s := m.Subscribe(64)
	if err := c.Create(cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddDisk(config.Disk{Path: "cold.img", ID: "cold"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Boot(); err != nil {
		t.Fatal(err)
	}
	takeEvents(s)
	info, err := c.AddDisk(config.Disk{Path: "hot.img", ID: "hot"})
	if err != nil {
		t.Fatal(err)
	}
	e := next(t, s)
	if e.Source != events.SourceDevice || e.Event != "device-added" || e.Properties["id"] != "hot" || e.Properties["bdf"] != info.BDF {
		t.Fatalf("got %+v, want hot's device-added at %s", e, info.BDF)
	}
	if err := c.RemoveDevice("hot"); err != nil {
		t.Fatal(err)
	}
	if e := next(t, s); e.Event != "device-removed" || e.Properties["id"] != "hot" {
		t.Fatalf("got %+v, want hot's device-removed", e)
	}
}
