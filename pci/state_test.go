package pci_test

import (
	"encoding/binary"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/viovmm/vio/pci"
	"github.com/viovmm/vio/pci/pcitest"
	"github.com/viovmm/vio/state"
)

func regionOf(t *testing.T, r *rig, f pci.Function, bar int) pci.Region {
	t.Helper()
	for _, rg := range r.root.Mapped(f) {
		if rg.BAR == bar {
			return rg
		}
	}
	t.Fatalf("BAR%d not mapped", bar)
	return pci.Region{}
}

func writeMSIXEntry(r *rig, base uint64, v int, addr uint64, data uint32, masked bool) {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[0:], addr)
	binary.LittleEndian.PutUint32(b[8:], data)
	if masked {
		b[12] = 1
	}
	r.mmio.Write(base+16*uint64(v), b[:])
}

// TestConfigMSIXStateRoundTrip programs a function the way a guest does
// (a BAR moved, decoding on, interrupt line, MSI-X enabled with one live
// and one masked-pending vector, INTx asserted), saves it, restores into a
// fresh function on a fresh root and checks through the guest's interfaces
// that it behaves the same: identical configuration space, BARs decoded at
// the guest's addresses, routes re-announced to the new router, the
// pending vector delivered on unmask.
func TestConfigMSIXStateRoundTrip(t *testing.T) {
	a := pci.BDF{Device: 3}
	r1, router1, line1 := newRig(t), pcitest.NewRouter(8), pcitest.NewLine()
	f1 := newTestFn(t, router1)
	f1.SetINTxLine(line1)
	must(t, r1.root.Add(a, f1))
	r1.cf8.Write(a, pci.RegBAR0, 4, 0xc8000000)
	r1.cf8.Write(a, pci.RegCommand, 2, pci.CommandMemory|pci.CommandIO)
	r1.cf8.Write(a, pci.RegInterruptLine, 1, 11)
	tbl := regionOf(t, r1, f1, 2).Addr
	writeMSIXEntry(r1, tbl, 1, 0xfee00000, 0x41, false)
	writeMSIXEntry(r1, tbl, 2, 0xfee01000, 0x42, true)
	capOff := f1.msix.CapOffset()
	r1.cf8.Write(a, capOff+2, 2, pci.MSIXEnable|2)
	must(t, f1.msix.Notify(2)) // masked: pending
	if router1.Pending() != 0 {
		t.Fatal("masked vector delivered")
	}
	must(t, f1.SetINTx(true))

	// Through JSON, as the state file carries it.
	var cs pci.ConfigState
	var ms pci.MSIXState
	b, err := state.Marshal(f1.SaveState())
	must(t, err)
	must(t, state.Unmarshal(b, &cs))
	b, err = state.Marshal(f1.msix.SaveState())
	must(t, err)
	must(t, state.Unmarshal(b, &ms))

	r2, router2, line2 := newRig(t), pcitest.NewRouter(8), pcitest.NewLine()
	f2 := newTestFn(t, router2)
	f2.SetINTxLine(line2)
	must(t, r2.root.Add(a, f2))
	must(t, f2.RestoreState(cs))
	must(t, f2.msix.RestoreState(ms))
	r2.root.Resync()

	for off := 0; off < pci.ConfigSize; off += 4 {
		if v1, v2 := r1.cf8.Read(a, off, 4), r2.cf8.Read(a, off, 4); v1 != v2 {
			t.Errorf("config %#x: restored %#x, original %#x", off, v2, v1)
		}
	}
	m1, m2 := r1.root.Mapped(f1), r2.root.Mapped(f2)
	if len(m1) != 3 || len(m2) != len(m1) {
		t.Fatalf("mapped %d regions, original %d", len(m2), len(m1))
	}
	for i := range m1 {
		if m1[i].BAR != m2[i].BAR || m1[i].Addr != m2[i].Addr || m1[i].Size != m2[i].Size {
			t.Errorf("region %d: %+v, original %+v", i, m2[i], m1[i])
		}
	}
	r2.mmio.Write(0xc8000010, []byte{0x5a})
	if f2.b0.mem[0x10] != 0x5a {
		t.Error("BAR0 does not decode at the guest's address after restore")
	}
	if routes, _ := router2.Routes(); routes[1] != (pcitest.Message{Vector: 1, Addr: 0xfee00000, Data: 0x41}) {
		t.Errorf("routes after restore: %+v", routes)
	}
	must(t, f2.msix.Notify(1))
	if m, err := router2.Wait(time.Second); err != nil || m.Vector != 1 || m.Data != 0x41 {
		t.Fatalf("vector 1: %+v %v", m, err)
	}
	var pba [8]byte
	r2.mmio.Read(tbl+0x800, pba[:])
	if pba[0] != 1<<2 {
		t.Errorf("PBA after restore = %#x, want vector 2 pending", pba[0])
	}
	writeMSIXEntry(r2, tbl, 2, 0xfee01000, 0x42, false)
	if m, err := router2.Wait(time.Second); err != nil || m.Vector != 2 || m.Data != 0x42 {
		t.Fatalf("pending vector 2 on unmask: %+v %v", m, err)
	}
	if lvl, _ := line2.Level(); !lvl {
		t.Error("INTx not asserted after restore")
	}
}

func TestConfigRestoreHostile(t *testing.T) {
	f := newTestFn(t, pcitest.NewRouter(8))
	good := f.SaveState()
	other := pci.NewConfig(pci.Header{VendorID: 0x1234, DeviceID: 0x9999})
	if err := other.RestoreState(good); !errors.Is(err, state.ErrMismatch) {
		t.Errorf("another device: %v", err)
	}
	if err := f.RestoreState(pci.ConfigState{Data: good.Data[:100]}); !errors.Is(err, state.ErrMismatch) {
		t.Errorf("short space: %v", err)
	}
	bad := slices.Clone(good.Data)
	bad[pci.RegBAR0] |= 1 // BAR type bit: read-only
	if err := f.RestoreState(pci.ConfigState{Data: bad}); !errors.Is(err, state.ErrMismatch) {
		t.Errorf("BAR type changed: %v", err)
	}
	ms := f.msix.SaveState()
	short := ms
	short.Entries = short.Entries[:2]
	if err := f.msix.RestoreState(short); !errors.Is(err, state.ErrMismatch) {
		t.Errorf("short table: %v", err)
	}
	beyond := ms
	beyond.Pending = []uint64{1 << 5}
	if err := f.msix.RestoreState(beyond); !errors.Is(err, state.ErrInvalid) {
		t.Errorf("pending beyond the table: %v", err)
	}
}

// FuzzConfigRestore feeds arbitrary sections to the configuration space
// and MSI-X restore paths: they refuse or apply, never panic, and the
// function stays usable.
func FuzzConfigRestore(f *testing.F) {
	fn := newTestFn(f, pcitest.NewRouter(8))
	cs, _ := state.Marshal(fn.SaveState())
	ms, _ := state.Marshal(fn.msix.SaveState())
	f.Add(cs, ms)
	f.Add([]byte(`{"Data":"AAAA","INTx":true}`), []byte(`{"Entries":[{},{},{}],"Pending":[7]}`))
	f.Fuzz(func(t *testing.T, cdata, mdata []byte) {
		fn := newTestFn(t, pcitest.NewRouter(8))
		var c pci.ConfigState
		if state.Unmarshal(cdata, &c) == nil {
			_ = fn.RestoreState(c)
		}
		var m pci.MSIXState
		if state.Unmarshal(mdata, &m) == nil {
			_ = fn.msix.RestoreState(m)
		}
		_ = fn.Regions()
		_ = fn.msix.Notify(0)
		var b [4]byte
		fn.ReadConfig(0, b[:])
		if binary.LittleEndian.Uint32(b[:]) != 0x56781234 {
			t.Fatal("identity changed by a restore")
		}
	})
}
