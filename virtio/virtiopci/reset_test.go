package virtiopci_test

import (
	"testing"
	"time"

	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/virtiopci"
	"github.com/viovmm/vio/virtio/virtiopci/virtiopcitest"
)

// slowResetDev is a stub device whose Reset blocks until released, as one
// waiting for a stalled host sink or a long request would.
type slowResetDev struct {
	stubDev
	entered chan struct{}
	release chan struct{}
}

func (d *slowResetDev) Reset() {
	d.entered <- struct{}{}
	<-d.release
	d.stubDev.Reset()
}

// TestSlowResetThroughPCICfgWindow: a driver resets an active device
// through the VIRTIO_PCI_CAP_PCI_CFG window, whose accesses run under the
// PCI root's lock, and the device takes its time to stop. The vCPU that
// wrote the status goes on at once, every other configuration access
// (another function's) is served meanwhile, device_status reads non-zero
// until the device has stopped and 0 after, and a driver that writes
// again without waiting is held until the reset is complete.
func TestSlowResetThroughPCICfgWindow(t *testing.T) {
	r := newRig(t)
	dev := &slowResetDev{entered: make(chan struct{}, 1), release: make(chan struct{})}
	tr, err := virtiopci.New(dev, r.mem, virtiopci.Options{Router: r.router})
	if err != nil {
		t.Fatal(err)
	}
	a := r.g.BDF
	a.Device = 7
	if err := r.root.Add(a, tr); err != nil {
		t.Fatal(err)
	}
	g, err := virtiopcitest.Probe(r.mmio, r.pio, r.mem, a)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Negotiate(virtio.FeatureVersion1); err != nil {
		t.Fatal(err)
	}
	g.SetStatus(virtio.StatusDriverOK)
	dev.mu.Lock()
	activations := len(dev.activations)
	dev.mu.Unlock()
	if activations != 1 {
		t.Fatal("the device was not activated")
	}
	released := false
	defer func() {
		if !released {
			close(dev.release)
		}
	}()

	// device_status (common cfg offset 0x14) := 0 through the window.
	c := g.Caps[virtiopci.CapPCICfg].ConfigOffset
	g.CF8.Write(g.BDF, c+4, 1, 0)
	g.CF8.Write(g.BDF, c+8, 4, virtiopcitest.DeviceStatus)
	g.CF8.Write(g.BDF, c+12, 4, 1)
	wrote := make(chan struct{})
	go func() {
		g.CF8.Write(g.BDF, c+16, 4, 0)
		close(wrote)
	}()
	select {
	case <-dev.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the device's Reset was never called")
	}
	select {
	case <-wrote:
	case <-time.After(10 * time.Second):
		t.Fatal("the vCPU writing device_status through the PCI_CFG window waits for the device's reset")
	}
	read := make(chan uint32)
	go func() { read <- r.g.CF8.Read(r.g.BDF, 0, 4) }()
	select {
	case id := <-read:
		if id == 0xffffffff {
			t.Fatal("the other function vanished")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("another function's configuration space is locked out while a device resets")
	}
	if s := g.Status(); s == 0 {
		t.Fatal("device_status reads 0 while the device is still resetting")
	}
	// A driver that does not wait: its next write is held until the reset
	// is complete, then applies to the reset device.
	next := make(chan struct{})
	go func() {
		g.WriteCommon(virtiopcitest.DeviceStatus, 1, uint64(virtio.StatusAcknowledge))
		close(next)
	}()
	close(dev.release)
	released = true
	select {
	case <-next:
	case <-time.After(10 * time.Second):
		t.Fatal("a write after the reset never completed")
	}
	if s := g.Status(); s != virtio.StatusAcknowledge {
		t.Fatalf("status %#x after reset and ACKNOWLEDGE, want %#x", s, virtio.StatusAcknowledge)
	}
	dev.mu.Lock()
	defer dev.mu.Unlock()
	if dev.resets != 1 {
		t.Fatalf("%d device resets, want 1", dev.resets)
	}
}
