package vmm

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/devices/vfiopci"
	"github.com/viovmm/vio/events"
	"github.com/viovmm/vio/sandbox"
	"github.com/viovmm/vio/vfio"
)

// The Controller's device registry: every disk and NIC of the config has
// an id (given, or "_diskN"/"_netN" as Cloud Hypervisor names them), ids
// are unique, and vm.add-disk, vm.add-net and vm.remove-device change the
// config, and the running guest through a Hotplugger Machine.

// DefaultEjectWait bounds how long RemoveDevice waits for the guest to
// release a device. acpiphp answers in milliseconds on a live guest; a
// slow emulated one takes seconds.
const DefaultEjectWait = 20 * time.Second

// ErrDuplicateID: a device with that id exists already.
var ErrDuplicateID = errors.New("duplicate device id")

// DeviceInfo is a hot-plugged device, as Cloud Hypervisor's PciDeviceInfo.
type DeviceInfo struct {
	ID  string `json:"id"`
	BDF string `json:"bdf"`
}

// SetEjectWait sets how long RemoveDevice waits for the guest (0:
// DefaultEjectWait).
func (c *Controller) SetEjectWait(d time.Duration) {
	c.mu.Lock()
	c.ejectWait = d
	c.mu.Unlock()
}

// assignIDs gives every disk and NIC without an id one that no other
// device has, and refuses duplicates.
func assignIDs(cfg *config.VM) error {
	seen := map[string]bool{}
	claim := func(id string) error {
		if seen[id] {
			return fmt.Errorf("%w: two devices have id %q: give each disk and NIC its own", ErrDuplicateID, id)
		}
		seen[id] = true
		return nil
	}
	for _, d := range cfg.Disks {
		if d.ID != "" {
			if err := claim(d.ID); err != nil {
				return err
			}
		}
	}
	for _, n := range cfg.Net {
		if n.ID != "" {
			if err := claim(n.ID); err != nil {
				return err
			}
		}
	}
	if v := cfg.Vsock; v != nil && v.ID != "" {
		if err := claim(v.ID); err != nil {
			return err
		}
	}
	for _, d := range cfg.Devices {
		if d.ID != "" {
			if err := claim(d.ID); err != nil {
				return err
			}
		}
	}
	fresh := func(prefix string) string {
		for i := 0; ; i++ {
			id := fmt.Sprintf("_%s%d", prefix, i)
			if !seen[id] {
				seen[id] = true
				return id
			}
		}
	}
	for i := range cfg.Disks {
		if cfg.Disks[i].ID == "" {
			cfg.Disks[i].ID = fresh("disk")
		}
	}
	for i := range cfg.Net {
		if cfg.Net[i].ID == "" {
			cfg.Net[i].ID = fresh("net")
		}
	}
	if v := cfg.Vsock; v != nil && v.ID == "" {
		v.ID = fresh("vsock")
	}
	// Cloud Hypervisor's names for pass-through devices.
	for i := range cfg.Devices {
		if cfg.Devices[i].ID == "" {
			cfg.Devices[i].ID = fresh("vfio")
		}
	}
	return nil
}

func closeTapFDs(cfg *config.VM) {
	if cfg == nil {
		return
	}
	for _, n := range cfg.Net {
		for _, fd := range n.TapFDs {
			unix.Close(fd)
		}
	}
}

// AddDisk adds a disk: to the config before boot (cold plug, nil
// DeviceInfo), and to the running or paused guest too (hot plug).
func (c *Controller) AddDisk(d config.Disk) (*DeviceInfo, error) {
	return c.addDevice("add a disk", func(cfg *config.VM) (*string, func(Hotplugger) (string, error)) {
		cfg.Disks = append(cfg.Disks, d)
		nd := &cfg.Disks[len(cfg.Disks)-1]
		return &nd.ID, func(h Hotplugger) (string, error) {
			bdf, err := h.AddDisk(nd)
			return bdf, sandbox.Explain(err, nd.Path)
		}
	})
}

// AddNet adds a NIC like AddDisk. The Controller owns n.TapFDs from the
// call on: they are closed if the NIC is not added, and when it goes.
func (c *Controller) AddNet(n config.Net) (*DeviceInfo, error) {
	info, err := c.addDevice("add a NIC", func(cfg *config.VM) (*string, func(Hotplugger) (string, error)) {
		cfg.Net = append(cfg.Net, n)
		nn := &cfg.Net[len(cfg.Net)-1]
		return &nn.ID, func(h Hotplugger) (string, error) { return h.AddNet(nn) }
	})
	if err != nil {
		for _, fd := range n.TapFDs {
			unix.Close(fd)
		}
	}
	return info, err
}

// AddVsock adds the VM's virtio-vsock device like AddDisk; a VM has one
// at most.
func (c *Controller) AddVsock(vs config.Vsock) (*DeviceInfo, error) {
	return c.addDevice("add a vsock device", func(cfg *config.VM) (*string, func(Hotplugger) (string, error)) {
		if cfg.Vsock != nil {
			return nil, nil
		}
		cfg.Vsock = &vs
		return &cfg.Vsock.ID, func(h Hotplugger) (string, error) { return h.AddVsock(cfg.Vsock) }
	})
}

// AddDevice passes a host PCI device through (VFIO) like AddDisk: to the
// config before boot, to the running or paused guest too (hot plug).
func (c *Controller) AddDevice(d config.Device) (*DeviceInfo, error) {
	return c.addDevice("add a pass-through device", func(cfg *config.VM) (*string, func(Hotplugger) (string, error)) {
		cfg.Devices = append(cfg.Devices, d)
		nd := &cfg.Devices[len(cfg.Devices)-1]
		return &nd.ID, func(h Hotplugger) (string, error) {
			bdf, err := h.AddDevice(nd)
			if hostDeviceRefused(err) {
				// The user's to fix (bind it, free it, pick another):
				// a request error, not the VMM's failure.
				return "", configError{err}
			}
			return bdf, sandbox.Explain(err, "/dev/vfio")
		}
	})
}

// hostDeviceRefused says whether err is a host device that cannot be
// passed through as it is (vfio's sentences say what to do).
func hostDeviceRefused(err error) bool {
	for _, e := range []error{vfio.ErrNotBound, vfio.ErrNotViable, vfio.ErrNoIOMMU, vfio.ErrInUse, vfiopci.ErrUnsupported} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// ErrOneVsock: vm.add-vsock on a VM that has its vsock device already.
var ErrOneVsock = configError{errors.New("the VM has a vsock device already, and a VM has one at most: remove it first (vm.remove-device with its id)")}

// addDevice adds a device with add, which appends it to a copy of the
// config and returns its id field and how to hot-plug it (a nil id: the
// config cannot take another such device).
func (c *Controller) addDevice(what string, add func(*config.VM) (*string, func(Hotplugger) (string, error))) (*DeviceInfo, error) {
	c.op.Lock()
	defer c.op.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == NoVM {
		return nil, ErrNotCreated
	}
	cfg := c.cfg.Clone()
	id, hot := add(cfg)
	if id == nil {
		return nil, ErrOneVsock
	}
	if err := assignIDs(cfg); err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, configError{err}
	}
	for _, w := range cfg.Unimplemented() {
		c.log.Warn(w)
	}
	var info *DeviceInfo
	if c.state == StateRunning || c.state == StatePaused {
		h, ok := c.run.m.(Hotplugger)
		if !ok {
			return nil, fmt.Errorf("%w: cannot %s to this booted VM: it has no hot plug", ErrNotImplemented, what)
		}
		bdf, err := hot(h)
		if err != nil {
			return nil, hotplugError(err)
		}
		info = &DeviceInfo{ID: *id, BDF: bdf}
		c.ev.Publish(events.SourceDevice, "device-added", "id", *id, "bdf", bdf)
	}
	c.cfg = cfg
	return info, nil
}

// hotplugError makes a Hotplugger's refusals match the Controller's
// errors, for the API's statuses.
func hotplugError(err error) error {
	switch {
	case errors.Is(err, ErrNotRemovable):
		return configError{err}
	}
	return err
}

// RemoveDevice removes the disk or NIC with the id. Before boot (and
// after shutdown) it only leaves the config. On a running guest it asks
// the guest to release the device and waits for it (SetEjectWait): nil
// means the guest let it go and it is gone; an error matching
// ErrNotReleased means the guest has not yet, and the device goes from
// the config when it does. A paused guest cannot answer: that is refused.
func (c *Controller) RemoveDevice(id string) error {
	c.op.Lock()
	defer c.op.Unlock()
	c.mu.Lock()
	if c.state == NoVM {
		c.mu.Unlock()
		return ErrNotCreated
	}
	if !hasDevice(c.cfg, id) {
		c.mu.Unlock()
		return fmt.Errorf("%w: the VM has no disk, NIC, vsock or pass-through device with id %q (vm.info lists them)", ErrNoDevice, id)
	}
	for _, d := range c.cfg.Devices {
		if d.Failover == id {
			c.mu.Unlock()
			return configError{fmt.Errorf("cannot remove NIC %s: it is the standby of failover primary %s, which would be left without one; remove %s first", id, d.ID, d.ID)}
		}
	}
	switch c.state {
	case StateCreated, StateShutdown:
		c.dropDeviceLocked(id)
		c.mu.Unlock()
		return nil
	case StatePaused:
		c.mu.Unlock()
		return &StateError{Op: "remove a device", State: StatePaused}
	}
	m := c.run.m
	h, ok := m.(Hotplugger)
	wait := c.ejectWait
	c.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: this VM cannot remove devices while it runs", ErrNotImplemented)
	}
	if wait <= 0 {
		wait = DefaultEjectWait
	}
	// The wait happens without c.mu, so vm.info still answers; gone
	// updates the config once the guest has let the device go, if the
	// Machine is still the current one (a guest reboot in between
	// builds the device afresh from the config).
	gone := func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.run != nil && c.run.m == m && c.cfg != nil {
			c.dropDeviceLocked(id)
		}
		c.ev.Publish(events.SourceDevice, "device-removed", "id", id)
	}
	return hotplugError(h.RemoveDevice(id, wait, gone))
}

func hasDevice(cfg *config.VM, id string) bool {
	for _, d := range cfg.Disks {
		if d.ID == id {
			return true
		}
	}
	for _, n := range cfg.Net {
		if n.ID == id {
			return true
		}
	}
	for _, d := range cfg.Devices {
		if d.ID == id {
			return true
		}
	}
	return cfg.Vsock != nil && cfg.Vsock.ID == id
}

// dropDeviceLocked removes the device with the id from the config and
// closes the TAP descriptors it held; c.mu is held.
func (c *Controller) dropDeviceLocked(id string) {
	cfg := c.cfg.Clone()
	disks := cfg.Disks[:0]
	for _, d := range cfg.Disks {
		if d.ID != id {
			disks = append(disks, d)
		}
	}
	nets := cfg.Net[:0]
	for _, n := range cfg.Net {
		if n.ID != id {
			nets = append(nets, n)
			continue
		}
		for _, fd := range n.TapFDs {
			unix.Close(fd)
		}
	}
	devices := cfg.Devices[:0]
	for _, d := range cfg.Devices {
		if d.ID != id {
			devices = append(devices, d)
		}
	}
	cfg.Disks, cfg.Net, cfg.Devices = disks, nets, devices
	if cfg.Vsock != nil && cfg.Vsock.ID == id {
		cfg.Vsock = nil
	}
	c.cfg = cfg
}
