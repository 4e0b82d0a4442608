package virtiopci_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/virtiopci"
	"github.com/viovmm/vio/virtio/virtiopci/virtiopcitest"
)

// handoffDev is a virtio.Handoff that records what the transport hands
// it.
type handoffDev struct {
	mu     sync.Mutex
	acts   []*virtio.HandoffActivation
	kicks  []int
	resets int
}

func (*handoffDev) Type() virtio.DeviceType { return virtio.TypeBlock }
func (*handoffDev) Features() uint64 {
	return virtio.FeatureVersion1 | 1<<9 // no EVENT_IDX, no INDIRECT_DESC
}
func (*handoffDev) QueueMaxSizes() []uint16           { return []uint16{64, 64} }
func (*handoffDev) ReadConfig(_ uint64, data []byte)  { clear(data) }
func (*handoffDev) WriteConfig(uint64, []byte)        {}
func (*handoffDev) Activate(*virtio.Activation) error { return errors.New("not this") }
func (*handoffDev) KickFD(int) int                    { return -1 }
func (*handoffDev) InterruptsChanged()                {}
func (d *handoffDev) Kick(q int) {
	d.mu.Lock()
	d.kicks = append(d.kicks, q)
	d.mu.Unlock()
}
func (d *handoffDev) ActivateHandoff(h *virtio.HandoffActivation) error {
	d.mu.Lock()
	d.acts = append(d.acts, h)
	d.mu.Unlock()
	return nil
}
func (d *handoffDev) Reset() {
	d.mu.Lock()
	d.resets++
	d.mu.Unlock()
}

// TestHandoff: a Handoff device's features are the whole offer (no
// transport bits added); DRIVER_OK hands it the enabled queues' configs
// (nil for the others) instead of calling Activate; notify writes become
// Kick; Interrupt raises the queue's MSI-X vector and Broken sets
// DEVICE_NEEDS_RESET; a reset reaches the device. Its state saves with
// no ring positions (they are the other process's), and a restore hands
// a fresh device the same queues and features.
func TestHandoff(t *testing.T) {
	dev := &handoffDev{}
	m := virtiopcitest.NewMachine(t, dev, 4<<20, 64)
	g := m.Guest
	if f := g.DeviceFeatures(); f != dev.Features() {
		t.Fatalf("offered %#x, the device offers %#x", f, dev.Features())
	}
	if err := g.Negotiate(virtio.FeatureVersion1); err != nil {
		t.Fatal(err)
	}
	for v := range 3 {
		g.ProgramMSIX(v, 0xfee00000, uint32(0x40+v))
	}
	g.EnableMSIX(true)
	q0, err := g.SetupQueue(virtiopcitest.QueueConfig{Index: 0, Vector: 1, Base: 0x10000, DataSize: 0x1000})
	if err != nil {
		t.Fatal(err)
	}
	g.SetStatus(virtio.StatusDriverOK)
	if s := g.Status(); s&virtio.StatusDriverOK == 0 || s&virtio.StatusDeviceNeedsReset != 0 {
		t.Fatalf("status %#x", s)
	}
	dev.mu.Lock()
	acts := dev.acts
	dev.mu.Unlock()
	if len(acts) != 1 {
		t.Fatalf("%d hand-overs", len(acts))
	}
	a := acts[0]
	if a.Queues[1] != nil || a.Queues[0] == nil || *a.Queues[0] != q0.Config() || a.Features != virtio.FeatureVersion1 {
		t.Fatalf("handed %+v features %#x, want queue 0 %+v only", a.Queues, a.Features, q0.Config())
	}
	g.Kick(0)
	dev.mu.Lock()
	kicks := dev.kicks
	dev.mu.Unlock()
	if len(kicks) != 1 || kicks[0] != 0 {
		t.Fatalf("kicks %v", kicks)
	}
	a.Interrupt(0)
	if msg, err := m.Router.Wait(10 * time.Second); err != nil || msg.Data != 0x41 {
		t.Fatalf("queue interrupt: %+v %v", msg, err)
	}
	a.Interrupt(7) // out of range: ignored
	st, err := m.Transport.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	if !st.Activated || !st.Queues[0].Enabled || st.Queues[0].Ring != nil || st.Queues[1].Ring != nil {
		t.Fatalf("saved %+v", st)
	}
	dev2 := &handoffDev{}
	m2 := virtiopcitest.NewMachineOn(t, dev2, m.Mem, 64)
	bad := st
	bad.Queues = append([]virtiopci.QueueState(nil), st.Queues...)
	bad.Queues[0].Ring = &virtio.QueueState{Size: 64}
	// Refused by the checks, before anything changed.
	if err := m2.Transport.RestoreState(bad); err == nil {
		t.Fatal("a hand-over queue with ring positions restored")
	}
	if err := m2.Transport.RestoreState(st); err != nil {
		t.Fatal(err)
	}
	dev2.mu.Lock()
	if len(dev2.acts) != 1 || dev2.acts[0].Queues[0] == nil || *dev2.acts[0].Queues[0] != q0.Config() ||
		dev2.acts[0].Queues[1] != nil || dev2.acts[0].Features != virtio.FeatureVersion1 {
		t.Fatalf("the restored device was handed %d activations: %+v", len(dev2.acts), dev2.acts)
	}
	dev2.mu.Unlock()
	a.Broken(errors.New("back-end gone"))
	if g.Status()&virtio.StatusDeviceNeedsReset == 0 {
		t.Fatal("Broken did not set DEVICE_NEEDS_RESET")
	}
	if err := g.Reset(); err != nil {
		t.Fatal(err)
	}
	dev.mu.Lock()
	defer dev.mu.Unlock()
	if dev.resets != 1 {
		t.Fatalf("%d resets", dev.resets)
	}
}

var _ virtio.Handoff = (*handoffDev)(nil)
