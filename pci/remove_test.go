package pci_test

import (
	"errors"
	"testing"

	"github.com/viovmm/vio/pci"
	"github.com/viovmm/vio/pci/pcitest"
)

// TestRemove: a removed function's BARs stop decoding (with BARMapped
// unmap events), its slot reads as empty and can be reused, and a new
// function of the same shape gets the same BAR addresses back instead of
// new window space, so plug/unplug cycles do not exhaust the windows.
func TestRemove(t *testing.T) {
	r := newRig(t)
	a := pci.BDF{Device: 7}
	f := newTestFn(t, pcitest.NewRouter(8))
	must(t, r.root.Add(a, f))
	bar0 := r.cf8.Read(a, pci.RegBAR0, 4)
	bar2 := r.cf8.Read(a, pci.RegBAR0+8, 4)
	io := r.cf8.Read(a, pci.RegBAR0+16, 4)
	r.cf8.Write(a, pci.RegCommand, 2, pci.CommandMemory|pci.CommandIO)
	one := []byte{1}
	if !r.mmio.Write(uint64(bar0), one) {
		t.Fatal("BAR0 not decoded before removal")
	}

	must(t, r.root.Remove(a))
	if r.mmio.Write(uint64(bar0), one) || r.pio.Write(uint64(io&^3), one) {
		t.Error("BARs still decoded after Remove")
	}
	if got := r.cf8.Read(a, pci.RegVendorID, 2); got != 0xffff {
		t.Errorf("removed slot reads vendor %#x, want 0xffff", got)
	}
	f.mu.Lock()
	ev := append([]string(nil), f.events...)
	f.mu.Unlock()
	if len(ev) != 6 || ev[3] != "unmap" || ev[4] != "unmap" || ev[5] != "unmap" {
		t.Errorf("BARMapped events %v, want 3 maps then 3 unmaps", ev)
	}
	if err := r.root.Remove(a); !errors.Is(err, pci.ErrNoFunction) {
		t.Errorf("second Remove: %v, want ErrNoFunction", err)
	}

	g := newTestFn(t, pcitest.NewRouter(8))
	must(t, r.root.Add(pci.BDF{Device: 9}, g))
	b := pci.BDF{Device: 9}
	if r.cf8.Read(b, pci.RegBAR0, 4) != bar0 || r.cf8.Read(b, pci.RegBAR0+8, 4) != bar2 || r.cf8.Read(b, pci.RegBAR0+16, 4) != io {
		t.Errorf("the new function got new BAR space: %#x %#x %#x, want %#x %#x %#x",
			r.cf8.Read(b, pci.RegBAR0, 4), r.cf8.Read(b, pci.RegBAR0+8, 4), r.cf8.Read(b, pci.RegBAR0+16, 4), bar0, bar2, io)
	}
	must(t, r.root.Add(a, newTestFn(t, pcitest.NewRouter(8))))
	if r.cf8.Read(a, pci.RegBAR0, 4) == bar0 {
		t.Error("two live functions share BAR0's range")
	}
}

func TestRemoveRefusals(t *testing.T) {
	r := newRig(t)
	for _, a := range []pci.BDF{{}, {Device: 32}, {Bus: 1, Device: 3}} {
		if err := r.root.Remove(a); !errors.Is(err, pci.ErrBadAddress) {
			t.Errorf("Remove(%v): %v, want ErrBadAddress", a, err)
		}
	}
	must(t, r.root.Add(pci.BDF{Device: 4}, newTestFn(t, pcitest.NewRouter(8))))
	must(t, r.root.Add(pci.BDF{Device: 4, Function: 1}, newTestFn(t, pcitest.NewRouter(8))))
	if err := r.root.Remove(pci.BDF{Device: 4}); !errors.Is(err, pci.ErrSlotInUse) {
		t.Errorf("removing function 0 before 1: %v", err)
	}
	must(t, r.root.Remove(pci.BDF{Device: 4, Function: 1}))
	must(t, r.root.Remove(pci.BDF{Device: 4}))
}
