package rng_test

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/viovmm/vio/bus"
	"github.com/viovmm/vio/devices/virtio/rng"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/pci"
	"github.com/viovmm/vio/pci/pcitest"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/queuetest"
	"github.com/viovmm/vio/virtio/virtiopci"
	"github.com/viovmm/vio/virtio/virtiopci/virtiopcitest"
)

const (
	msiAddr   = 0xfee00000
	queueBase = 0x10000
	wait      = 10 * time.Second // bounds a hang; never a synchronization
)

type machine struct {
	mem       *memory.Memory
	mmio, pio *bus.Bus
	root      *pci.Root
	router    *pcitest.Router
	line      *pcitest.Line
	dev       *rng.Device
	tr        *virtiopci.Transport
	guest     *virtiopcitest.Guest
	ioev      *ioevents
}

// ioevents is an IOEventRegistrar double that records attached addresses.
type ioevents struct {
	mu    sync.Mutex
	kicks map[uint64]func()
}

func (e *ioevents) Attach(gpa uint64, kick func()) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.kicks[gpa] = kick
	return nil
}

func (e *ioevents) Detach(gpa uint64) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.kicks, gpa)
	return nil
}

func (e *ioevents) fire(gpa uint64) bool {
	e.mu.Lock()
	k := e.kicks[gpa]
	e.mu.Unlock()
	if k == nil {
		return false
	}
	k()
	return true
}

func newMachine(t *testing.T, src *countingReader) *machine {
	t.Helper()
	m := &machine{mmio: bus.New("mmio"), pio: bus.New("pio"), router: pcitest.NewRouter(256), line: pcitest.NewLine(),
		ioev: &ioevents{kicks: make(map[uint64]func())}}
	var err error
	if m.mem, err = memory.New([]memory.Layout{{GPA: 0, Size: 4 << 20}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.mem.Close() })
	m.root, err = pci.NewRoot(pci.RootConfig{
		MMIO: m.mmio, PIO: m.pio,
		MMIO32:    pci.Window{Base: 0xc0000000, Size: 0x10000000},
		PIOWindow: pci.Window{Base: 0x1000, Size: 0x1000},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.pio.Register(pci.ConfigAddressPort, pci.ConfigPortsSize, m.root.ConfigPorts()); err != nil {
		t.Fatal(err)
	}
	if src != nil {
		m.dev = rng.New(src)
	} else {
		m.dev = rng.New(nil)
	}
	m.tr, err = virtiopci.New(m.dev, m.mem, virtiopci.Options{Router: m.router, INTx: m.line, IOEvents: m.ioev})
	if err != nil {
		t.Fatal(err)
	}
	a := pci.BDF{Device: 1}
	if err := m.root.Add(a, m.tr); err != nil {
		t.Fatal(err)
	}
	if m.guest, err = virtiopcitest.Probe(m.mmio, m.pio, m.mem, a); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.guest.Reset() })
	return m
}

type countingReader struct {
	mu sync.Mutex
	n  int
}

func (c *countingReader) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range p {
		p[i] = byte(c.n)
		c.n++
	}
	return len(p), nil
}

// setup brings the device up with MSI-X: vector 0 for configuration
// changes, vector 1 for the request queue.
func setup(t *testing.T, m *machine, eventIdx bool) *queuetest.Driver {
	t.Helper()
	g := m.guest
	feat := virtio.FeatureVersion1 | virtio.FeatureIndirectDesc
	if eventIdx {
		feat |= virtio.FeatureEventIdx
	}
	if err := g.Negotiate(feat); err != nil {
		t.Fatal(err)
	}
	if g.MSIXVectors() != 2 {
		t.Fatalf("%d MSI-X vectors", g.MSIXVectors())
	}
	g.ProgramMSIX(0, msiAddr, 0x30)
	g.ProgramMSIX(1, msiAddr, 0x31)
	g.EnableMSIX(true)
	if v := g.SetConfigVector(0); v != 0 {
		t.Fatalf("config vector reads back %#x", v)
	}
	d, err := g.SetupQueue(virtiopcitest.QueueConfig{Index: 0, Size: 64, Vector: 1, Base: queueBase, DataSize: 1 << 20, EventIdx: eventIdx})
	if err != nil {
		t.Fatal(err)
	}
	g.SetStatus(virtio.StatusDriverOK)
	if s := g.Status(); s != virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK|virtio.StatusDriverOK {
		t.Fatalf("status %#x", s)
	}
	return d
}

func getUsed(t *testing.T, d *queuetest.Driver) queuetest.Used {
	t.Helper()
	u, ok, err := d.GetUsed()
	if err != nil || !ok {
		t.Fatalf("GetUsed: %v %v", ok, err)
	}
	return u
}

// TestEndToEndMSIX is the whole path: configuration space through CF8,
// BAR MMIO to common cfg, rings in guest memory, a notify register write,
// the device's goroutine, the used ring and an MSI-X message.
func TestEndToEndMSIX(t *testing.T) {
	for _, eventIdx := range []bool{false, true} {
		m := newMachine(t, nil)
		g := m.guest
		if id := g.CF8.Read(g.BDF, 0, 4); id != 0x1044<<16|0x1af4 {
			t.Fatalf("id %#x", id)
		}
		if rev := g.CF8.Read(g.BDF, pci.RegRevisionID, 1); rev < 1 {
			t.Errorf("revision %d", rev)
		}
		offered := g.DeviceFeatures()
		if offered&virtio.FeatureVersion1 == 0 || offered&virtio.FeatureEventIdx == 0 || offered&virtio.FeatureIndirectDesc == 0 {
			t.Errorf("offered %#x", offered)
		}
		d := setup(t, m, eventIdx)

		h1, err := d.Add(nil, []uint32{64})
		if err != nil {
			t.Fatal(err)
		}
		h2, err := d.AddIndirect(nil, []uint32{16, 48})
		if err != nil {
			t.Fatal(err)
		}
		if !d.NeedsKick() {
			t.Fatal("driver does not need to kick a fresh queue")
		}
		g.Kick(0)
		msg, err := m.router.Wait(wait)
		if err != nil {
			t.Fatal(err)
		}
		if msg != (pcitest.Message{Vector: 1, Addr: msiAddr, Data: 0x31}) {
			t.Fatalf("message %+v", msg)
		}
		// The interrupt may have come after the first chain only.
		var us []queuetest.Used
		for len(us) < 2 {
			u, ok, err := d.GetUsed()
			if err != nil {
				t.Fatal(err)
			}
			if ok {
				us = append(us, u)
				continue
			}
			if _, err := m.router.Wait(wait); err != nil {
				t.Fatal(err)
			}
		}
		if us[0].ID != h1 || us[0].Len != 64 || us[1].ID != h2 || us[1].Len != 64 {
			t.Fatalf("used %+v %+v", us[0], us[1])
		}
		if bytes.Equal(us[0].Data, us[1].Data) || bytes.Equal(us[0].Data, make([]byte, 64)) {
			t.Error("random data repeats or is zero")
		}
		if h, _ := m.line.Level(); h {
			t.Error("INTx asserted while MSI-X is enabled")
		}
		if isr := g.ReadISR(); isr != 0 {
			t.Errorf("ISR %#x with MSI-X", isr)
		}
	}
}

// TestIOEventFD checks the per-queue notify addresses the VMM attaches
// ioeventfds to, and that firing one reaches the device.
func TestIOEventFD(t *testing.T) {
	m := newMachine(t, &countingReader{})
	d := setup(t, m, true)
	addr, ok := m.tr.NotifyAddr(0)
	if !ok || addr != m.guest.NotifyAddr(0) {
		t.Fatalf("NotifyAddr = %#x,%v; the driver computes %#x", addr, ok, m.guest.NotifyAddr(0))
	}
	if _, err := d.Add(nil, []uint32{8}); err != nil {
		t.Fatal(err)
	}
	if !m.ioev.fire(addr) {
		t.Fatal("no ioeventfd attached at the notify address")
	}
	if _, err := m.router.Wait(wait); err != nil {
		t.Fatal(err)
	}
	if u := getUsed(t, d); !bytes.Equal(u.Data, []byte{0, 1, 2, 3, 4, 5, 6, 7}) {
		t.Errorf("data %v", u.Data)
	}
	// Moving BAR 0 moves the ioeventfds.
	g := m.guest
	cmd := g.CF8.Read(g.BDF, pci.RegCommand, 2)
	g.CF8.Write(g.BDF, pci.RegCommand, 2, cmd&^pci.CommandMemory)
	if _, ok := m.tr.NotifyAddr(0); ok {
		t.Error("notify address valid while decoding is off")
	}
	if m.ioev.fire(addr) {
		t.Error("ioeventfd still attached after unmapping")
	}
	newBar := uint64(0xc8000000)
	g.CF8.Write(g.BDF, pci.RegBAR0, 4, uint32(newBar)|4)
	g.CF8.Write(g.BDF, pci.RegBAR0+4, 4, 0)
	g.CF8.Write(g.BDF, pci.RegCommand, 2, cmd)
	g.BAR = newBar
	if a, ok := m.tr.NotifyAddr(0); !ok || a != g.NotifyAddr(0) || a == addr {
		t.Errorf("after move: %#x %v, driver says %#x", a, ok, g.NotifyAddr(0))
	}
	d.Add(nil, []uint32{4})
	if !m.ioev.fire(g.NotifyAddr(0)) {
		t.Fatal("no ioeventfd at the moved address")
	}
	if _, err := m.router.Wait(wait); err != nil {
		t.Fatal(err)
	}
	if u := getUsed(t, d); !bytes.Equal(u.Data, []byte{8, 9, 10, 11}) {
		t.Errorf("data %v", u.Data)
	}
}

// TestINTxFallback runs without MSI-X: queue interrupts set ISR bit 0 and
// raise INTx; reading ISR clears both.
func TestINTxFallback(t *testing.T) {
	m := newMachine(t, &countingReader{})
	g := m.guest
	if err := g.Negotiate(virtio.FeatureVersion1); err != nil {
		t.Fatal(err)
	}
	if pin := g.CF8.Read(g.BDF, pci.RegInterruptPin, 1); pin != 1 {
		t.Errorf("interrupt pin %d", pin)
	}
	d, err := g.SetupQueue(virtiopcitest.QueueConfig{Index: 0, Vector: virtiopci.NoVector, Base: queueBase, DataSize: 1 << 16})
	if err != nil {
		t.Fatal(err)
	}
	g.SetStatus(virtio.StatusDriverOK)
	d.Add(nil, []uint32{3})
	g.Kick(0)
	select {
	case high := <-m.line.Changes():
		if !high {
			t.Fatal("line went low first")
		}
	case <-time.After(wait):
		t.Fatal("no INTx")
	}
	if st := g.CF8.Read(g.BDF, pci.RegStatus, 2); st&pci.StatusINTx == 0 {
		t.Error("status.INTx clear while asserted")
	}
	if isr := g.ReadISR(); isr != 1 {
		t.Errorf("ISR = %#x", isr)
	}
	if h, _ := m.line.Level(); h {
		t.Error("INTx still high after ISR read")
	}
	if isr := g.ReadISR(); isr != 0 {
		t.Errorf("ISR not cleared by read: %#x", isr)
	}
	if u := getUsed(t, d); u.Len != 3 {
		t.Errorf("used %+v", u)
	}
	if m.router.Pending() != 0 {
		t.Error("MSI sent while MSI-X disabled")
	}
}

// TestMaskedVectorPending: a masked queue vector pends and is delivered on
// unmask.
func TestMaskedVectorPending(t *testing.T) {
	m := newMachine(t, nil)
	d := setup(t, m, false)
	m.guest.MaskMSIX(1, true)
	d.Add(nil, []uint32{8})
	m.guest.Kick(0)
	// Wait for the device to finish, observed through the used ring; the
	// interrupt must then be pending, not sent.
	deadline := time.Now().Add(wait)
	for d.UsedIdx() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("request not completed")
		}
		time.Sleep(time.Millisecond) // polling an observable, bounded by the deadline
	}
	for !m.tr.MSIX().Pending(1) {
		if time.Now().After(deadline) {
			t.Fatal("vector 1 not pending")
		}
		time.Sleep(time.Millisecond)
	}
	if m.router.Pending() != 0 {
		t.Fatal("message delivered while masked")
	}
	m.guest.MaskMSIX(1, false)
	msg, err := m.router.Wait(wait)
	if err != nil || msg.Vector != 1 {
		t.Fatalf("%+v %v", msg, err)
	}
}

func TestFeatureNegotiation(t *testing.T) {
	m := newMachine(t, nil)
	g := m.guest
	if err := g.Negotiate(virtio.FeatureVersion1 | 1<<3); !errors.Is(err, virtiopcitest.ErrFeaturesRefused) {
		t.Errorf("unoffered feature bit: %v", err)
	}
	if err := g.Negotiate(virtio.FeatureEventIdx); !errors.Is(err, virtiopcitest.ErrFeaturesRefused) {
		t.Errorf("without VERSION_1: %v", err)
	}
	if err := g.Negotiate(virtio.FeatureVersion1 | virtio.FeatureRingPacked); !errors.Is(err, virtiopcitest.ErrFeaturesRefused) {
		t.Errorf("packed ring: %v", err)
	}
	// DRIVER_OK without FEATURES_OK does not stick.
	g.Reset()
	g.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver)
	g.SetStatus(virtio.StatusDriverOK)
	if g.Status()&virtio.StatusDriverOK != 0 {
		t.Error("DRIVER_OK accepted without FEATURES_OK")
	}
	// Features are frozen after FEATURES_OK.
	if err := g.Negotiate(virtio.FeatureVersion1); err != nil {
		t.Fatal(err)
	}
	g.WriteCommon(virtiopcitest.DriverFeatureSelect, 4, 1)
	g.WriteCommon(virtiopcitest.DriverFeature, 4, 0)
	if v := g.ReadCommon(virtiopcitest.DriverFeature, 4); v != 1 {
		t.Errorf("driver features changed after FEATURES_OK: %#x", v)
	}
	// Out-of-range vectors read back as NO_VECTOR.
	if v := g.SetConfigVector(7); v != virtiopci.NoVector {
		t.Errorf("config vector 7 reads %#x", v)
	}
	if n := g.ReadCommon(virtiopcitest.NumQueues, 2); n != 1 {
		t.Errorf("num_queues %d", n)
	}
	g.WriteCommon(virtiopcitest.QueueSelect, 2, 1)
	if s := g.ReadCommon(virtiopcitest.QueueSize, 2); s != 0 {
		t.Errorf("nonexistent queue size %d", s)
	}
}

// TestBadQueueNeedsReset: a queue the device refuses at DRIVER_OK, and a
// ring corrupted later, both end in DEVICE_NEEDS_RESET with a
// configuration interrupt; a reset recovers.
func TestBadQueueNeedsReset(t *testing.T) {
	m := newMachine(t, nil)
	g := m.guest
	if err := g.Negotiate(virtio.FeatureVersion1); err != nil {
		t.Fatal(err)
	}
	g.ProgramMSIX(0, msiAddr, 0x30)
	g.ProgramMSIX(1, msiAddr, 0x31)
	g.EnableMSIX(true)
	g.SetConfigVector(0)
	g.WriteCommon(virtiopcitest.QueueSelect, 2, 0)
	g.WriteCommon(virtiopcitest.QueueSize, 2, 512) // above the maximum
	g.WriteCommon(virtiopcitest.QueueDesc, 4, 0x1000)
	g.WriteCommon(virtiopcitest.QueueEnable, 2, 1)
	g.SetStatus(virtio.StatusDriverOK)
	if g.Status()&virtio.StatusDeviceNeedsReset == 0 {
		t.Fatalf("status %#x", g.Status())
	}
	if msg, err := m.router.Wait(wait); err != nil || msg.Vector != 0 {
		t.Fatalf("config interrupt: %+v %v", msg, err)
	}
	if !errors.Is(m.tr.Stats().LastError, virtio.ErrQueueConfig) {
		t.Errorf("last error %v", m.tr.Stats().LastError)
	}

	// Recover, then corrupt the ring while running.
	d := setup(t, m, false)
	d.SetAvailIdx(200) // more than the queue size ahead
	g.Kick(0)
	if msg, err := m.router.Wait(wait); err != nil || msg.Vector != 0 {
		t.Fatalf("config interrupt: %+v %v", msg, err)
	}
	if g.Status()&virtio.StatusDeviceNeedsReset == 0 {
		t.Fatalf("status %#x after broken ring", g.Status())
	}
	d = setup(t, m, false)
	d.Add(nil, []uint32{4})
	g.Kick(0)
	if _, err := m.router.Wait(wait); err != nil {
		t.Fatal(err)
	}
	if u := getUsed(t, d); u.Len != 4 {
		t.Errorf("after recovery: %+v", u)
	}
}

// TestResetStopsDevice: after a reset, kicks reach nothing and the rings
// are left alone.
func TestResetStopsDevice(t *testing.T) {
	src := &countingReader{}
	m := newMachine(t, src)
	d := setup(t, m, true)
	d.Add(nil, []uint32{4})
	m.guest.Kick(0)
	if _, err := m.router.Wait(wait); err != nil {
		t.Fatal(err)
	}
	if err := m.guest.Reset(); err != nil {
		t.Fatal(err)
	}
	// A request made available after the reset must never be served: the
	// device is stopped and the old rings are forgotten.
	d.Add(nil, []uint32{4})
	m.tr.Notify(0)
	m.guest.Kick(0)
	// Bring the device up again on fresh rings: if the stale request had
	// been served, it would have consumed source bytes 4..7.
	d = setup(t, m, true)
	d.Add(nil, []uint32{4})
	m.guest.Kick(0)
	if _, err := m.router.Wait(wait); err != nil {
		t.Fatal(err)
	}
	if u := getUsed(t, d); !bytes.Equal(u.Data, []byte{4, 5, 6, 7}) {
		t.Errorf("data %v: a request was served after reset", u.Data)
	}
	if m.tr.Stats().Resets == 0 {
		t.Error("reset not counted")
	}
}
