package vmm

import (
	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/graph"
	"github.com/viovmm/vio/block/image"
	"github.com/viovmm/vio/block/raw"
	"github.com/viovmm/vio/config"
)

// openDisk opens a disk's image as image.OpenDisk decides and pins the
// format it used into d, so that the VM rebuilt on a guest reboot (from
// the same config) opens the image as the same format: a guest must not
// be able to turn its raw disk into a qcow2 image between two boots.
//
// The image is locked like QEMU locks its images, so that qemu-img (or
// another VMM) cannot write under a running guest.
func openDisk(d *config.Disk, cache raw.CacheMode, warn func(string)) (block.Backend, error) {
	opts := image.OpenOptions{
		ReadOnly: d.Readonly, Cache: cache, Lock: true,
		AllowBacking: d.AllowBacking, GuardHead: d.ImageTypeProbed,
	}
	switch d.ImageType {
	case config.ImageRaw:
		opts.Format = image.Raw
	case config.ImageQcow2:
		opts.Format = image.Qcow2
	}
	be, format, err := image.OpenDisk(d.Path, opts, warn)
	if err != nil {
		return nil, err
	}
	if opts.Format == "" && !d.Readonly {
		// A read-only disk is probed afresh each time: the guest cannot
		// have written its header.
		d.ImageType = map[string]string{image.Raw: config.ImageRaw, image.Qcow2: config.ImageQcow2}[format]
		d.ImageTypeProbed = format == image.Raw
	}
	return be, nil
}

// buildDisk opens a disk: its graph through the VM's graph builder (which
// holds the throttle groups its disks share), or its plain path as
// openDisk does, under the handoff.Disk a migration releases and takes
// it with (diskhandoff.go); then the throttle Cloud Hypervisor's
// rate_limiter_config or rate_limit_group asks for goes on top, where it
// stays while the image below changes hands.
func (v *VM) buildDisk(d *config.Disk, cache raw.CacheMode, warn func(string)) (block.Backend, error) {
	if v.graphs == nil {
		v.graphs = graph.NewBuilder(graph.Options{Lock: true, Groups: v.cfg.RateLimitGroupMap(), Events: graphEvents{v}, ChildCache: cache})
	}
	be, h, err := v.handoffDisk(d, cache, warn)
	if err != nil {
		return nil, err
	}
	top, err := v.graphs.Throttle(be, d.RateLimiterConfig, d.RateLimitGroup)
	if err != nil {
		be.Close()
		return nil, err
	}
	v.addHandoff(d.ID, h)
	return top, nil
}
