package console_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"testing"

	"github.com/viovmm/vio/devices/virtio/console"
	"github.com/viovmm/vio/pci"
	"github.com/viovmm/vio/state"
	"github.com/viovmm/vio/virtio/virtiopci"
	"github.com/viovmm/vio/virtio/virtiopci/virtiopcitest"
)

func ringPos(t *testing.T, tr *virtiopci.Transport, i int) uint16 {
	t.Helper()
	s, err := tr.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	return s.Queues[i].Ring.NextAvail
}

// TestPauseSaveRestore: input the device held for the guest, output the
// guest queued while paused, and the console size survive a save and a
// restore into a fresh device over the same guest memory, each byte
// crossing once.
func TestPauseSaveRestore(t *testing.T) {
	inR, inW := io.Pipe()
	defer inW.Close()
	out := newOutput()
	dev, err := console.New(inR, out, console.Config{Cols: 80, Rows: 25})
	if err != nil {
		t.Fatal(err)
	}
	mc := virtiopcitest.NewMachine(t, dev, 8<<20, 1024)
	m := &machine{mem: mc.Mem, router: mc.Router, dev: dev, guest: mc.Guest}
	m.start(t, console.FeatureSize)
	// No receive buffer yet: "hello" waits in the device. The second
	// write returns once the device has taken the first chunk.
	inW.Write([]byte("hello"))
	inW.Write([]byte("later"))
	m.tx.Add([][]byte{[]byte("out1")}, nil)
	m.guest.Kick(console.TxQueue)
	out.waitFor(t, "out1")
	if err := dev.Pause(context.Background()); err != nil {
		t.Fatal(err)
	}
	// While paused, nothing is taken.
	m.tx.Add([][]byte{[]byte("out2")}, nil)
	m.guest.Kick(console.TxQueue)
	m.rx.Add(nil, []uint32{64})
	m.guest.Kick(console.RxQueue)
	if ringPos(t, mc.Transport, console.TxQueue) != 1 || ringPos(t, mc.Transport, console.RxQueue) != 0 {
		t.Fatal("the paused device took a chain")
	}
	snap := state.New()
	if err := snap.Save("con/pci", mc.Transport); err != nil {
		t.Fatal(err)
	}
	if err := snap.Save("con/console", dev); err != nil {
		t.Fatal(err)
	}
	var file bytes.Buffer
	if err := snap.Encode(&file); err != nil {
		t.Fatal(err)
	}
	snap2, err := state.Decode(&file)
	if err != nil {
		t.Fatal(err)
	}

	in2R, in2W := io.Pipe()
	defer in2W.Close()
	out2 := newOutput()
	dev2, err := console.New(in2R, out2, console.Config{Cols: 100, Rows: 50})
	if err != nil {
		t.Fatal(err)
	}
	m2 := virtiopcitest.NewMachineOn(t, dev2, m.mem, 1024)
	if err := snap2.Restore("con/pci", m2.Transport); err != nil {
		t.Fatal(err)
	}
	if err := snap2.Restore("con/console", dev2); err != nil {
		t.Fatal(err)
	}
	m2.Root.Resync()
	g2, err := virtiopcitest.Probe(m2.MMIO, m2.PIO, m.mem, pci.BDF{Device: 1})
	if err != nil {
		t.Fatal(err)
	}
	if c, r := g2.ReadDeviceConfig(0, 2), g2.ReadDeviceConfig(2, 2); c != 80 || r != 25 {
		t.Errorf("size %dx%d after restore, want 80x25", c, r)
	}
	out2.waitFor(t, "out2")
	m.router, m.guest = m2.Router, g2
	if got := m.read(t, 5); got != "hello" {
		t.Fatalf("input after restore %q", got)
	}
	m.rx.Add(nil, []uint32{64})
	g2.Kick(console.RxQueue)
	in2W.Write([]byte("more"))
	if got := m.read(t, 4); got != "more" {
		t.Fatalf("new input %q", got)
	}
	if s := dev2.Stats(); s.InBytes != 9 {
		t.Errorf("restored console delivered %d bytes, want 9", s.InBytes)
	}
}

// TestPauseResume: output and input made available while paused flow
// after Resume.
func TestPauseResume(t *testing.T) {
	inR, inW := io.Pipe()
	defer inW.Close()
	out := newOutput()
	m := newMachine(t, inR, out, console.Config{})
	m.start(t, 0)
	if err := m.dev.Pause(context.Background()); err != nil {
		t.Fatal(err)
	}
	m.tx.Add([][]byte{[]byte("x")}, nil)
	m.guest.Kick(console.TxQueue)
	m.rx.Add(nil, []uint32{16})
	m.guest.Kick(console.RxQueue)
	m.dev.Resume()
	out.waitFor(t, "x")
	inW.Write([]byte("y"))
	if got := m.read(t, 1); got != "y" {
		t.Fatalf("input %q", got)
	}
}

func TestHostileRestore(t *testing.T) {
	sized, _ := console.New(nil, nil, console.Config{Cols: 80, Rows: 25})
	plain, _ := console.New(nil, nil, console.Config{})
	for name, c := range map[string]struct {
		d *console.Device
		s console.State
	}{
		"size on a console without": {plain, console.State{Cols: 80, Rows: 25}},
		"zero size":                 {sized, console.State{}},
		"too much input":            {sized, console.State{Cols: 1, Rows: 1, Pending: make([]byte, console.MaxPending+1)}},
	} {
		b, _ := json.Marshal(c.s)
		if err := c.d.UnmarshalState(console.StateVersion, b); !errors.Is(err, state.ErrInvalid) && !errors.Is(err, state.ErrMismatch) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := sized.UnmarshalState(console.StateVersion+1, []byte(`{"Cols":1,"Rows":1}`)); !errors.Is(err, state.ErrNewer) {
		t.Errorf("newer version: %v", err)
	}
	if err := sized.UnmarshalState(1, []byte(`{"Cols":1,"Rows":1,"Port":1}`)); !errors.Is(err, state.ErrCorrupt) {
		t.Errorf("unknown field: %v", err)
	}
	var cfg [4]byte
	sized.ReadConfig(0, cfg[:])
	if cfg != [4]byte{80, 0, 25, 0} {
		t.Errorf("a refused restore changed the size: % x", cfg)
	}
}

func FuzzRestoreState(f *testing.F) {
	f.Add([]byte(`{"Cols":80,"Rows":25,"Pending":"aGVsbG8="}`), true)
	f.Add([]byte(`{"Cols":0,"Rows":0}`), false)
	f.Fuzz(func(t *testing.T, data []byte, sized bool) {
		cfg := console.Config{}
		if sized {
			cfg = console.Config{Cols: 80, Rows: 25}
		}
		d, _ := console.New(nil, nil, cfg)
		_ = d.UnmarshalState(console.StateVersion, data)
		var b [12]byte
		d.ReadConfig(0, b[:])
		if _, err := d.MarshalState(); err != nil {
			t.Fatal(err)
		}
	})
}
