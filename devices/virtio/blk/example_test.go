package blk_test

import (
	"log"

	"github.com/viovmm/vio/block/raw"
	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/virtio/virtiopci"
)

// Example shows how a VMM puts a disk image behind virtio-blk: the cache
// mode is the back-end's business, and the device only needs to know
// whether the guest sees a volatile write cache.
func Example() {
	var mem *memory.Memory // guest RAM, from the VMM
	disk, err := raw.Open("disk.img", raw.Options{Cache: raw.None})
	if err != nil {
		log.Fatal(err)
	}
	dev, err := blk.New(disk, blk.Config{
		Serial:       "vio-disk-0",
		NumQueues:    2, // one per vCPU, say
		Writethrough: !disk.Cache().WriteCache(),
		BlockSize:    uint32(max(512, disk.Alignment())),
	})
	if err != nil {
		log.Fatal(err)
	}
	tr, err := virtiopci.New(dev, mem, virtiopci.Options{ /* Router, IOEvents */ })
	if err != nil {
		log.Fatal(err)
	}
	_ = tr // add to the PCI root; on shutdown reset the device, then disk.Close()
}
