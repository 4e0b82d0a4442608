package blk_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/pci"
	"github.com/viovmm/vio/state"
	"github.com/viovmm/vio/virtio/virtiopci/virtiopcitest"
)

// held is a back-end whose reads announce themselves and wait for
// release.
type held struct {
	block.Backend
	entered chan struct{}
	release chan struct{}
}

func (h *held) ReadAt(p []byte, off int64) (int, error) {
	h.entered <- struct{}{}
	<-h.release
	return h.Backend.ReadAt(p, off)
}

// TestPauseSaveRestore: a request on the back-end when Pause is called
// completes, used entry written, before Pause returns; a request made
// available while paused is not taken; the paused device saves (transport
// and device sections), and a fresh device restored over the same guest
// memory serves the waiting request exactly once.
func TestPauseSaveRestore(t *testing.T) {
	be := &held{Backend: noZero{blocktest.NewMem(1 << 20)}, entered: make(chan struct{}, 4), release: make(chan struct{})}
	m := newMachine(t, be, blk.Config{Writethrough: true})
	m.start(t, blk.FeatureConfigWCE, true)
	m.guest.WriteDeviceConfig(32, 1, 1) // the driver turns the write cache on
	m.submit(t, 0, [][]byte{header(blk.TypeIn, 0)}, []uint32{512, 1}, false)
	<-be.entered
	paused := make(chan error, 1)
	go func() { paused <- m.dev.Pause(context.Background()) }()
	select {
	case err := <-paused:
		t.Fatalf("Pause returned (%v) with a request on the back-end", err)
	default:
	}
	close(be.release)
	if err := <-paused; err != nil {
		t.Fatal(err)
	}
	if m.queues[0].UsedIdx() != 1 {
		t.Fatal("Pause returned before the request's used entry was written")
	}
	// The driver consumes it (re-arming used_event for the next one).
	u, ok, err := m.queues[0].GetUsed()
	if err != nil || !ok || status(t, u, 513) != blk.StatusOK {
		t.Fatalf("first request: %v %v", ok, err)
	}
	ids := []uint16{u.ID}
	m.submit(t, 0, [][]byte{header(blk.TypeIn, 1)}, []uint32{512, 1}, false)
	m.guest.Kick(0)
	snap := state.New()
	if err := snap.Save("disk/pci", m.tr); err != nil {
		t.Fatal(err)
	}
	if err := snap.Save("disk/blk", m.dev); err != nil {
		t.Fatal(err)
	}
	secs := snap.Sections()
	if !bytes.Contains(secs[0].Data, []byte(`"NextAvail":1,`)) {
		t.Fatalf("the paused device took a request: %s", secs[0].Data)
	}
	var file bytes.Buffer
	if err := snap.Encode(&file); err != nil {
		t.Fatal(err)
	}
	snap2, err := state.Decode(&file)
	if err != nil {
		t.Fatal(err)
	}

	dev2, err := blk.New(be, blk.Config{Writethrough: true})
	if err != nil {
		t.Fatal(err)
	}
	m2 := virtiopcitest.NewMachineOn(t, dev2, m.mem, 64)
	if err := snap2.Restore("disk/pci", m2.Transport); err != nil {
		t.Fatal(err)
	}
	if err := snap2.Restore("disk/blk", dev2); err != nil {
		t.Fatal(err)
	}
	m2.Root.Resync()
	g2, err := virtiopcitest.Probe(m2.MMIO, m2.PIO, m.mem, pci.BDF{Device: 1})
	if err != nil {
		t.Fatal(err)
	}
	if g2.ReadDeviceConfig(32, 1) != 1 {
		t.Error("writeback flag not restored")
	}
	if _, err := m2.Router.Wait(wait); err != nil {
		t.Fatal(err)
	}
	for {
		u, ok, err := m.queues[0].GetUsed()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		if st := status(t, u, 513); st != blk.StatusOK {
			t.Errorf("status %d", st)
		}
		ids = append(ids, u.ID)
	}
	if len(ids) != 2 || m.queues[0].InFlight() != 0 {
		t.Fatalf("used %v, in flight %d", ids, m.queues[0].InFlight())
	}
}

func TestPauseResume(t *testing.T) {
	m := newMachine(t, blocktest.NewMem(1<<20), blk.Config{})
	m.start(t, 0, true)
	if err := m.dev.Pause(context.Background()); err != nil {
		t.Fatal(err)
	}
	m.submit(t, 0, [][]byte{header(blk.TypeIn, 0)}, []uint32{512, 1}, false)
	m.guest.Kick(0)
	m.dev.Resume()
	if u := m.collect(t, 0, 1)[0]; status(t, u, 513) != blk.StatusOK {
		t.Fatal("request made while paused failed after Resume")
	}
}

func TestRestoreOtherDisk(t *testing.T) {
	d1, _ := blk.New(blocktest.NewMem(1<<20), blk.Config{})
	d2, _ := blk.New(blocktest.NewMem(2<<20), blk.Config{})
	b, err := d1.MarshalState()
	if err != nil {
		t.Fatal(err)
	}
	if err := d2.UnmarshalState(1, b); !errors.Is(err, state.ErrMismatch) {
		t.Fatalf("restore onto a disk of another size: %v", err)
	}
}

func FuzzRestoreState(f *testing.F) {
	d, _ := blk.New(blocktest.NewMem(1<<20), blk.Config{})
	b, _ := d.MarshalState()
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		d, _ := blk.New(blocktest.NewMem(1<<20), blk.Config{})
		_ = d.UnmarshalState(1, data)
		var cfg [60]byte
		d.ReadConfig(0, cfg[:])
	})
}
