package pci_test

import (
	"encoding/binary"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/viovmm/vio/bus"
	"github.com/viovmm/vio/pci"
	"github.com/viovmm/vio/pci/pcitest"
)

// regDev is a BAR handler that records accesses.
type regDev struct {
	mu     sync.Mutex
	name   string
	writes []uint64
	mem    [256]byte
}

func (d *regDev) Read(off uint64, data []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(data, d.mem[off%256:])
}

func (d *regDev) Write(off uint64, data []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.writes = append(d.writes, off)
	copy(d.mem[off%256:], data)
}

// testFn is a function with a 32-bit, a 64-bit and an I/O BAR and MSI-X
// in BAR 4's upper half... kept simple: MSI-X table/PBA in BAR 2.
type testFn struct {
	*pci.Config
	msix *pci.MSIX
	b0   *regDev
	b4   *regDev

	mu     sync.Mutex
	events []string
}

type msixBAR struct{ m *pci.MSIX }

func (b msixBAR) Read(off uint64, data []byte) {
	if off >= 0x800 {
		b.m.ReadPBA(off-0x800, data)
		return
	}
	b.m.ReadTable(off, data)
}

func (b msixBAR) Write(off uint64, data []byte) {
	if off >= 0x800 {
		b.m.WritePBA(off-0x800, data)
		return
	}
	b.m.WriteTable(off, data)
}

func (f *testFn) BARMapped(r pci.Region, mapped bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := "unmap"
	if mapped {
		s = "map"
	}
	f.events = append(f.events, s)
}

func newTestFn(t testing.TB, router pci.MSIRouter) *testFn {
	t.Helper()
	f := &testFn{
		Config: pci.NewConfig(pci.Header{VendorID: 0x1234, DeviceID: 0x5678, Class: 0xff0000, Revision: 2, InterruptPin: 1,
			SubsystemVendorID: 0xaaaa, SubsystemID: 0xbbbb}),
		b0: &regDev{name: "b0"}, b4: &regDev{name: "b4"},
	}
	must(t, f.SetBAR(0, pci.BAR{Kind: pci.BARMem32, Size: 0x1000, Device: f.b0}))
	var err error
	f.msix, err = pci.NewMSIX(f.Config, 3, pci.MSIXLocation{BAR: 2, Offset: 0}, pci.MSIXLocation{BAR: 2, Offset: 0x800}, router)
	must(t, err)
	must(t, f.SetBAR(2, pci.BAR{Kind: pci.BARMem64, Size: 0x4000, Device: msixBAR{f.msix}}))
	must(t, f.SetBAR(4, pci.BAR{Kind: pci.BARIO, Size: 0x20, Device: f.b4}))
	if _, err := f.AddCapability(pci.CapVendor, []byte{4, 0}, nil, pci.CapabilityHooks{}); err != nil {
		t.Fatal(err)
	}
	return f
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

type rig struct {
	mmio, pio *bus.Bus
	root      *pci.Root
	cf8       pcitest.CF8
}

const ecamBase = 0xe0000000

func newRig(t testing.TB) *rig {
	t.Helper()
	r := &rig{mmio: bus.New("mmio"), pio: bus.New("pio")}
	var err error
	r.root, err = pci.NewRoot(pci.RootConfig{
		MMIO: r.mmio, PIO: r.pio,
		MMIO32:    pci.Window{Base: 0xc0000000, Size: 0x10000000},
		MMIO64:    pci.Window{Base: 1 << 40, Size: 1 << 32},
		PIOWindow: pci.Window{Base: 0x1000, Size: 0x1000},
	})
	must(t, err)
	must(t, r.pio.Register(pci.ConfigAddressPort, pci.ConfigPortsSize, r.root.ConfigPorts()))
	must(t, r.mmio.Register(ecamBase, pci.ECAMSize, r.root.ECAM()))
	r.cf8 = pcitest.CF8{PIO: r.pio}
	return r
}

func TestHostBridgeAndAbsentDevices(t *testing.T) {
	r := newRig(t)
	hb := pci.BDF{}
	if v := r.cf8.Read(hb, 0, 4); v != pci.HostBridgeDevice<<16|pci.HostBridgeVendor {
		t.Errorf("00.0 id = %#x", v)
	}
	if v := r.cf8.Read(hb, pci.RegClassCode-1, 4) >> 8; v != pci.ClassHostBridge {
		t.Errorf("00.0 class = %#x", v)
	}
	for _, a := range []pci.BDF{{Device: 1}, {Device: 0, Function: 1}, {Bus: 1}, {Device: 31, Function: 7}} {
		if v := r.cf8.Read(a, 0, 4); v != 0xffffffff {
			t.Errorf("%s reads %#x, want all ones", a, v)
		}
	}
	// CONFIG_ADDRESS reads back what was written (reserved bits dropped).
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], 0x80001803)
	r.pio.Write(0xcf8, b[:])
	r.pio.Read(0xcf8, b[:])
	if v := binary.LittleEndian.Uint32(b[:]); v != 0x80001800 {
		t.Errorf("CONFIG_ADDRESS = %#x", v)
	}
	// With the enable bit clear, data port reads float high.
	binary.LittleEndian.PutUint32(b[:], 0)
	r.pio.Write(0xcf8, b[:])
	r.pio.Read(0xcfc, b[:])
	if v := binary.LittleEndian.Uint32(b[:]); v != 0xffffffff {
		t.Errorf("disabled CONFIG_DATA = %#x", v)
	}
}

func TestIdentityReadOnlyAndByteAccess(t *testing.T) {
	r := newRig(t)
	f := newTestFn(t, pcitest.NewRouter(8))
	a := pci.BDF{Device: 3}
	must(t, r.root.Add(a, f))
	r.cf8.Write(a, 0, 4, 0)
	if v := r.cf8.Read(a, 0, 4); v != 0x56781234 {
		t.Errorf("vendor/device after write = %#x", v)
	}
	// 1- and 2-byte accesses at every lane of CONFIG_DATA.
	if v := r.cf8.Read(a, 1, 1); v != 0x12 {
		t.Errorf("byte 1 = %#x", v)
	}
	if v := r.cf8.Read(a, 2, 2); v != 0x5678 {
		t.Errorf("word 2 = %#x", v)
	}
	if v := r.cf8.Read(a, pci.RegSubsystemVendorID, 4); v != 0xbbbbaaaa {
		t.Errorf("subsystem = %#x", v)
	}
	if v := r.cf8.Read(a, pci.RegInterruptPin, 1); v != 1 {
		t.Errorf("pin = %d", v)
	}
	r.cf8.Write(a, pci.RegInterruptLine, 1, 11)
	r.cf8.Write(a, pci.RegInterruptPin, 1, 3)
	if v := r.cf8.Read(a, pci.RegInterruptLine, 2); v != 0x010b {
		t.Errorf("line/pin = %#x", v)
	}
	if v := r.cf8.Read(a, pci.RegStatus, 2); v&pci.StatusCapList == 0 {
		t.Errorf("status %#x lacks capability list bit", v)
	}
	// ECAM sees the same space.
	var b [4]byte
	r.mmio.Read(ecamBase+3<<15+pci.RegSubsystemVendorID, b[:])
	if v := binary.LittleEndian.Uint32(b[:]); v != 0xbbbbaaaa {
		t.Errorf("ECAM subsystem = %#x", v)
	}
	var q [8]byte
	r.mmio.Read(ecamBase+3<<15, q[:])
	if v := binary.LittleEndian.Uint64(q[:]); uint32(v) != 0x56781234 {
		t.Errorf("ECAM 8-byte read = %#x", v)
	}
	r.mmio.Read(ecamBase+4<<15, b[:])
	if v := binary.LittleEndian.Uint32(b[:]); v != 0xffffffff {
		t.Errorf("ECAM absent = %#x", v)
	}
}

func TestBARSizingAndAssignment(t *testing.T) {
	r := newRig(t)
	f := newTestFn(t, pcitest.NewRouter(8))
	a := pci.BDF{Device: 2}
	must(t, r.root.Add(a, f))

	// Firmware-style assignment: naturally aligned, inside the windows.
	b0 := r.cf8.Read(a, pci.RegBAR0, 4)
	if b0&0xfff != 0 || b0 < 0xc0000000 || b0 >= 0xd0000000 {
		t.Errorf("BAR0 = %#x", b0)
	}
	b2 := uint64(r.cf8.Read(a, pci.RegBAR0+8, 4)) | uint64(r.cf8.Read(a, pci.RegBAR0+12, 4))<<32
	if b2&0xf != 4 || b2&^0xf < 1<<40 || b2&0x3ff0 != 0 {
		t.Errorf("BAR2 = %#x", b2)
	}
	b4 := r.cf8.Read(a, pci.RegBAR0+16, 4)
	if b4&3 != 1 || b4&^3 < 0x1000 || b4&^3 >= 0x2000 || b4&0x1f != 1 {
		t.Errorf("BAR4 = %#x", b4)
	}

	// Linux's probe: write all ones, read the size mask, restore.
	probe := func(off int) uint32 {
		old := r.cf8.Read(a, off, 4)
		r.cf8.Write(a, off, 4, 0xffffffff)
		v := r.cf8.Read(a, off, 4)
		r.cf8.Write(a, off, 4, old)
		if got := r.cf8.Read(a, off, 4); got != old {
			t.Errorf("BAR at %#x not restored: %#x != %#x", off, got, old)
		}
		return v
	}
	if v := probe(pci.RegBAR0); v != 0xfffff000 {
		t.Errorf("BAR0 probe = %#x", v)
	}
	if v := probe(pci.RegBAR0 + 4); v != 0 {
		t.Errorf("unused BAR1 probe = %#x", v)
	}
	if v := probe(pci.RegBAR0 + 8); v != 0xffffc004 {
		t.Errorf("64-bit BAR2 low probe = %#x", v)
	}
	if v := probe(pci.RegBAR0 + 12); v != 0xffffffff {
		t.Errorf("64-bit BAR2 high probe = %#x", v)
	}
	if v := probe(pci.RegBAR0 + 16); v != 0xffffffe1 {
		t.Errorf("I/O BAR4 probe = %#x", v)
	}
	if v := probe(pci.RegROMAddress); v != 0 {
		t.Errorf("ROM probe = %#x", v)
	}
}

func TestRemapOnCommandAndMove(t *testing.T) {
	r := newRig(t)
	f := newTestFn(t, pcitest.NewRouter(8))
	a := pci.BDF{Device: 5}
	must(t, r.root.Add(a, f))
	base := uint64(r.cf8.Read(a, pci.RegBAR0, 4))
	io := uint64(r.cf8.Read(a, pci.RegBAR0+16, 4) &^ 3)

	one := []byte{0x5a}
	if r.mmio.Write(base, one) {
		t.Fatal("BAR0 decoded with command.MEM clear")
	}
	r.cf8.Write(a, pci.RegCommand, 2, pci.CommandMemory)
	if !r.mmio.Write(base+0x10, one) {
		t.Fatal("BAR0 not mapped after command.MEM")
	}
	if r.pio.Write(io, one) {
		t.Fatal("I/O BAR decoded with command.IO clear")
	}
	if len(r.root.Mapped(f)) != 2 {
		t.Errorf("mapped = %+v", r.root.Mapped(f))
	}
	r.cf8.Write(a, pci.RegCommand, 2, pci.CommandMemory|pci.CommandIO)
	if !r.pio.Write(io+1, one) {
		t.Fatal("I/O BAR not mapped")
	}
	// Move BAR0 while decoding: the old range goes away, the new appears.
	newBase := uint64(0xc8000000)
	r.cf8.Write(a, pci.RegBAR0, 4, uint32(newBase))
	if r.mmio.Write(base, one) {
		t.Error("old BAR0 range still decoded")
	}
	if !r.mmio.Write(newBase+0xfff, one) || r.mmio.Write(newBase+0x1000, one) {
		t.Error("new BAR0 range wrong")
	}
	// Moving onto another function's BAR (or the ECAM window) conflicts:
	// the BAR stays unmapped rather than stealing the range.
	r.cf8.Write(a, pci.RegBAR0, 4, ecamBase)
	var b [4]byte
	r.mmio.Read(ecamBase, b[:])
	if binary.LittleEndian.Uint32(b[:]) != pci.HostBridgeDevice<<16|pci.HostBridgeVendor {
		t.Error("conflicting BAR stole the ECAM window")
	}
	r.cf8.Write(a, pci.RegBAR0, 4, uint32(newBase))
	r.cf8.Write(a, pci.RegCommand, 2, 0)
	if r.mmio.Write(newBase, one) || r.pio.Write(io, one) {
		t.Error("still decoded after clearing command")
	}
	if len(r.root.Mapped(f)) != 0 {
		t.Errorf("mapped after disable = %+v", r.root.Mapped(f))
	}
	f.mu.Lock()
	ev := append([]string(nil), f.events...)
	f.mu.Unlock()
	// map b0, map b2, map b4, unmap b0, map b0@new, unmap b0, map b0@new, unmap b0, unmap b2, unmap b4
	maps, unmaps := 0, 0
	for _, e := range ev {
		if e == "map" {
			maps++
		} else {
			unmaps++
		}
	}
	if maps != unmaps || maps != 5 {
		t.Errorf("BARMapped events %v", ev)
	}
	f.b0.mu.Lock()
	defer f.b0.mu.Unlock()
	if len(f.b0.writes) != 2 || f.b0.writes[0] != 0x10 || f.b0.writes[1] != 0xfff {
		t.Errorf("BAR0 device saw writes at %#x", f.b0.writes)
	}
}

func TestCapabilityList(t *testing.T) {
	c := pci.NewConfig(pci.Header{VendorID: 1})
	var offs []int
	for i := 0; i < 3; i++ {
		off, err := c.AddCapability(pci.CapVendor, make([]byte, 5+i), nil, pci.CapabilityHooks{})
		must(t, err)
		offs = append(offs, off)
	}
	b := make([]byte, 1)
	c.ReadConfig(pci.RegCapabilitiesPtr, b)
	p := int(b[0])
	for i, want := range offs {
		if p != want || p%4 != 0 || p < 0x40 {
			t.Fatalf("cap %d at %#x, want %#x", i, p, want)
		}
		c.ReadConfig(p+1, b)
		p = int(b[0])
	}
	if p != 0 {
		t.Errorf("list not terminated: %#x", p)
	}
	if _, err := c.AddCapability(pci.CapVendor, make([]byte, 250), nil, pci.CapabilityHooks{}); !errors.Is(err, pci.ErrNoCapSpace) {
		t.Errorf("oversized capability: %v", err)
	}
}

func TestStatusWriteOneToClear(t *testing.T) {
	c := pci.NewConfig(pci.Header{VendorID: 1})
	c.SetBytes(pci.RegStatus, []byte{0, 0x80 | 0x01}) // parity error detected (bit 15) | bit 8
	c.WriteConfig(pci.RegStatus, []byte{0, 0x80})
	b := make([]byte, 2)
	c.ReadConfig(pci.RegStatus, b)
	if b[1] != 0x01 {
		t.Errorf("status high byte = %#x, want 0x01", b[1])
	}
}

func TestINTx(t *testing.T) {
	c := pci.NewConfig(pci.Header{VendorID: 1, InterruptPin: 1})
	l := pcitest.NewLine()
	c.SetINTxLine(l)
	must(t, c.SetINTx(true))
	if h, _ := l.Level(); !h {
		t.Fatal("line not asserted")
	}
	st := c.Bytes(pci.RegStatus, 1)[0]
	if st&pci.StatusINTx == 0 {
		t.Error("status.INTx clear while asserted")
	}
	// INTx disable masks the line but not the status bit.
	c.WriteConfig(pci.RegCommand, []byte{0, pci.CommandINTxDisable >> 8})
	if h, _ := l.Level(); h {
		t.Error("line high with INTx disabled")
	}
	if c.Bytes(pci.RegStatus, 1)[0]&pci.StatusINTx == 0 {
		t.Error("status.INTx cleared by disable")
	}
	c.WriteConfig(pci.RegCommand, []byte{0, 0})
	if h, rises := l.Level(); !h || rises != 2 {
		t.Errorf("after re-enable: high=%v rises=%d", h, rises)
	}
	must(t, c.SetINTx(false))
	if h, _ := l.Level(); h {
		t.Error("line still high")
	}
}

// msixRig programs MSI-X through the guest's path: config space for the
// capability, BAR MMIO for the table.
type msixRig struct {
	*rig
	f      *testFn
	a      pci.BDF
	router *pcitest.Router
	table  uint64
	cap    int
}

func newMSIXRig(t *testing.T) *msixRig {
	r := newRig(t)
	m := &msixRig{rig: r, router: pcitest.NewRouter(16), a: pci.BDF{Device: 4}}
	m.f = newTestFn(t, m.router)
	must(t, r.root.Add(m.a, m.f))
	m.cap = r.cf8.FindCapability(m.a, pci.CapMSIX, 0)
	if m.cap == 0 {
		t.Fatal("no MSI-X capability")
	}
	ctl := r.cf8.Read(m.a, m.cap+2, 2)
	if ctl&0x7ff != 2 {
		t.Fatalf("table size field %#x", ctl)
	}
	tbl := r.cf8.Read(m.a, m.cap+4, 4)
	pba := r.cf8.Read(m.a, m.cap+8, 4)
	if tbl != 2 || pba != 0x802 {
		t.Fatalf("table %#x pba %#x", tbl, pba)
	}
	m.table = uint64(r.cf8.Read(m.a, pci.RegBAR0+8, 4)&^0xf) | uint64(r.cf8.Read(m.a, pci.RegBAR0+12, 4))<<32
	r.cf8.Write(m.a, pci.RegCommand, 2, pci.CommandMemory|pci.CommandBusMaster)
	return m
}

func (m *msixRig) w32(off uint64, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	if !m.mmio.Write(m.table+off, b[:]) {
		panic("table not mapped")
	}
}

func (m *msixRig) r32(off uint64) uint32 {
	var b [4]byte
	m.mmio.Read(m.table+off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

func (m *msixRig) program(v int, addr uint64, data uint32, masked bool) {
	o := uint64(v) * 16
	m.w32(o, uint32(addr))
	m.w32(o+4, uint32(addr>>32))
	m.w32(o+8, data)
	ctl := uint32(0)
	if masked {
		ctl = 1
	}
	m.w32(o+12, ctl)
}

func (m *msixRig) control(v uint16) { m.cf8.Write(m.a, m.cap+2, 2, uint32(v)) }

func (m *msixRig) expectNone(t *testing.T) {
	t.Helper()
	if n := m.router.Pending(); n != 0 {
		t.Fatalf("%d unexpected messages", n)
	}
}

func (m *msixRig) expect(t *testing.T, want pcitest.Message) {
	t.Helper()
	got, err := m.router.Wait(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("message %+v, want %+v", got, want)
	}
}

func TestMSIX(t *testing.T) {
	m := newMSIXRig(t)
	// Reset state: vectors masked, MSI-X disabled.
	if v := m.r32(12); v != 1 {
		t.Errorf("vector 0 control at reset = %#x", v)
	}
	if err := m.f.msix.Notify(0); !errors.Is(err, pci.ErrMSIXDisabled) {
		t.Errorf("Notify while disabled: %v", err)
	}
	if err := m.f.msix.Notify(3); !errors.Is(err, pci.ErrBadVector) {
		t.Errorf("Notify(3): %v", err)
	}
	m.program(0, 0xfee00000, 0x4021, false)
	m.program(1, 0xfee01000, 0x4022, true)
	if v := m.r32(16 + 8); v != 0x4022 {
		t.Errorf("table data readback %#x", v)
	}
	m.control(pci.MSIXEnable)
	if !m.f.msix.Enabled() {
		t.Fatal("not enabled")
	}
	must(t, m.f.msix.Notify(0))
	m.expect(t, pcitest.Message{Vector: 0, Addr: 0xfee00000, Data: 0x4021})

	// Masked vector: pending, then delivered on unmask.
	must(t, m.f.msix.Notify(1))
	m.expectNone(t)
	if !m.f.msix.Pending(1) {
		t.Fatal("vector 1 not pending")
	}
	var pba [8]byte
	m.mmio.Read(m.table+0x800, pba[:])
	if pba[0] != 2 {
		t.Errorf("PBA = %#x", pba[0])
	}
	m.w32(16+12, 0)
	m.expect(t, pcitest.Message{Vector: 1, Addr: 0xfee01000, Data: 0x4022})
	if m.f.msix.Pending(1) {
		t.Error("pending bit survived delivery")
	}

	// Function mask: both pend, both delivered when the function unmasks.
	m.control(pci.MSIXEnable | pci.MSIXFunctionMask)
	must(t, m.f.msix.Notify(0))
	must(t, m.f.msix.Notify(1))
	must(t, m.f.msix.Notify(1)) // pending is a bit, not a count
	m.expectNone(t)
	m.control(pci.MSIXEnable)
	m.expect(t, pcitest.Message{Vector: 0, Addr: 0xfee00000, Data: 0x4021})
	m.expect(t, pcitest.Message{Vector: 1, Addr: 0xfee01000, Data: 0x4022})
	m.expectNone(t)

	// Reprogramming a live vector reroutes it.
	m.w32(8, 0x4030)
	must(t, m.f.msix.Notify(0))
	m.expect(t, pcitest.Message{Vector: 0, Addr: 0xfee00000, Data: 0x4030})

	// Route failures are reported, not hidden.
	m.router.FailRoutes(errors.New("no GSI left"))
	m.w32(8, 0x4031)
	if err := m.f.msix.Notify(0); !errors.Is(err, pci.ErrNoRoute) {
		t.Errorf("Notify with failing route: %v", err)
	}
	if m.f.msix.Errors() == 0 {
		t.Error("route failure not counted")
	}
	// Writes outside the table and to the PBA are ignored.
	m.w32(0x7f0, 0xdead)
	var z [4]byte
	m.mmio.Write(m.table+0x800, []byte{0xff})
	m.mmio.Read(m.table+0x800, z[:])
	if z[0] != 0 {
		t.Errorf("PBA after write = %#x", z[0])
	}
}

func TestExpressAndExtendedCapabilities(t *testing.T) {
	c := pci.NewConfig(pci.Header{VendorID: 1, Express: true})
	off, err := pci.AddExpressCapability(c, pci.ExpressIntegratedEndpoint)
	must(t, err)
	b := c.Bytes(off, 4)
	if b[0] != pci.CapExpress || b[2] != 0x92 {
		t.Errorf("PCIe capability header % x", b)
	}
	// Device control is writable, device status is not.
	c.WriteConfig(off+8, []byte{0x20, 0x50, 0xff, 0xff})
	if v := binary.LittleEndian.Uint32(c.Bytes(off+8, 4)); v != 0x5020 {
		t.Errorf("devctl/devsta = %#x", v)
	}
	e1, err := c.AddExtendedCapability(0x10, 1, make([]byte, 0x3c), nil, pci.CapabilityHooks{}) // SR-IOV-sized
	must(t, err)
	e2, err := c.AddExtendedCapability(0x0d, 1, make([]byte, 4), nil, pci.CapabilityHooks{})
	must(t, err)
	if e1 != 0x100 {
		t.Errorf("first extended capability at %#x", e1)
	}
	h := make([]byte, 4)
	c.ReadConfig(e1, h)
	if v := binary.LittleEndian.Uint32(h); v != 0x10|1<<16|uint32(e2)<<20 {
		t.Errorf("extended header %#x (next should be %#x)", v, e2)
	}
	c.ReadConfig(e2, h)
	if v := binary.LittleEndian.Uint32(h); v>>20 != 0 {
		t.Errorf("last extended capability points on: %#x", v)
	}
	conv := pci.NewConfig(pci.Header{VendorID: 1})
	if _, err := conv.AddExtendedCapability(0x10, 1, nil, nil, pci.CapabilityHooks{}); !errors.Is(err, pci.ErrBadCapability) {
		t.Errorf("extended capability on conventional function: %v", err)
	}
	// Upper half of a 64-bit BAR reports nothing.
	must(t, c.SetBAR(0, pci.BAR{Kind: pci.BARMem64, Size: 1 << 20}))
	if b, _ := c.BAR(1); b.Kind != pci.BARUnused {
		t.Errorf("BAR1 kind %d", b.Kind)
	}
	if err := c.SetBAR(1, pci.BAR{Kind: pci.BARMem32, Size: 4096}); !errors.Is(err, pci.ErrBadBAR) {
		t.Errorf("BAR1 reuse: %v", err)
	}
}
