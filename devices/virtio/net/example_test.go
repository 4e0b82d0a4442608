package net_test

import (
	"log"
	stdnet "net"

	vnet "github.com/viovmm/vio/devices/virtio/net"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/tap"
	"github.com/viovmm/vio/virtio/virtiopci"
)

// Example shows a NIC on a multi-queue TAP, one queue pair per TAP queue.
func Example() {
	var mem *memory.Memory // guest RAM, from the VMM
	queues, err := tap.OpenQueues("vio0", 2)
	if err != nil {
		log.Fatal(err)
	}
	bes := make([]netdev.Backend, len(queues))
	for i, q := range queues {
		bes[i] = q
	}
	mac, _ := stdnet.ParseMAC("52:54:00:12:34:56")
	dev, err := vnet.NewMultiQueue(bes, vnet.Config{MAC: mac})
	if err != nil {
		log.Fatal(err)
	}
	tr, err := virtiopci.New(dev, mem, virtiopci.Options{ /* Router, IOEvents */ })
	if err != nil {
		log.Fatal(err)
	}
	_ = tr // add to the PCI root; on shutdown reset the device, then close the queues
}
