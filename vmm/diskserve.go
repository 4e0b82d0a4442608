package vmm

import (
	"errors"
	"fmt"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/graph"
	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/irq/coalesce"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/ringpoll"
)

// OpenServedDisk opens a disk outside a VM, exactly as a VM opens its
// disks (its graph, or its image probed and pinned as openDisk does,
// locked, in the cache mode d asks for, under the throttle of its
// rate_limiter_config), for a process that serves it to other VMMs: vio
// serve-disk's vhost-user back-end. It returns the back-end, which the
// caller closes, and the virtio-blk configuration d's keys ask for, with
// queues request queues when d names no num_queues. A rate_limit_group
// needs a VM's groups and is refused; so are IDE and CD-ROM drives.
func OpenServedDisk(d *config.Disk, queues int, warn func(string)) (block.Backend, blk.Config, error) {
	if d.Iface != "" && d.Iface != config.DiskVirtio {
		return nil, blk.Config{}, fmt.Errorf("iface=%s: a served disk is virtio-blk; leave iface out", d.Iface)
	}
	if d.RateLimitGroup != "" {
		return nil, blk.Config{}, errors.New("rate_limit_group needs a VM's rate-limit groups: give the disk its own throttle= or bw_*/ops_* keys instead")
	}
	cache, writethrough, err := diskCache(d)
	if err != nil {
		return nil, blk.Config{}, err
	}
	vic, err := coalesce.Parse(d.Coalesce)
	if err != nil {
		return nil, blk.Config{}, err
	}
	poll, err := ringpoll.Parse(d.Poll)
	if err != nil {
		return nil, blk.Config{}, err
	}
	if d.NumQueues != 0 {
		queues = d.NumQueues
	}
	if d.QueueSize < 0 || d.QueueSize > virtio.MaxQueueSize {
		return nil, blk.Config{}, fmt.Errorf("queue_size=%d: give a power of two from 4 to %d", d.QueueSize, virtio.MaxQueueSize)
	}
	builder := graph.NewBuilder(graph.Options{Lock: true, ChildCache: cache})
	var be block.Backend
	if d.Graph != nil {
		be, err = builder.Open(graph.Disk{ID: d.ID, Root: d.Graph, ReadOnly: d.Readonly, Cache: cache})
	} else {
		be, err = openDisk(d, cache, warn)
	}
	if err != nil {
		return nil, blk.Config{}, err
	}
	top, err := builder.Throttle(be, d.RateLimiterConfig, "")
	if err != nil {
		be.Close()
		return nil, blk.Config{}, err
	}
	return top, blk.Config{
		Coalesce:     vic,
		Poll:         poll,
		Serial:       d.Serial,
		ReadOnly:     d.Readonly,
		NumQueues:    queues,
		QueueSize:    uint16(d.QueueSize),
		Writethrough: writethrough,
	}, nil
}
