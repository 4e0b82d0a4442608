package virtiopci_test

import (
	"encoding/binary"
	"errors"
	"sync"
	"testing"

	"github.com/viovmm/vio/bus"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/pci"
	"github.com/viovmm/vio/pci/pcitest"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/virtiopci"
	"github.com/viovmm/vio/virtio/virtiopci/virtiopcitest"
)

// stubDev records its lifecycle and exposes an 8-byte config structure.
type stubDev struct {
	mu          sync.Mutex
	activations []*virtio.Activation
	resets      int
	cfg         [8]byte
	fail        error
}

func (*stubDev) Type() virtio.DeviceType { return virtio.TypeBlock }
func (*stubDev) Features() uint64        { return 1 << 5 }
func (*stubDev) QueueMaxSizes() []uint16 { return []uint16{128, 64, 32} }

func (d *stubDev) ReadConfig(off uint64, data []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	clear(data)
	if off < 8 {
		copy(data, d.cfg[off:])
	}
}

func (d *stubDev) WriteConfig(off uint64, data []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off < 8 {
		copy(d.cfg[off:], data)
	}
}

func (d *stubDev) Activate(a *virtio.Activation) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fail != nil {
		return d.fail
	}
	d.activations = append(d.activations, a)
	return nil
}

func (d *stubDev) Reset() {
	d.mu.Lock()
	d.resets++
	d.mu.Unlock()
}

type rig struct {
	mem       *memory.Memory
	mmio, pio *bus.Bus
	root      *pci.Root
	dev       *stubDev
	tr        *virtiopci.Transport
	g         *virtiopcitest.Guest
	router    *pcitest.Router
}

// newRig builds a transport on a stub device; opts, if given, supplies
// its OnEvent.
func newRig(t testing.TB, opts ...virtiopci.Options) *rig {
	t.Helper()
	r := &rig{mmio: bus.New("mmio"), pio: bus.New("pio"), dev: &stubDev{}, router: pcitest.NewRouter(1 << 12)}
	var err error
	if r.mem, err = memory.New([]memory.Layout{{GPA: 0, Size: 1 << 20}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.mem.Close() })
	if r.root, err = pci.NewRoot(pci.RootConfig{MMIO: r.mmio, PIO: r.pio,
		MMIO32: pci.Window{Base: 0xc0000000, Size: 1 << 28}, PIOWindow: pci.Window{Base: 0x1000, Size: 0x1000}}); err != nil {
		t.Fatal(err)
	}
	r.pio.Register(pci.ConfigAddressPort, pci.ConfigPortsSize, r.root.ConfigPorts())
	o := virtiopci.Options{Router: r.router, INTx: pcitest.NewLine()}
	if len(opts) > 0 {
		o.OnEvent = opts[0].OnEvent
	}
	if r.tr, err = virtiopci.New(r.dev, r.mem, o); err != nil {
		t.Fatal(err)
	}
	if err := r.root.Add(pci.BDF{Device: 2}, r.tr); err != nil {
		t.Fatal(err)
	}
	if r.g, err = virtiopcitest.Probe(r.mmio, r.pio, r.mem, pci.BDF{Device: 2}); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestCapabilities(t *testing.T) {
	r := newRig(t)
	g := r.g
	if id := g.CF8.Read(g.BDF, 0, 4); id != (0x1040+2)<<16|0x1af4 {
		t.Errorf("id %#x", id)
	}
	if cl := g.CF8.Read(g.BDF, pci.RegRevisionID, 4); cl>>8 != 0x010000 || cl&0xff != 1 {
		t.Errorf("class/revision %#x", cl)
	}
	if sub := g.CF8.Read(g.BDF, pci.RegSubsystemVendorID, 4); sub != 0x1100<<16|0x1af4 {
		t.Errorf("subsystem %#x", sub)
	}
	bar := r.tr.BARSize()
	want := map[uint8]uint32{virtiopci.CapCommonCfg: 0x3c, virtiopci.CapNotifyCfg: 12, virtiopci.CapISRCfg: 4, virtiopci.CapDeviceCfg: 0x1000}
	for typ, length := range want {
		c, ok := g.Caps[typ]
		if !ok {
			t.Errorf("capability %d missing", typ)
			continue
		}
		if c.BAR != 0 || c.Length != length || uint64(c.Offset)+uint64(c.Length) > bar {
			t.Errorf("capability %d: %+v (BAR size %#x)", typ, c, bar)
		}
		capLen := g.CF8.Read(g.BDF, c.ConfigOffset+2, 1)
		if typ == virtiopci.CapNotifyCfg && capLen != 20 || typ != virtiopci.CapNotifyCfg && capLen != 16 {
			t.Errorf("capability %d cap_len %d", typ, capLen)
		}
	}
	if g.NotifyMult != 4 {
		t.Errorf("notify_off_multiplier %d", g.NotifyMult)
	}
	if _, ok := g.Caps[virtiopci.CapPCICfg]; !ok {
		t.Error("no PCI cfg access capability")
	}
	if g.MSIXVectors() != 4 {
		t.Errorf("MSI-X vectors %d", g.MSIXVectors())
	}
	// Distinct notify addresses per queue.
	seen := map[uint64]bool{}
	for q := 0; q < 3; q++ {
		a := g.NotifyAddr(q)
		if seen[a] {
			t.Errorf("queue %d shares notify address %#x", q, a)
		}
		seen[a] = true
		if ta, _ := r.tr.NotifyAddr(q); ta != a {
			t.Errorf("queue %d: transport says %#x, driver %#x", q, ta, a)
		}
	}
}

// TestPCICfgWindow reads and writes BAR 0 through VIRTIO_PCI_CAP_PCI_CFG.
func TestPCICfgWindow(t *testing.T) {
	r := newRig(t)
	g := r.g
	c := g.Caps[virtiopci.CapPCICfg].ConfigOffset
	// Read num_queues (common cfg 0x12, 2 bytes) through the window.
	g.CF8.Write(g.BDF, c+4, 1, 0)
	g.CF8.Write(g.BDF, c+8, 4, 0x12)
	g.CF8.Write(g.BDF, c+12, 4, 2)
	if v := g.CF8.Read(g.BDF, c+16, 4); v&0xffff != 3 {
		t.Errorf("num_queues through window = %#x", v)
	}
	// Write device config byte 3 through it.
	g.CF8.Write(g.BDF, c+8, 4, virtiopci.DeviceOffset+3)
	g.CF8.Write(g.BDF, c+12, 4, 1)
	g.CF8.Write(g.BDF, c+16, 4, 0xab)
	if v := g.ReadDeviceConfig(3, 1); v != 0xab {
		t.Errorf("device config byte 3 = %#x", v)
	}
	// A bad length or BAR reads zero and writes nothing.
	g.CF8.Write(g.BDF, c+12, 4, 3)
	g.CF8.Write(g.BDF, c+16, 4, 0xcd)
	if v := g.ReadDeviceConfig(3, 1); v != 0xab {
		t.Errorf("3-byte window wrote: %#x", v)
	}
	g.CF8.Write(g.BDF, c+4, 1, 5)
	g.CF8.Write(g.BDF, c+12, 4, 1)
	if v := g.CF8.Read(g.BDF, c+16, 4); v != 0 {
		t.Errorf("BAR5 window read %#x", v)
	}
}

func TestCommonConfigWidthsAndFreeze(t *testing.T) {
	r := newRig(t)
	g := r.g
	if err := g.Negotiate(virtio.FeatureVersion1 | 1<<5); err != nil {
		t.Fatal(err)
	}
	// 8-byte access to queue_desc.
	g.WriteCommon(virtiopcitest.QueueSelect, 2, 1)
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], 0x1234_5678_9abc_def0)
	if !r.mmio.Write(g.BAR+virtiopcitest.QueueDesc, b[:]) {
		t.Fatal("unclaimed")
	}
	if v := g.ReadCommon(virtiopcitest.QueueDesc, 4) | g.ReadCommon(virtiopcitest.QueueDesc+4, 4)<<32; v != 0x1234_5678_9abc_def0 {
		t.Errorf("queue_desc %#x", v)
	}
	// Byte writes to a 16-bit register.
	g.WriteCommon(virtiopcitest.QueueSize, 1, 0x10)
	if v := g.ReadCommon(virtiopcitest.QueueSize, 2); v != 0x10 {
		t.Errorf("queue_size %#x", v)
	}
	if v := g.ReadCommon(virtiopcitest.QueueSize+1, 1); v != 0 {
		t.Errorf("queue_size high byte %#x", v)
	}
	if v := g.ReadCommon(virtiopcitest.QueueNotifyOff, 2); v != 1 {
		t.Errorf("queue_notify_off %d", v)
	}
	// Enabled queues are frozen.
	g.WriteCommon(virtiopcitest.QueueEnable, 2, 1)
	g.WriteCommon(virtiopcitest.QueueSize, 2, 0x20)
	if v := g.ReadCommon(virtiopcitest.QueueSize, 2); v != 0x10 {
		t.Errorf("queue_size changed after enable: %#x", v)
	}
	g.WriteCommon(virtiopcitest.QueueEnable, 2, 0)
	if v := g.ReadCommon(virtiopcitest.QueueEnable, 2); v != 1 {
		t.Error("queue disabled by writing 0")
	}
	// Read-only registers.
	g.WriteCommon(virtiopcitest.NumQueues, 2, 9)
	g.WriteCommon(virtiopcitest.DeviceFeatureSelect, 4, 0)
	g.WriteCommon(virtiopcitest.DeviceFeature, 4, 0)
	if g.ReadCommon(virtiopcitest.NumQueues, 2) != 3 || g.ReadCommon(virtiopcitest.DeviceFeature, 4) != 1<<5|1<<28|1<<29 {
		t.Error("read-only register changed")
	}
	// A queue with a bad ring address: NEEDS_RESET at DRIVER_OK.
	g.SetStatus(virtio.StatusDriverOK)
	if g.Status()&virtio.StatusDeviceNeedsReset == 0 {
		t.Error("queue with desc outside RAM accepted")
	}
	r.dev.mu.Lock()
	n := len(r.dev.activations)
	r.dev.mu.Unlock()
	if n != 0 {
		t.Error("device activated with a bad queue")
	}
}

func TestActivateAndReset(t *testing.T) {
	r := newRig(t)
	g := r.g
	if err := g.Negotiate(virtio.FeatureVersion1 | virtio.FeatureEventIdx); err != nil {
		t.Fatal(err)
	}
	if _, err := g.SetupQueue(virtiopcitest.QueueConfig{Index: 2, Vector: virtiopci.NoVector, Base: 0x10000, DataSize: 0x1000}); err != nil {
		t.Fatal(err)
	}
	g.SetStatus(virtio.StatusDriverOK)
	r.dev.mu.Lock()
	if len(r.dev.activations) != 1 {
		t.Fatalf("%d activations", len(r.dev.activations))
	}
	a := r.dev.activations[0]
	r.dev.mu.Unlock()
	if a.Features != virtio.FeatureVersion1|virtio.FeatureEventIdx || len(a.Queues) != 3 || a.Queues[0] != nil || a.Queues[1] != nil || a.Queues[2] == nil {
		t.Fatalf("activation %+v", a)
	}
	if a.Queues[2].Config().Size != 32 {
		t.Errorf("queue size %d", a.Queues[2].Config().Size)
	}
	// Notify reaches the queue's kick channel and nothing else.
	g.Kick(2)
	select {
	case <-a.Queues[2].Kicks():
	default:
		t.Error("kick not delivered")
	}
	// Config change: generation bumps.
	gen := g.ReadCommon(virtiopcitest.ConfigGeneration, 1)
	a.ConfigChanged()
	if g.ReadCommon(virtiopcitest.ConfigGeneration, 1) == gen {
		t.Error("config_generation unchanged")
	}
	if isr := g.ReadISR(); isr != 2 {
		t.Errorf("ISR after config change (INTx mode) = %#x", isr)
	}
	if err := g.Reset(); err != nil {
		t.Fatal(err)
	}
	r.dev.mu.Lock()
	resets := r.dev.resets
	r.dev.mu.Unlock()
	if resets != 1 {
		t.Errorf("%d resets", resets)
	}
	g.WriteCommon(virtiopcitest.QueueSelect, 2, 2)
	if g.ReadCommon(virtiopcitest.QueueEnable, 2) != 0 || g.ReadCommon(virtiopcitest.QueueSize, 2) != 32 ||
		g.ReadCommon(virtiopcitest.QueueMSIXVector, 2) != virtiopci.NoVector {
		t.Error("queue state survived reset")
	}
	// A failing Activate means NEEDS_RESET.
	r.dev.mu.Lock()
	r.dev.fail = errors.New("no backend")
	r.dev.mu.Unlock()
	g.Negotiate(virtio.FeatureVersion1)
	g.SetStatus(virtio.StatusDriverOK)
	if g.Status()&virtio.StatusDeviceNeedsReset == 0 {
		t.Error("failed activation without NEEDS_RESET")
	}
}

func TestExpressOption(t *testing.T) {
	mem, err := memory.New([]memory.Layout{{GPA: 0, Size: 1 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	tr, err := virtiopci.New(&stubDev{}, mem, virtiopci.Options{Express: true})
	if err != nil {
		t.Fatal(err)
	}
	if tr.Size() != pci.ExtendedConfigSize {
		t.Errorf("config size %d", tr.Size())
	}
	// Walk the list: the PCIe capability must be on it, after the virtio ones.
	b := make([]byte, 1)
	tr.ReadConfig(pci.RegCapabilitiesPtr, b)
	found := false
	for p, n := int(b[0]), 0; p != 0 && n < 48; n++ {
		tr.ReadConfig(p, b)
		if b[0] == pci.CapExpress {
			found = true
		}
		tr.ReadConfig(p+1, b)
		p = int(b[0])
	}
	if !found {
		t.Error("no PCIe capability")
	}
}
