package blk_test

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/viovmm/vio/block/memdisk"
	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/queuetest"
)

// heldDisk holds each read until the test releases it, so that a request
// is on the back-end when the queue is stopped.
type heldDisk struct {
	*memdisk.Disk
	entered, release chan struct{}
}

func (d *heldDisk) ReadAt(p []byte, off int64) (int, error) {
	select {
	case d.entered <- struct{}{}:
	default: // a later read (the test waits for the first only)
	}
	<-d.release
	return d.Disk.ReadAt(p, off)
}

// TestServeQueueStopDrains: Stop completes a request that is on the
// back-end into the used ring before it returns (GET_VRING_BASE must not
// lose it); Abort returns too. While a queue is served the device refuses
// Activate, and the other way round.
func TestServeQueueStopDrains(t *testing.T) {
	for _, abort := range []bool{false, true} {
		disk := &heldDisk{Disk: memdisk.New(make([]byte, 1<<20)), entered: make(chan struct{}, 1), release: make(chan struct{})}
		dev, err := blk.New(disk, blk.Config{})
		if err != nil {
			t.Fatal(err)
		}
		mem, err := memory.New([]memory.Layout{{GPA: 0, Size: 1 << 20}})
		if err != nil {
			t.Fatal(err)
		}
		defer mem.Close()
		drv, err := queuetest.New(mem, 0x1000, 16, 64<<10, false)
		if err != nil {
			t.Fatal(err)
		}
		q, err := virtio.NewQueue(mem, drv.Config(), 256, virtio.FeatureVersion1)
		if err != nil {
			t.Fatal(err)
		}
		sq, err := dev.ServeQueue(0, q, virtio.FeatureVersion1)
		if err != nil {
			t.Fatal(err)
		}
		if err := dev.Activate(&virtio.Activation{Memory: mem, Queues: []*virtio.Queue{q}}); !errors.Is(err, blk.ErrActive) {
			t.Fatalf("Activate while a queue is served: %v", err)
		}
		if _, err := dev.ServeQueue(1, q, 0); !errors.Is(err, blk.ErrConfig) {
			t.Fatalf("queue 1 of a one-queue device: %v", err)
		}
		hdr := make([]byte, blk.HeaderSize)
		binary.LittleEndian.PutUint32(hdr, blk.TypeIn)
		if _, err := drv.Add([][]byte{hdr}, []uint32{512, 1}); err != nil {
			t.Fatal(err)
		}
		q.Kick()
		<-disk.entered // the read is on the back-end
		stopped := make(chan struct{})
		go func() {
			if abort {
				sq.Abort()
			} else {
				sq.Stop()
			}
			close(stopped)
		}()
		close(disk.release)
		<-stopped
		// Abort may or may not push the request, depending on whether
		// the stop or the completion came first; Stop must.
		if got := drv.UsedIdx(); !abort && got != 1 {
			t.Fatalf("used idx %d after Stop, want the request in flight completed", got)
		}
		if n := q.NextAvail(); n != 1 {
			t.Fatalf("next avail %d", n)
		}
		sq.Stop() // a second stop is a no-op
		// Stopped: the device can be activated now.
		q2, err := virtio.NewQueue(mem, drv.Config(), 256, virtio.FeatureVersion1)
		if err != nil {
			t.Fatal(err)
		}
		if err := dev.Activate(&virtio.Activation{Memory: mem, Features: virtio.FeatureVersion1, Queues: []*virtio.Queue{q2}}); err != nil {
			t.Fatalf("Activate after the served queue stopped: %v", err)
		}
		if _, err := dev.ServeQueue(0, q2, 0); !errors.Is(err, blk.ErrActive) {
			t.Fatalf("ServeQueue while active: %v", err)
		}
		dev.Reset()
	}
}
