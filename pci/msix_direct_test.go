package pci_test

import (
	"testing"

	"github.com/viovmm/vio/irq"
	"github.com/viovmm/vio/pci"
)

// fdRouter routes every vector to an FDTrigger whose descriptor is 100
// plus the vector, counting routes.
type fdRouter struct{ routes int }

type fdTrigger int

func (fdTrigger) Trigger() error { return nil }
func (t fdTrigger) FD() int      { return int(t) }

func (r *fdRouter) Route(vector int, _ uint64, _ uint32) (irq.Trigger, error) {
	r.routes++
	return fdTrigger(100 + vector), nil
}

// TestMSIXDirectFD: a vector's irqfd is handed out only while the vector
// is deliverable (MSI-X on, neither it nor the function masked); every
// guest change that could alter that, and a reset, calls OnChange; a live
// vector's new message is routed at once when someone listens (its
// interrupts may never pass through Notify).
func TestMSIXDirectFD(t *testing.T) {
	m := newMSIXRig(t)
	r := &fdRouter{}
	m.f.msix.SetRouter(r)
	changes := 0
	m.f.msix.OnChange(func() { changes++ })
	direct := func(v int) bool {
		fd, ok := m.f.msix.DirectFD(v)
		if ok && fd != 100+v {
			t.Fatalf("vector %d: fd %d", v, fd)
		}
		return ok
	}
	m.program(0, 0xfee00000, 0x4021, false)
	if direct(0) {
		t.Fatal("an irqfd while MSI-X is off")
	}
	before := changes
	m.control(pci.MSIXEnable)
	if changes == before {
		t.Fatal("enabling MSI-X told nobody")
	}
	if !direct(0) || direct(1) {
		t.Fatalf("vector 0 live %v, masked vector 1 live %v", direct(0), direct(1))
	}
	before = changes
	m.w32(12, 1) // mask vector 0
	if changes == before || direct(0) {
		t.Fatal("masking vector 0: no change told, or still direct")
	}
	m.w32(12, 0)
	m.control(pci.MSIXEnable | pci.MSIXFunctionMask)
	if direct(0) {
		t.Fatal("an irqfd while the function is masked")
	}
	m.control(pci.MSIXEnable)
	routes := r.routes
	m.w32(8, 0x4030) // a live vector's new data
	if r.routes == routes {
		t.Fatal("a live vector's new message was not routed")
	}
	before = changes
	m.f.msix.Reset()
	if changes == before || direct(0) {
		t.Fatal("reset: no change told, or still direct")
	}
	if _, ok := m.f.msix.DirectFD(-1); ok {
		t.Fatal("DirectFD(-1)")
	}
	if _, ok := m.f.msix.DirectFD(3); ok {
		t.Fatal("DirectFD past the table")
	}
}
