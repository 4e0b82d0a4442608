package vmm

import (
	"errors"
	"fmt"

	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/devices/virtio/balloon"
)

// addBalloon adds the virtio-balloon device the config asks for, with its
// boot-time target.
func (v *VM) addBalloon() error {
	b := v.cfg.Balloon
	if b == nil {
		return nil
	}
	dev := balloon.New(v.mem, balloon.Config{DeflateOnOOM: b.DeflateOnOOM, FreePageReporting: b.FreePageReporting})
	if err := dev.SetTarget(uint64(b.Size)); err != nil {
		return fmt.Errorf("balloon: %w", err)
	}
	return v.addVirtio("balloon", dev)
}

// balloon returns the VM's balloon device, or nil.
func (v *VM) balloon() *balloon.Device {
	for _, d := range v.pciDevices {
		if b, ok := d.dev.(*balloon.Device); ok {
			return b
		}
	}
	return nil
}

// ResizeBalloon sets the balloon's target to size bytes: the guest is
// asked to give up that much of its RAM (0: all of it back). It returns
// at once; the guest inflates or deflates in its own time, and the
// balloon's counters (actual_bytes) show how far it has got.
func (v *VM) ResizeBalloon(size int64) error {
	b := v.balloon()
	if b == nil {
		return ErrNoBalloon
	}
	if err := config.CheckBalloonSize(size, v.cfg.Memory.Size); err != nil {
		return configError{err}
	}
	return b.SetTarget(uint64(size))
}

// ErrNoBalloon: vm.resize asked for a balloon size on a VM without one.
var ErrNoBalloon = configError{errors.New("the VM has no balloon: create it with one (balloon: {size: 0} in the config, --balloon size=0 on vio run) to resize it")}

// balloonResizer is a Machine with a balloon (*VM is one).
type balloonResizer interface {
	ResizeBalloon(size int64) error
}

var _ balloonResizer = (*VM)(nil)

// Resize is vm.resize's request (Cloud Hypervisor's VmResize): nil fields
// are left as they are.
type Resize struct {
	DesiredVCPUs   *int
	DesiredRAM     *int64
	DesiredBalloon *int64
}

// Resize changes what the request asks. Only the balloon can change yet;
// vCPU and RAM hotplug are refused as not implemented. On a VM that is not
// running the new balloon size is recorded and applied at boot; on a
// running or paused one the guest is asked at once. Either way the
// config (vm.info) shows it and a guest reboot keeps it.
func (c *Controller) Resize(r Resize) error {
	c.op.Lock()
	defer c.op.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == NoVM {
		return ErrNotCreated
	}
	switch {
	case r.DesiredVCPUs != nil:
		return fmt.Errorf("%w: desired_vcpus: vCPU hotplug is not implemented yet", ErrNotImplemented)
	case r.DesiredRAM != nil:
		return fmt.Errorf("%w: desired_ram: memory hotplug is not implemented yet; use desired_balloon to take memory from the guest", ErrNotImplemented)
	case r.DesiredBalloon == nil:
		return configError{errors.New("vm.resize needs desired_balloon (bytes the guest should give up)")}
	case c.cfg.Balloon == nil:
		return ErrNoBalloon
	}
	size := *r.DesiredBalloon
	if err := config.CheckBalloonSize(size, c.cfg.Memory.Size); err != nil {
		return configError{err}
	}
	if c.state == StateRunning || c.state == StatePaused {
		m, ok := c.run.m.(balloonResizer)
		if !ok {
			return fmt.Errorf("%w: this VM cannot resize its balloon", ErrNotImplemented)
		}
		if err := m.ResizeBalloon(size); err != nil {
			return err
		}
	}
	c.cfg.Balloon.Size = size
	return nil
}
