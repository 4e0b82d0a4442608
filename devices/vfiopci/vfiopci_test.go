package vfiopci

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/bus"
	"github.com/viovmm/vio/pci"
	"github.com/viovmm/vio/pci/pcitest"
	"github.com/viovmm/vio/vfio"
)

// fakeNVMe stands in for a VFIO device: an NVMe controller's
// configuration space (a PM capability, then MSI-X with 4 vectors, table
// at BAR0+0x2000, PBA at BAR0+0x3000) and a 16 KiB 64-bit BAR0 that
// records what reaches it.
type fakeNVMe struct {
	mu      sync.Mutex
	cfg     [256]byte
	bar0    [0x4000]byte
	barHits int
	irqs    [][]int32 // each SetIRQEventFDs call's fds (nil: disable)
	mmap    bool      // BAR0 may be mapped
	mapped  [][2]int64
}

func newFakeNVMe() *fakeNVMe {
	f := &fakeNVMe{}
	le := binary.LittleEndian
	le.PutUint16(f.cfg[0:], 0x8086)
	le.PutUint16(f.cfg[2:], 0x5845)
	f.cfg[pci.RegRevisionID] = 2
	f.cfg[pci.RegClassCode], f.cfg[pci.RegClassCode+1], f.cfg[pci.RegClassCode+2] = 0x02, 0x08, 0x01
	le.PutUint16(f.cfg[pci.RegStatus:], pci.StatusCapList)
	le.PutUint32(f.cfg[pci.RegBAR0:], 0x4) // 64-bit memory
	le.PutUint16(f.cfg[pci.RegSubsystemVendorID:], 0x1af4)
	le.PutUint16(f.cfg[pci.RegSubsystemID:], 0x1100)
	f.cfg[pci.RegCapabilitiesPtr] = 0x40
	f.cfg[0x40], f.cfg[0x41] = 0x01, 0x50 // power management, next 0x50
	f.cfg[0x50], f.cfg[0x51] = pci.CapMSIX, 0
	le.PutUint16(f.cfg[0x52:], 3) // 4 vectors
	le.PutUint32(f.cfg[0x54:], 0x2000|0)
	le.PutUint32(f.cfg[0x58:], 0x3000|0)
	return f
}

func (f *fakeNVMe) BDF() string { return "0000:00:04.0" }

func (f *fakeNVMe) Region(i int) vfio.Region {
	switch i {
	case vfio.RegionBAR0:
		r := vfio.Region{Index: i, Size: 0x4000, Flags: vfio.RegionRead | vfio.RegionWrite}
		if f.mmap {
			r.Flags |= vfio.RegionMmap
		}
		return r
	case vfio.RegionConfig:
		return vfio.Region{Index: i, Size: 256, Flags: vfio.RegionRead | vfio.RegionWrite}
	}
	return vfio.Region{Index: i}
}

func (f *fakeNVMe) mem(i int) []byte {
	switch i {
	case vfio.RegionBAR0:
		return f.bar0[:]
	case vfio.RegionConfig:
		return f.cfg[:]
	}
	return nil
}

// span is n bytes at off of region i, counting BAR accesses; f.mu held.
func (f *fakeNVMe) span(i int, off int64, n int) ([]byte, error) {
	m := f.mem(i)
	if off < 0 || int(off)+n > len(m) {
		return nil, errors.New("out of range")
	}
	if i == vfio.RegionBAR0 {
		f.barHits++
	}
	return m[off : int(off)+n], nil
}

func (f *fakeNVMe) ReadRegion(i int, off int64, p []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, err := f.span(i, off, len(p))
	copy(p, b)
	return err
}

func (f *fakeNVMe) WriteRegion(i int, off int64, p []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, err := f.span(i, off, len(p))
	copy(b, p)
	return err
}

// Mmap hands out fresh anonymous pages (Close unmaps them) and records
// which part of the BAR was asked for.
func (f *fakeNVMe) Mmap(i int, off int64, size int) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if i != vfio.RegionBAR0 || !f.mmap {
		return nil, errors.New("not mappable")
	}
	f.mapped = append(f.mapped, [2]int64{off, int64(size)})
	return unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
}

// slotRecorder is the VMM's side of direct mapping: it records the
// guest ranges in memory slots.
type slotRecorder struct {
	mu    sync.Mutex
	slots map[uint64]int // gpa → size
}

func (s *slotRecorder) MapMMIO(gpa uint64, host []byte) (func() error, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.slots == nil {
		s.slots = map[uint64]int{}
	}
	s.slots[gpa] = len(host)
	return func() error {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.slots, gpa)
		return nil
	}, nil
}

func (f *fakeNVMe) SetIRQEventFDs(index, start int, fds []int32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if index != vfio.IRQMSIX || start != 0 {
		return errors.New("unexpected interrupt kind")
	}
	f.irqs = append(f.irqs, fds)
	return nil
}

// rig puts the passed-through device at 00:04.0 of a root.
type rig struct {
	mmio, pio *bus.Bus
	root      *pci.Root
	cf8       pcitest.CF8
	router    *pcitest.Router
	phys      *fakeNVMe
	slots     *slotRecorder
	d         *Device
	a         pci.BDF
}

func newRig(t *testing.T, phys *fakeNVMe) *rig {
	t.Helper()
	r := &rig{mmio: bus.New("mmio"), pio: bus.New("pio"), router: pcitest.NewRouter(64), phys: phys, a: pci.BDF{Device: 4}, slots: &slotRecorder{}}
	var err error
	r.root, err = pci.NewRoot(pci.RootConfig{MMIO: r.mmio, PIO: r.pio,
		MMIO32: pci.Window{Base: 0xc0000000, Size: 1 << 28}, PIOWindow: pci.Window{Base: 0x1000, Size: 0x1000}})
	if err != nil {
		t.Fatal(err)
	}
	r.pio.Register(pci.ConfigAddressPort, pci.ConfigPortsSize, r.root.ConfigPorts())
	r.cf8 = pcitest.CF8{PIO: r.pio}
	if r.d, err = New(phys, r.router, r.slots); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.d.Close() })
	if err := r.root.Add(r.a, r.d); err != nil {
		t.Fatal(err)
	}
	return r
}

// TestPassthrough: the guest sees the device's identity and BAR with the
// MSI-X capability and nothing else of its list; the command register's
// enables reach the device; BAR accesses go to the device except the
// MSI-X table's; the device's interrupts reach the guest's vectors, held
// while masked and delivered on unmask; MSI-X off turns them off at the
// device.
func TestPassthrough(t *testing.T) {
	r := newRig(t, newFakeNVMe())
	if id := r.cf8.Read(r.a, 0, 4); id != 0x5845<<16|0x8086 {
		t.Errorf("identity %#x", id)
	}
	if cls := r.cf8.Read(r.a, 8, 4) >> 8; cls != 0x010802 {
		t.Errorf("class %#x", cls)
	}
	if r.cf8.FindCapability(r.a, 0x01, 0) != 0 {
		t.Error("the device's power management capability is visible")
	}
	msix := r.cf8.FindCapability(r.a, pci.CapMSIX, 0)
	if msix == 0 {
		t.Fatal("no MSI-X capability")
	}
	if ctl := r.cf8.Read(r.a, msix+2, 2); ctl&0x7ff != 3 {
		t.Errorf("MSI-X table size field %d, want 3", ctl&0x7ff)
	}
	lo := r.cf8.Read(r.a, pci.RegBAR0, 4)
	base := uint64(lo&^0xf) | uint64(r.cf8.Read(r.a, pci.RegBAR0+4, 4))<<32
	if lo&6 != 4 || base == 0 {
		t.Fatalf("BAR0 %#x: want a placed 64-bit BAR", lo)
	}
	r.cf8.Write(r.a, pci.RegCommand, 2, pci.CommandMemory|pci.CommandBusMaster)
	if cmd := binary.LittleEndian.Uint16(r.phys.cfg[pci.RegCommand:]); cmd != pci.CommandMemory|pci.CommandBusMaster|pci.CommandINTxDisable {
		t.Errorf("the device's command register %#x", cmd)
	}

	// A doorbell write reaches the device; the MSI-X table does not.
	r.mmio.Write(base+0x1000, []byte{1, 2, 3, 4})
	if got := r.phys.bar0[0x1000:0x1004]; string(got) != "\x01\x02\x03\x04" {
		t.Errorf("BAR0+0x1000 on the device: % x", got)
	}
	r.phys.mu.Lock()
	hits := r.phys.barHits
	r.phys.mu.Unlock()
	entry := func(v int, addr uint64, data uint32, masked bool) {
		var b [16]byte
		binary.LittleEndian.PutUint64(b[0:], addr)
		binary.LittleEndian.PutUint32(b[8:], data)
		if masked {
			b[12] = 1
		}
		r.mmio.Write(base+0x2000+uint64(v)*16, b[:])
	}
	entry(1, 0xfee00000, 0x41, false)
	r.phys.mu.Lock()
	if r.phys.barHits != hits || r.phys.bar0[0x2010] != 0 {
		t.Error("an MSI-X table write reached the device")
	}
	r.phys.mu.Unlock()

	r.cf8.Write(r.a, msix+2, 2, pci.MSIXEnable)
	r.phys.mu.Lock()
	calls := append([][]int32(nil), r.phys.irqs...)
	r.phys.mu.Unlock()
	if len(calls) != 1 || len(calls[0]) != 4 {
		t.Fatalf("SET_IRQS calls %v: want one binding 4 eventfds", calls)
	}
	signal := func(v int) {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], 1)
		if _, err := unix.Write(int(calls[0][v]), b[:]); err != nil {
			t.Fatal(err)
		}
	}
	signal(1)
	m, err := r.router.Wait(5 * time.Second)
	if err != nil || m.Vector != 1 || m.Data != 0x41 {
		t.Fatalf("the device's vector 1 reached the guest as %+v (%v)", m, err)
	}
	entry(1, 0xfee00000, 0x41, true)
	signal(1)
	for deadline := time.Now().Add(5 * time.Second); !r.d.MSIX().Pending(1); {
		if time.Now().After(deadline) {
			t.Fatal("a masked vector's interrupt was not held pending")
		}
		time.Sleep(time.Millisecond) // the relay goroutine runs on its own
	}
	if r.router.Pending() != 0 {
		t.Error("a masked vector was delivered")
	}
	if s := r.d.Stats(); s.Interrupts != 2 || s.Held != 1 || s.Errors != 0 {
		t.Errorf("stats %+v after one interrupt delivered and one held", s)
	}
	entry(1, 0xfee00000, 0x41, false)
	if m, err := r.router.Wait(5 * time.Second); err != nil || m.Vector != 1 {
		t.Fatalf("the pending vector was not delivered on unmask: %+v %v", m, err)
	}
	r.cf8.Write(r.a, msix+2, 2, 0)
	r.phys.mu.Lock()
	n := len(r.phys.irqs)
	last := r.phys.irqs[n-1]
	r.phys.mu.Unlock()
	if n != 2 || last != nil {
		t.Errorf("MSI-X off: SET_IRQS calls %d, last %v; want a second one disabling", n, last)
	}
}

// TestRefused: a device without MSI-X and a bridge are refused in one
// sentence each.
func TestRefused(t *testing.T) {
	f := newFakeNVMe()
	f.cfg[0x41] = 0 // the list ends at the PM capability
	if _, err := New(f, pcitest.NewRouter(1), nil); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "MSI-X devices only") {
		t.Errorf("no MSI-X: %v", err)
	}
	f = newFakeNVMe()
	f.cfg[pci.RegHeaderType] = 1
	if _, err := New(f, pcitest.NewRouter(1), nil); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "bridge") {
		t.Errorf("a bridge: %v", err)
	}
	f = newFakeNVMe()
	binary.LittleEndian.PutUint32(f.cfg[0x54:], 0x8000) // table beyond BAR0's 16 KiB
	if _, err := New(f, pcitest.NewRouter(1), nil); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "outside BAR0") {
		t.Errorf("a table outside its BAR: %v", err)
	}
}

// FuzzDeviceConfig feeds New arbitrary configuration spaces (a device is
// a peer, and a broken or hostile one must not crash vio) and then guest
// configuration and BAR writes: no panic, and a device New accepts has
// its MSI-X table inside a memory BAR.
func FuzzDeviceConfig(f *testing.F) {
	f.Add(newFakeNVMe().cfg[:], []byte{0x04, 0x06, 0x00})
	f.Fuzz(func(t *testing.T, cfg []byte, ops []byte) {
		phys := newFakeNVMe()
		copy(phys.cfg[:], cfg)
		d, err := New(phys, pcitest.NewRouter(1<<12), nil)
		if err != nil {
			return
		}
		defer d.Close()
		if b, _ := d.BAR(d.msixBAR); b.Kind != pci.BARMem32 && b.Kind != pci.BARMem64 || d.tableOff+d.tableSize > b.Size {
			t.Fatalf("accepted a table at BAR%d+%#x outside a memory BAR %+v", d.msixBAR, d.tableOff, b)
		}
		for len(ops) >= 3 {
			off, v := int(ops[0]), ops[1:3]
			ops = ops[3:]
			if off&1 == 1 {
				d.WriteConfig(off&^1, v)
			} else if bar, _ := d.BAR(d.msixBAR); bar.Device != nil {
				bar.Device.Write(uint64(off)*16, v)
			}
		}
	})
}

// TestDirectMapping: a mappable BAR0 is mapped in its pieces that hold
// neither the MSI-X table (0x2000) nor the PBA (0x3000): 0-0x2000 goes
// into the guest where the guest puts BAR0, follows it when it moves, and
// leaves when decoding stops.
func TestDirectMapping(t *testing.T) {
	f := newFakeNVMe()
	f.mmap = true
	r := newRig(t, f)
	f.mu.Lock()
	asked := fmt.Sprint(f.mapped)
	f.mu.Unlock()
	if asked != "[[0 8192]]" {
		t.Errorf("mapped pieces %s, want [[0 8192]] (the table and PBA pages stay trapped)", asked)
	}
	base := uint64(r.cf8.Read(r.a, pci.RegBAR0, 4)&^0xf) | uint64(r.cf8.Read(r.a, pci.RegBAR0+4, 4))<<32
	slots := func() string {
		r.slots.mu.Lock()
		defer r.slots.mu.Unlock()
		return fmt.Sprint(r.slots.slots)
	}
	if s := slots(); s != "map[]" {
		t.Errorf("slots %s before the guest enabled decoding", s)
	}
	r.cf8.Write(r.a, pci.RegCommand, 2, pci.CommandMemory)
	if s, want := slots(), fmt.Sprintf("map[%d:8192]", base); s != want {
		t.Errorf("slots %s, want %s", s, want)
	}
	if n := r.d.DirectBytes(0); n != 8192 {
		t.Errorf("DirectBytes %d", n)
	}
	moved := base + 0x100000
	r.cf8.Write(r.a, pci.RegBAR0, 4, uint32(moved)|4)
	if s, want := slots(), fmt.Sprintf("map[%d:8192]", moved); s != want {
		t.Errorf("after the BAR moved: slots %s, want %s", s, want)
	}
	r.cf8.Write(r.a, pci.RegCommand, 2, 0)
	if s := slots(); s != "map[]" {
		t.Errorf("slots %s after decoding stopped", s)
	}
}
