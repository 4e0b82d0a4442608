package vmm

import (
	"errors"
	"fmt"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/handoff"
	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/virtio"
)

// diskResizer is a Machine whose disks can grow while the guest runs
// (*VM is one).
type diskResizer interface {
	ResizeDisk(id string, size int64) error
}

var _ diskResizer = (*VM)(nil)

// ResizeDisk grows the disk with the id to size bytes on a running or
// paused guest (Cloud Hypervisor's vm.resize-disk): the image grows, and
// the guest's virtio-blk driver learns the new capacity from a
// configuration change interrupt. Shrinking is refused: the guest's file
// system may hold data past the new end.
func (c *Controller) ResizeDisk(id string, size int64) error {
	c.op.Lock()
	defer c.op.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == NoVM {
		return ErrNotCreated
	}
	if !hasDevice(c.cfg, id) {
		return fmt.Errorf("%w: the VM has no disk with id %q (vm.info lists them)", ErrNoDevice, id)
	}
	if err := c.needLocked("resize a disk of", StateRunning, StatePaused); err != nil {
		return fmt.Errorf("%w (a VM that does not run takes its disks as they are: resize the image with vio image resize)", err)
	}
	r, ok := c.run.m.(diskResizer)
	if !ok {
		return fmt.Errorf("%w: this VM cannot resize its disks", ErrNotImplemented)
	}
	return r.ResizeDisk(id, size)
}

// ResizeDisk implements diskResizer.
func (v *VM) ResizeDisk(id string, size int64) error {
	p := v.find(id)
	if p == nil {
		return fmt.Errorf("%w: the VM has no disk with id %q", ErrNoDevice, id)
	}
	if _, ok := p.dev.(virtio.Handoff); ok {
		return configError{fmt.Errorf("disk %q is served by a vhost-user back-end: resize its image there (vio does not pass a new size on to the guest yet)", id)}
	}
	d, ok := p.dev.(*blk.Device)
	if !ok {
		return configError{fmt.Errorf("device %q is not a disk", id)}
	}
	cur := int64(d.Capacity()) * blk.SectorSize
	switch {
	case size%blk.SectorSize != 0:
		return configError{fmt.Errorf("desired_size %d is not a multiple of %d bytes", size, blk.SectorSize)}
	case size < cur:
		return configError{fmt.Errorf("desired_size %d is smaller than the disk's %d bytes: vio only grows disks (the guest may have data past the new end)", size, cur)}
	case size == cur:
		return nil
	}
	if err := d.Resize(size); err != nil {
		if errors.Is(err, blk.ErrNotResizer) {
			return fmt.Errorf("%w: disk %q's image cannot be resized", ErrNotImplemented, id)
		}
		if errors.Is(err, block.ErrReadOnly) {
			return configError{fmt.Errorf("disk %q is read-only", id)}
		}
		if errors.Is(err, handoff.ErrInactive) {
			return fmt.Errorf("cannot resize disk %q: its image is released to a migration's destination (send vm.resume to take it back first)", id)
		}
		return fmt.Errorf("resizing disk %q: %w", id, err)
	}
	v.log.Info("disk resized", "id", id, "bytes", size)
	return nil
}
