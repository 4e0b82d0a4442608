package virtiopci_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/viovmm/vio/pci"
	"github.com/viovmm/vio/state"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/queuetest"
	"github.com/viovmm/vio/virtio/virtiopci"
	"github.com/viovmm/vio/virtio/virtiopci/virtiopcitest"
)

// running is a machine whose driver negotiated EVENT_IDX, enabled MSI-X
// and queues 0 and 2 (not 1), and set DRIVER_OK.
type running struct {
	m      *virtiopcitest.Machine
	dev    *stubDev
	d0, d2 *queuetest.Driver
}

func startRunning(t testing.TB) *running {
	t.Helper()
	r := &running{dev: &stubDev{}}
	r.m = virtiopcitest.NewMachine(t, r.dev, 1<<20, 64)
	g := r.m.Guest
	if err := g.Negotiate(virtio.FeatureVersion1 | virtio.FeatureEventIdx); err != nil {
		t.Fatal(err)
	}
	for v := range g.MSIXVectors() {
		g.ProgramMSIX(v, 0xfee00000, uint32(0x40+v))
		g.MaskMSIX(v, false)
	}
	g.EnableMSIX(true)
	g.SetConfigVector(0)
	var err error
	if r.d0, err = g.SetupQueue(virtiopcitest.QueueConfig{Index: 0, Vector: 1, Base: 0x10000, DataSize: 0x10000, EventIdx: true}); err != nil {
		t.Fatal(err)
	}
	if r.d2, err = g.SetupQueue(virtiopcitest.QueueConfig{Index: 2, Size: 16, Vector: 3, Base: 0x40000, DataSize: 0x10000, EventIdx: true}); err != nil {
		t.Fatal(err)
	}
	g.SetStatus(virtio.StatusDriverOK)
	if len(r.dev.activations) != 1 {
		t.Fatal("device not activated")
	}
	return r
}

func serveOne(t *testing.T, q *virtio.Queue, answer byte) {
	t.Helper()
	c, err := q.Next()
	if err != nil || c == nil {
		t.Fatalf("Next: %v %v", c, err)
	}
	if _, err := c.Writable.WriteAt([]byte{answer}, 0); err != nil {
		t.Fatal(err)
	}
	if err := q.Push(c.Head, 1); err != nil {
		t.Fatal(err)
	}
	if err := q.Signal(); err != nil {
		t.Fatal(err)
	}
}

// commonRegs reads every common configuration register the way a driver
// can, queue by queue.
func commonRegs(g *virtiopcitest.Guest, nq int) []uint64 {
	var v []uint64
	for _, r := range []struct {
		off uint64
		n   int
	}{{virtiopcitest.DeviceFeatureSelect, 4}, {virtiopcitest.DriverFeatureSelect, 4}, {virtiopcitest.ConfigMSIXVector, 2},
		{virtiopcitest.DeviceStatus, 1}, {virtiopcitest.ConfigGeneration, 1}} {
		v = append(v, g.ReadCommon(r.off, r.n))
	}
	for sel := range 2 {
		g.WriteCommon(virtiopcitest.DriverFeatureSelect, 4, uint64(sel))
		v = append(v, g.ReadCommon(virtiopcitest.DriverFeature, 4))
	}
	for q := range nq {
		g.WriteCommon(virtiopcitest.QueueSelect, 2, uint64(q))
		for _, r := range []struct {
			off uint64
			n   int
		}{{virtiopcitest.QueueSize, 2}, {virtiopcitest.QueueMSIXVector, 2}, {virtiopcitest.QueueEnable, 2},
			{virtiopcitest.QueueDesc, 4}, {virtiopcitest.QueueDriver, 4}, {virtiopcitest.QueueDevice, 4}} {
			v = append(v, g.ReadCommon(r.off, r.n))
		}
	}
	return v
}

// TestTransportStateRoundTrip saves a running function part-way through
// its requests, restores it (through the state file) into a fresh
// machine over the same guest memory and checks, as the guest sees it,
// that everything is where it was and the requests go on: identical
// common configuration, the device activated with the same queues, the
// remaining request served exactly once with its interrupt on the
// driver's vector at the new router, kicks reaching the restored queue.
func TestTransportStateRoundTrip(t *testing.T) {
	r := startRunning(t)
	q0 := r.dev.activations[0].Queues[0]
	for i := range 3 {
		if _, err := r.d0.Add([][]byte{{byte(i)}}, []uint32{1}); err != nil {
			t.Fatal(err)
		}
	}
	serveOne(t, q0, 100)
	serveOne(t, q0, 101)
	r.m.Transport.ConfigChanged()
	if _, err := r.m.Router.Wait(time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := r.m.Router.Wait(time.Second); err != nil {
		t.Fatal(err)
	}
	// The driver consumes what was used, re-arming used_event.
	got := used(t, r.d0)

	snap := state.New()
	if err := snap.Save("d/pci", r.m.Transport); err != nil {
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

	dev2 := &stubDev{}
	m2 := virtiopcitest.NewMachineOn(t, dev2, r.m.Mem, 64)
	if err := snap2.Restore("d/pci", m2.Transport); err != nil {
		t.Fatal(err)
	}
	m2.Root.Resync()
	g2, err := virtiopcitest.Probe(m2.MMIO, m2.PIO, r.m.Mem, pci.BDF{Device: 1})
	if err != nil {
		t.Fatal(err)
	}
	if a, b := commonRegs(r.m.Guest, 3), commonRegs(g2, 3); !equalU64(a, b) {
		t.Fatalf("common configuration after restore:\n%v\nwant\n%v", b, a)
	}
	if len(dev2.activations) != 1 {
		t.Fatalf("%d activations after restore", len(dev2.activations))
	}
	a2 := dev2.activations[0]
	if a2.Features != r.dev.activations[0].Features || a2.Queues[1] != nil || a2.Queues[0] == nil || a2.Queues[2] == nil {
		t.Fatalf("restored activation %+v", a2)
	}
	serveOne(t, a2.Queues[0], 102)
	if c, err := a2.Queues[0].Next(); c != nil || err != nil {
		t.Fatalf("extra chain after restore: %v %v", c, err)
	}
	m, err := m2.Router.Wait(time.Second)
	if err != nil || m.Vector != 1 || m.Data != 0x41 {
		t.Fatalf("interrupt after restore: %+v %v", m, err)
	}
	got = append(got, used(t, r.d0)...)
	if !bytes.Equal(got, []byte{100, 101, 102}) {
		t.Fatalf("answers %v", got)
	}
	g2.Kick(0)
	select {
	case <-a2.Queues[0].Kicks():
	default:
		t.Fatal("kick did not reach the restored queue")
	}
}

func used(t *testing.T, d *queuetest.Driver) []byte {
	t.Helper()
	var got []byte
	for {
		u, ok, err := d.GetUsed()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			return got
		}
		got = append(got, u.Data...)
	}
}

func equalU64(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestTransportSaveRefusesInFlight(t *testing.T) {
	r := startRunning(t)
	if _, err := r.d0.Add([][]byte{{1}}, []uint32{1}); err != nil {
		t.Fatal(err)
	}
	q0 := r.dev.activations[0].Queues[0]
	c, err := q0.Next()
	if err != nil || c == nil {
		t.Fatal(c, err)
	}
	if _, err := r.m.Transport.SaveState(); !errors.Is(err, virtio.ErrInFlight) {
		t.Fatalf("save with a request in flight: %v", err)
	}
}

func TestTransportRestoreHostile(t *testing.T) {
	r := startRunning(t)
	good, err := r.m.Transport.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	clone := func() virtiopci.State {
		s := good
		s.Queues = append([]virtiopci.QueueState(nil), good.Queues...)
		for i, q := range s.Queues {
			if q.Ring != nil {
				rc := *q.Ring
				s.Queues[i].Ring = &rc
			}
		}
		return s
	}
	cases := map[string]func(s *virtiopci.State){
		"vector out of range":   func(s *virtiopci.State) { s.Queues[0].Vector = 9 },
		"config vector":         func(s *virtiopci.State) { s.ConfigVector = 100 },
		"queue count":           func(s *virtiopci.State) { s.Queues = s.Queues[:2] },
		"unknown status":        func(s *virtiopci.State) { s.Status |= 0x10 },
		"unoffered feature":     func(s *virtiopci.State) { s.DriverFeatures |= 1 << 50 },
		"no ring state":         func(s *virtiopci.State) { s.Queues[0].Ring = nil },
		"ring on idle queue":    func(s *virtiopci.State) { s.Queues[1].Ring = s.Queues[0].Ring },
		"ring disagrees":        func(s *virtiopci.State) { s.Queues[0].Ring.DescTable += 16 },
		"ring outside RAM":      func(s *virtiopci.State) { s.Queues[0].Desc, s.Queues[0].Ring.DescTable = 1<<40, 1<<40 },
		"size not power of two": func(s *virtiopci.State) { s.Queues[2].Size, s.Queues[2].Ring.Size = 12, 12 },
		"size above maximum":    func(s *virtiopci.State) { s.Queues[2].Size, s.Queues[2].Ring.Size = 64, 64 },
		"ISR":                   func(s *virtiopci.State) { s.ISR = 0x80 },
		"other device":          func(s *virtiopci.State) { s.Config.Data[2]++ },
	}
	for name, f := range cases {
		t.Run(name, func(t *testing.T) {
			s := clone()
			f(&s)
			dev := &stubDev{}
			m := virtiopcitest.NewMachineOn(t, dev, r.m.Mem, 8)
			if err := m.Transport.RestoreState(s); err == nil {
				t.Fatal("hostile state restored")
			}
			if len(dev.activations) != 0 {
				t.Fatal("device activated from a refused state")
			}
		})
	}
	// A transport the guest already started is not restored over.
	if err := r.m.Transport.RestoreState(good); err == nil {
		t.Fatal("restore over a running transport")
	}
}

// FuzzTransportRestore feeds arbitrary sections to the transport's
// restore path: refused or applied, never a panic.
func FuzzTransportRestore(f *testing.F) {
	r := startRunning(f)
	good, err := r.m.Transport.MarshalState()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"Queues":[{},{},{}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		dev := &stubDev{}
		m := virtiopcitest.NewMachineOn(t, dev, r.m.Mem, 8)
		if m.Transport.UnmarshalState(1, data) != nil {
			return
		}
		m.Root.Resync()
		for q := range 3 {
			m.Transport.Notify(q)
		}
		_ = m.Transport.Stats()
	})
}
