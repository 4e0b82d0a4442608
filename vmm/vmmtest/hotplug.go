package vmmtest

import (
	"fmt"
	"sync"
	"time"

	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/vmm"
)

// hotplug is the Machine's double of vmm.Hotplugger: devices get slots
// from 1 up (a freed slot is reused), and a removal is released at once
// unless the test holds the guest's answer (HoldEjects).
type hotplug struct {
	mu      sync.Mutex
	slots   map[string]uint8 // device id → slot
	held    bool
	pending map[string]func() // held removals: id → release
	paths   map[string]string // pass-through device id → host path
	refuse  map[string]error  // host path → AddDevice's error
}

var _ vmm.Hotplugger = (*Machine)(nil)

func (m *Machine) hp() *hotplug {
	m.hpOnce.Do(func() {
		m.hot = &hotplug{slots: map[string]uint8{}, pending: map[string]func(){}, paths: map[string]string{}, refuse: map[string]error{}}
	})
	return m.hot
}

func (h *hotplug) add(id string) (string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, dup := h.slots[id]; dup || id == "" {
		return "", fmt.Errorf("vmmtest: device id %q empty or in use", id)
	}
	for s := uint8(1); s < 32; s++ {
		free := true
		for _, x := range h.slots {
			free = free && x != s
		}
		if free {
			h.slots[id] = s
			return fmt.Sprintf("0000:00:%02x.0", s), nil
		}
	}
	return "", fmt.Errorf("vmmtest: no free slot")
}

// AddDisk implements vmm.Hotplugger.
func (m *Machine) AddDisk(d *config.Disk) (string, error) { return m.hp().add(d.ID) }

// AddNet implements vmm.Hotplugger.
func (m *Machine) AddNet(n *config.Net) (string, error) { return m.hp().add(n.ID) }

// AddVsock implements vmm.Hotplugger.
func (m *Machine) AddVsock(vs *config.Vsock) (string, error) { return m.hp().add(vs.ID) }

// AddDevice implements vmm.Hotplugger: it records the host device's
// path, or fails as RefuseDevice said.
func (m *Machine) AddDevice(d *config.Device) (string, error) {
	h := m.hp()
	h.mu.Lock()
	err := h.refuse[d.Path]
	h.mu.Unlock()
	if err != nil {
		return "", err
	}
	bdf, err := h.add(d.ID)
	if err == nil {
		h.mu.Lock()
		h.paths[d.ID] = d.Path
		h.mu.Unlock()
	}
	return bdf, err
}

// RefuseDevice makes AddDevice of the host device at path fail with err
// (nil: succeed again).
func (m *Machine) RefuseDevice(path string, err error) {
	h := m.hp()
	h.mu.Lock()
	defer h.mu.Unlock()
	if err == nil {
		delete(h.refuse, path)
		return
	}
	h.refuse[path] = err
}

// PassedThrough returns the host path of each pass-through device
// AddDevice plugged and nothing removed since, by id.
func (m *Machine) PassedThrough() map[string]string {
	h := m.hp()
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string]string{}
	for id, p := range h.paths {
		out[id] = p
	}
	return out
}

// RemoveDevice implements vmm.Hotplugger. Devices of the boot config are
// known to it too.
func (m *Machine) RemoveDevice(id string, wait time.Duration, gone func()) error {
	h := m.hp()
	h.mu.Lock()
	_, hot := h.slots[id]
	known := hot
	for _, d := range m.Config.Disks {
		known = known || d.ID == id
	}
	for _, n := range m.Config.Net {
		known = known || n.ID == id
	}
	known = known || m.Config.Vsock != nil && m.Config.Vsock.ID == id
	for _, d := range m.Config.Devices {
		known = known || d.ID == id
	}
	if !known {
		h.mu.Unlock()
		return fmt.Errorf("%w: %q", vmm.ErrNoDevice, id)
	}
	done := make(chan struct{})
	release := func() {
		h.mu.Lock()
		delete(h.slots, id)
		delete(h.pending, id)
		delete(h.paths, id)
		h.mu.Unlock()
		go func() {
			if gone != nil {
				gone()
			}
			close(done)
		}()
	}
	if h.held {
		h.pending[id] = release
		h.mu.Unlock()
	} else {
		h.mu.Unlock()
		release()
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-t.C:
		return fmt.Errorf("%w: %q", vmm.ErrNotReleased, id)
	}
}

// HoldEjects makes the guest sit on eject requests until ReleaseHeld.
func (m *Machine) HoldEjects() {
	h := m.hp()
	h.mu.Lock()
	h.held = true
	h.mu.Unlock()
}

// ReleaseHeld lets the guest release every device it was asked to.
func (m *Machine) ReleaseHeld() {
	h := m.hp()
	h.mu.Lock()
	var rs []func()
	for _, r := range h.pending {
		rs = append(rs, r)
	}
	h.held = false
	h.mu.Unlock()
	for _, r := range rs {
		r()
	}
}
