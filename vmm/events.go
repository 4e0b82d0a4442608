package vmm

import (
	"strconv"
	"sync"
	"time"

	"github.com/viovmm/vio/events"
)

// SetEvents makes the Controller publish its VM's lifecycle on m (source
// "vm": created, booting, booted, pausing, paused, resuming, resumed,
// rebooting, rebooted, shutdown, deleted, snapshotting, snapshotted,
// restoring, restored, and the migration events of migrate.go; source
// "guest": panic). Call it before the
// Controller is used. The VMs it builds publish their devices' events
// if Options.Events is set too.
func (c *Controller) SetEvents(m *events.Monitor) { c.ev = m }

// emit publishes a VM lifecycle event; with no monitor it does nothing.
func (c *Controller) emit(event string, kv ...string) {
	c.ev.Publish(events.SourceVM, event, kv...)
}

// emitExit publishes how a boot ended: a guest panic as its own event,
// then the shutdown with its reason.
func (c *Controller) emitExit(e Exit) {
	if e.Reason == ExitPanic {
		c.ev.Publish(events.SourceGuest, "panic", "detail", e.Detail)
	}
	c.emit("shutdown", "reason", e.Reason.String(), "detail", e.Detail)
}

// deviceEvents returns the virtio transport hook that publishes device
// name's activated, reset and needs-reset (source "virtio-device",
// property "id"; needs-reset has "error"). Without a monitor it is nil.
func (v *VM) deviceEvents(name string) func(string, error) {
	m := v.opts.Events
	if m == nil {
		return nil
	}
	return func(ev string, err error) {
		if err != nil {
			m.Publish(events.SourceDevice, ev, "id", name, "error", err.Error())
			return
		}
		m.Publish(events.SourceDevice, ev, "id", name)
	}
}

// diskErrorEvents returns the virtio-blk hook that publishes the back-end
// failing disk id's requests (source "virtio-device", event "disk-error",
// with the operation and the error). A failing disk fails every request:
// at most one event a second goes out, counting those it stands for.
// Without a monitor it is nil.
func (v *VM) diskErrorEvents(id string) func(op string, err error) {
	m := v.opts.Events
	if m == nil {
		return nil
	}
	var mu sync.Mutex
	var last time.Time
	var held int
	return func(op string, err error) {
		mu.Lock()
		held++
		if time.Since(last) < time.Second {
			mu.Unlock()
			return
		}
		n := held
		last, held = time.Now(), 0
		mu.Unlock()
		m.Publish(events.SourceDevice, "disk-error", "id", id, "op", op, "error", err.Error(), "count", strconv.Itoa(n))
	}
}
