package rng_test

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/viovmm/vio/devices/virtio/rng"
	"github.com/viovmm/vio/pci"
	"github.com/viovmm/vio/state"
	"github.com/viovmm/vio/virtio/virtiopci/virtiopcitest"
)

// blocking is a source whose reads announce themselves and wait for
// release; then it gives bytes of value 7.
type blocking struct {
	entered chan struct{}
	release chan struct{}
}

func (b *blocking) Read(p []byte) (int, error) {
	b.entered <- struct{}{}
	<-b.release
	for i := range p {
		p[i] = 7
	}
	return len(p), nil
}

func machineOn(t *testing.T, src *blocking) *machine {
	var dev *rng.Device
	if src != nil {
		dev = rng.New(src)
	} else {
		dev = rng.New(&countingReader{})
	}
	mc := virtiopcitest.NewMachine(t, dev, 4<<20, 256)
	return &machine{mem: mc.Mem, mmio: mc.MMIO, pio: mc.PIO, root: mc.Root, router: mc.Router, dev: dev, tr: mc.Transport, guest: mc.Guest}
}

// TestPauseBlockedSource: a source that blocks does not hold a pause; the
// request it was serving goes back to the ring untouched, is saved with
// the queue, and a restored device serves it exactly once.
func TestPauseBlockedSource(t *testing.T) {
	src := &blocking{entered: make(chan struct{}, 4), release: make(chan struct{})}
	defer close(src.release)
	m := machineOn(t, src)
	d := setup(t, m, true)
	if _, err := d.Add(nil, []uint32{16}); err != nil {
		t.Fatal(err)
	}
	m.guest.Kick(0)
	<-src.entered
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := m.dev.Pause(ctx); err != nil {
		t.Fatal("Pause with the source blocked:", err)
	}
	snap := state.New()
	if err := snap.Save("rng/pci", m.tr); err != nil {
		t.Fatal(err) // refuses a request in flight
	}
	if err := snap.Save("rng/rng", m.dev); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(snap.Sections()[0].Data, []byte(`"NextAvail":0,`)) {
		t.Fatalf("the request was not handed back: %s", snap.Sections()[0].Data)
	}
	var file bytes.Buffer
	if err := snap.Encode(&file); err != nil {
		t.Fatal(err)
	}
	snap2, err := state.Decode(&file)
	if err != nil {
		t.Fatal(err)
	}
	dev2 := rng.New(&countingReader{})
	m2 := virtiopcitest.NewMachineOn(t, dev2, m.mem, 16)
	if err := snap2.Restore("rng/pci", m2.Transport); err != nil {
		t.Fatal(err)
	}
	if err := snap2.Restore("rng/rng", dev2); err != nil {
		t.Fatal(err)
	}
	m2.Root.Resync()
	if _, err := virtiopcitest.Probe(m2.MMIO, m2.PIO, m.mem, pci.BDF{Device: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := m2.Router.Wait(wait); err != nil {
		t.Fatal("no interrupt from the restored device:", err)
	}
	u := getUsed(t, d)
	if u.Len != 16 || u.Data[0] != 0 || u.Data[15] != 15 {
		t.Fatalf("restored device served %d bytes % x", u.Len, u.Data)
	}
	if _, ok, _ := d.GetUsed(); ok || d.InFlight() != 0 {
		t.Fatal("request served twice")
	}
}

// TestPauseResumeBlockedSource: after Resume the handed-back request is
// served from the read that was blocked, once.
func TestPauseResumeBlockedSource(t *testing.T) {
	src := &blocking{entered: make(chan struct{}, 4), release: make(chan struct{})}
	m := machineOn(t, src)
	d := setup(t, m, false)
	d.Add(nil, []uint32{32})
	m.guest.Kick(0)
	<-src.entered
	if err := m.dev.Pause(context.Background()); err != nil {
		t.Fatal(err)
	}
	close(src.release)
	m.dev.Resume()
	if _, err := m.router.Wait(wait); err != nil {
		t.Fatal(err)
	}
	if u := getUsed(t, d); u.Len != 32 || !bytes.Equal(u.Data, bytes.Repeat([]byte{7}, 32)) {
		t.Fatalf("served % x", u.Data)
	}
	if len(src.entered) != 0 {
		t.Error("a second read was started for the same request")
	}
}

// TestResetBlockedSource: a reset does not wait for a blocked source.
func TestResetBlockedSource(t *testing.T) {
	src := &blocking{entered: make(chan struct{}, 4), release: make(chan struct{})}
	defer close(src.release)
	m := machineOn(t, src)
	d := setup(t, m, false)
	d.Add(nil, []uint32{8})
	m.guest.Kick(0)
	<-src.entered
	done := make(chan error, 1)
	go func() { done <- m.guest.Reset() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(wait):
		t.Fatal("reset waits for a blocked source")
	}
}

func TestRestoreVersions(t *testing.T) {
	d := rng.New(nil)
	if err := d.UnmarshalState(rng.StateVersion+1, []byte(`{}`)); !errors.Is(err, state.ErrNewer) {
		t.Errorf("newer version: %v", err)
	}
	if err := d.UnmarshalState(1, []byte(`{"X":1}`)); !errors.Is(err, state.ErrCorrupt) {
		t.Errorf("unknown field: %v", err)
	}
	if err := d.UnmarshalState(1, []byte(`{}`)); err != nil {
		t.Error(err)
	}
}

func FuzzRestoreState(f *testing.F) {
	f.Add([]byte(`{}`), uint32(1))
	f.Fuzz(func(t *testing.T, data []byte, v uint32) {
		_ = rng.New(nil).UnmarshalState(v, data)
	})
}
