package console_test

import (
	"log"
	"os"

	"github.com/viovmm/vio/devices/virtio/console"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/virtio/virtiopci"
)

// Example puts the VMM's terminal behind hvc0.
func Example() {
	var mem *memory.Memory // guest RAM, from the VMM
	dev, err := console.New(os.Stdin, os.Stdout, console.Config{Cols: 80, Rows: 25})
	if err != nil {
		log.Fatal(err)
	}
	tr, err := virtiopci.New(dev, mem, virtiopci.Options{})
	if err != nil {
		log.Fatal(err)
	}
	_ = tr // add to the PCI root; on SIGWINCH call dev.Resize
}
