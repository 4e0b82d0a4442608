package virtio_test

import (
	"bytes"
	"fmt"

	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/queuetest"
)

// upper is a toy device model: for each request it writes the upper-case
// version of the readable bytes into the writable buffers. It shows the
// parts of virtio.Device a real device (blk, net, console) has: a goroutine
// started by Activate, the notification loop, and a Reset that waits for
// the goroutine.
type upper struct {
	stop chan struct{}
	done chan struct{}
}

func (*upper) Type() virtio.DeviceType          { return 0xfff0 } // not a registered type
func (*upper) Features() uint64                 { return 0 }
func (*upper) QueueMaxSizes() []uint16          { return []uint16{64} }
func (*upper) ReadConfig(_ uint64, data []byte) { clear(data) }
func (*upper) WriteConfig(_ uint64, _ []byte)   {}

func (u *upper) Activate(a *virtio.Activation) error {
	q := a.Queues[0]
	if q == nil {
		return fmt.Errorf("upper: queue 0 not enabled")
	}
	u.stop, u.done = make(chan struct{}), make(chan struct{})
	go u.serve(q)
	return nil
}

func (u *upper) Reset() {
	close(u.stop)
	<-u.done // Reset's contract: no queue access after it returns
}

func (u *upper) serve(q *virtio.Queue) {
	defer close(u.done)
	for {
		select {
		case <-u.stop:
			return
		case <-q.Kicks():
		}
		for more := true; more; {
			q.DisableNotifications()
			for {
				c, err := q.Next()
				if err != nil {
					return // broken ring: the transport has set DEVICE_NEEDS_RESET
				}
				if c == nil {
					break
				}
				// Copy out of guest memory before using the data: the
				// driver can change it under our feet.
				in := make([]byte, c.Readable.Len())
				c.Readable.ReadAt(in, 0)
				n, _ := c.Writable.WriteAt(bytes.ToUpper(in), 0)
				q.Push(c.Head, uint32(n))
			}
			q.Signal()
			more, _ = q.EnableNotifications()
		}
	}
}

// interrupts counts the device's interrupts into a channel.
type interrupts chan struct{}

func (c interrupts) Trigger() error { c <- struct{}{}; return nil }

// Example shows a device model serving a queue, with queuetest playing the
// guest driver. In a VM the transport (virtiopci) creates the queues and
// calls Activate; here the example does it by hand.
func Example() {
	mem, err := memory.New([]memory.Layout{{GPA: 0, Size: 1 << 20}})
	if err != nil {
		panic(err)
	}
	defer mem.Close()

	// The driver lays out a queue in guest RAM and makes a request.
	drv, _ := queuetest.New(mem, 0x10000, 64, 0x10000, true)
	drv.Add([][]byte{[]byte("hello, "), []byte("virtio")}, []uint32{16})

	// The transport's part: validate the rings, wire the interrupt.
	q, err := virtio.NewQueue(mem, drv.Config(), 64, virtio.FeatureVersion1|virtio.FeatureEventIdx)
	if err != nil {
		panic(err)
	}
	irq := make(interrupts, 1)
	q.SetInterrupt(irq)
	dev := &upper{}
	dev.Activate(&virtio.Activation{Memory: mem, Queues: []*virtio.Queue{q}})

	if drv.NeedsKick() {
		q.Kick() // what a notify register write (or ioeventfd) does
	}
	<-irq
	u, _, _ := drv.GetUsed()
	fmt.Printf("%d bytes: %s\n", u.Len, u.Data)
	dev.Reset()
	// Output: 13 bytes: HELLO, VIRTIO
}
