package vmm

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/viovmm/vio/config"
	virtionet "github.com/viovmm/vio/devices/virtio/net"
	"github.com/viovmm/vio/events"
)

// Migration of a VM whose NIC is a pass-through device (docs/failover.md):
// the guest has a virtio-net standby (standby=on) and the pass-through
// NIC as its primary (failover=NETID), with one MAC address, which Linux
// puts under one net_failover device. Hardware state cannot migrate, so
// the source unplugs each primary first (the guest's traffic moves to the
// standby), migrates as usual without it, and the destination plugs a
// host device in again once the guest runs there: the device at
// ReceiveMigration.DevicePaths[id], or at the source's path (the same
// address on the destination host).

// DefaultUnplugWait bounds how long a migration waits for the guest to
// release its failover primaries. acpiphp and net_failover let a NIC go
// in well under a second on a live guest.
const DefaultUnplugWait = 10 * time.Second

// NoDevice as a DevicePaths value leaves a primary out on the
// destination: the guest runs on its standby until vm.add-device.
const NoDevice = "none"

// announceRounds is how many RARP broadcasts a standby sends when it
// takes over: one is enough for a bridge that forwards, the others for
// one that drops a frame.
const announceRounds = 3

// announceStandby has the standby NIC with the id announce the guest's
// MAC address on its back-end (virtio-net's SelfAnnounce), so that the
// host's bridge and switches send the guest's frames to the standby from
// now on: their forwarding tables still name the primary's port, and the
// guest has nothing to send that would move them while its peers' frames
// are lost there (seen in the lab: a TCP stream to the guest stalled
// until the primary came back). QEMU announces after a migration the
// same way.
func (v *VM) announceStandby(id string) {
	d := v.find(id)
	if d == nil {
		return
	}
	nd, ok := d.dev.(*virtionet.Device)
	if !ok {
		return
	}
	for range announceRounds {
		if err := nd.SelfAnnounce(); err != nil {
			v.log.Warn("the standby NIC could not announce the guest's MAC address", "id", id, "err", err)
			return
		}
	}
	v.log.Info("standby NIC announced the guest's MAC address on its network", "id", id, "mac", nd.MAC().String())
}

// announceStandbys announces every standby NIC (a migrated VM that runs
// here now, before its primaries are plugged).
func (v *VM) announceStandbys() {
	for _, n := range v.cfg.Net {
		if n.Standby {
			v.announceStandby(n.ID)
		}
	}
}

// primaries returns the plugged failover primaries.
func (v *VM) primaries() []*ptDevice {
	v.hp.mu.Lock()
	defer v.hp.mu.Unlock()
	var out []*ptDevice
	for _, d := range v.ptDevices {
		if d.cfg.Failover != "" {
			out = append(out, d)
		}
	}
	return out
}

// unplugPrimaries asks the guest to release every plugged failover
// primary at once and waits up to wait for all of them; it returns the
// configs of those it unplugged. If the guest has not let one go by
// then, the requests still pending are withdrawn, those it let go are
// plugged again, and the error (matching ErrNotReleased) says which
// device the guest held: the VM goes on as before.
func (v *VM) unplugPrimaries(wait time.Duration) ([]config.Device, error) {
	ps := v.primaries()
	if len(ps) == 0 {
		return nil, nil
	}
	var asked []*ptDevice
	var chans []<-chan struct{}
	for _, p := range ps {
		released, err := v.requestEject(p.hp, nil)
		if err != nil {
			v.takeBack(asked, nil)
			return nil, err
		}
		asked, chans = append(asked, p), append(chans, released)
	}
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	expired := false
	var gone []config.Device
	var held []*ptDevice
	for i, p := range asked {
		if !expired {
			select {
			case <-chans[i]:
				gone = append(gone, p.cfg)
				continue
			case <-deadline.C:
				expired = true
			}
		}
		select {
		case <-chans[i]:
			gone = append(gone, p.cfg)
		default:
			held = append(held, p)
		}
	}
	if len(held) == 0 {
		for _, d := range gone {
			v.log.Info("failover primary unplugged for the migration", "id", d.ID, "host", d.BDF(), "standby", d.Failover)
		}
		return gone, nil
	}
	v.takeBack(held, gone)
	h := held[0].cfg
	return nil, fmt.Errorf("%w: cannot migrate: the guest did not release pass-through device %s (%s), the failover primary of NIC %s, within %v, so the VM keeps running with it here; check that the guest has ACPI PCI hot plug (acpiphp) and nothing holds the device, or give it longer (unplug_timeout_s)",
		ErrNotReleased, h.ID, h.BDF(), h.Failover, wait)
}

// takeBack undoes unplugPrimaries' requests: those pending are
// withdrawn, and the devices already gone plugged again (with a warning
// if one cannot be: the guest then runs on its standby).
func (v *VM) takeBack(pending []*ptDevice, gone []config.Device) {
	for _, p := range pending {
		if !v.withdrawEject(p.hp) {
			gone = append(gone, p.cfg) // it went meanwhile
		}
	}
	for _, r := range v.plugPrimaries(gone) {
		if r.err != nil {
			v.log.Warn("a failover primary could not be plugged again; the guest's traffic stays on its standby", "id", r.dev.ID, "host", r.dev.BDF(), "err", r.err)
		}
	}
}

// plugResult is the outcome of plugging one failover primary.
type plugResult struct {
	dev config.Device
	bdf string // the guest's address
	err error
}

// plugPrimaries plugs each device into the running guest.
func (v *VM) plugPrimaries(devs []config.Device) []plugResult {
	var out []plugResult
	for _, d := range devs {
		bdf, err := v.AddDevice(&d)
		out = append(out, plugResult{dev: d, bdf: bdf, err: err})
	}
	return out
}

// unplugForMigration unplugs the source's failover primaries before a
// migration (Controller.SendMigration) and remembers them for the
// migration's config.
func (c *Controller) unplugForMigration(s *migrationSource, wait time.Duration) error {
	if wait <= 0 {
		wait = DefaultUnplugWait
	}
	devs, err := s.v.unplugPrimaries(wait)
	if err != nil {
		return err
	}
	s.primaries = devs
	for _, d := range devs {
		c.ev.Publish(events.SourceDevice, "device-removed", "id", d.ID, "reason", "migration")
	}
	return nil
}

// replugAfterFailure plugs a failed migration's primaries into the
// source's guest again; one that cannot be leaves the config, so that
// vm.add-device can plug another. With keep false (the migration's
// outcome is unknown and the VM stays paused here), none is plugged:
// they leave the config, to be added again once the VM runs here.
func (c *Controller) replugAfterFailure(s *migrationSource, keep bool) {
	if len(s.primaries) == 0 {
		return
	}
	if !keep {
		for _, d := range s.primaries {
			c.log.Warn("the migration's outcome is unknown: the failover primary stays unplugged; add it again with vm.add-device if the VM resumes here", "id", d.ID, "host", d.BDF())
			c.dropFailover(d.ID)
		}
		return
	}
	for _, r := range s.v.plugPrimaries(s.primaries) {
		if r.err != nil {
			c.log.Warn("the migration failed and its failover primary could not be plugged again: the guest's traffic stays on the standby; add one with vm.add-device", "id", r.dev.ID, "host", r.dev.BDF(), "err", r.err)
			c.ev.Publish(events.SourceDevice, "device-add-failed", "id", r.dev.ID, "path", r.dev.Path, "error", r.err.Error())
			c.dropFailover(r.dev.ID)
			continue
		}
		c.ev.Publish(events.SourceDevice, "device-added", "id", r.dev.ID, "bdf", r.bdf, "reason", "migration-failed")
	}
}

// dropFailover takes a pass-through device out of the config.
func (c *Controller) dropFailover(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cfg != nil {
		c.dropDeviceLocked(id)
	}
}

// applyDevicePaths gives the migrated config's failover primaries the
// host devices named on the destination (ReceiveMigration.DevicePaths):
// each name must be a primary's id, NoDevice leaves that primary out.
// A config with a pass-through device that is not a failover primary is
// refused: the source does not send one.
func applyDevicePaths(cfg *config.VM, paths map[string]string) error {
	var ids []string
	for _, d := range cfg.Devices {
		if d.Failover == "" {
			return fmt.Errorf("the source's VM config has pass-through device %s (%s), which is not a failover primary and cannot migrate", d.ID, d.BDF())
		}
		ids = append(ids, d.ID)
	}
	for id := range paths {
		found := false
		for _, d := range cfg.Devices {
			found = found || d.ID == id
		}
		if !found {
			have := "none"
			if len(ids) > 0 {
				have = strings.Join(ids, ", ")
			}
			return fmt.Errorf("device_paths names %q, which is not a failover primary of the migrated VM (its primaries: %s)", id, have)
		}
	}
	kept := cfg.Devices[:0]
	for _, d := range cfg.Devices {
		p, ok := paths[d.ID]
		switch {
		case ok && p == NoDevice:
			continue
		case ok:
			d.Path = strings.TrimSuffix(p, "/")
		}
		kept = append(kept, d)
	}
	cfg.Devices = kept
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("device_paths: %w", err)
	}
	return nil
}

// plugMigratedPrimaries plugs the failover primaries of the config a
// migration brought into m, which runs the guest now. A primary that
// cannot be plugged (no such device here, not bound to vfio-pci, in use)
// leaves the config with a warning and an event: the guest runs on its
// standby, and vm.add-device can plug one later.
func (c *Controller) plugMigratedPrimaries(m Machine, cfg *config.VM) {
	// Until they are, the standbys carry the guest's traffic: here,
	// which the network must learn.
	if a, ok := m.(interface{ announceStandbys() }); ok {
		a.announceStandbys()
	}
	devs := cfg.FailoverPrimaries()
	if len(devs) == 0 {
		return
	}
	h, ok := m.(Hotplugger)
	var err error
	for _, d := range devs {
		var bdf string
		if ok {
			bdf, err = h.AddDevice(&d)
		} else {
			err = errors.New("this VM has no hot plug")
		}
		if err != nil {
			c.log.Warn("the migrated VM's failover primary could not be plugged here: the guest's traffic stays on its standby; plug one with vm.add-device", "id", d.ID, "host", d.BDF(), "err", err)
			c.ev.Publish(events.SourceDevice, "device-add-failed", "id", d.ID, "path", d.Path, "error", err.Error())
			c.dropFailover(d.ID)
			continue
		}
		c.log.Info("failover primary plugged into the migrated VM", "id", d.ID, "host", d.BDF(), "bdf", bdf, "standby", d.Failover)
		c.ev.Publish(events.SourceDevice, "device-added", "id", d.ID, "bdf", bdf, "reason", "migration")
	}
}
