package vmm

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/irq"
	"github.com/viovmm/vio/kvm"
	"github.com/viovmm/vio/pci"
	"github.com/viovmm/vio/virtio/virtiopci"
)

// firstMSIGSI is the first GSI past the IOAPIC's 24 pins; MSI routes take
// GSIs from here up.
const firstMSIGSI = 24

// msiRoutes owns the VM's GSI routing table. KVM only takes the whole
// table at once, so it keeps every route (the default irqchip ones and one
// MSI route per device vector) and rewrites the table on each change. Each
// MSI vector gets its own GSI and an irqfd, so a device injects it with an
// eventfd write and no exit.
type msiRoutes struct {
	vm *kvm.VM

	mu      sync.Mutex
	routes  map[uint32]kvm.Route // MSI routes by GSI
	nextGSI uint32
	fds     []*kvm.EventFD
	// freeGSIs were released by unplugged functions (deviceMSI.release)
	freeGSIs []uint32
}

func newMSIRoutes(vm *kvm.VM) *msiRoutes {
	return &msiRoutes{vm: vm, routes: map[uint32]kvm.Route{}, nextGSI: firstMSIGSI}
}

// defaultRoutes are what KVM_CREATE_IRQCHIP installs: ISA IRQs to both PICs
// and the IOAPIC, the remaining IOAPIC pins to themselves.
func defaultRoutes() []kvm.Route {
	var r []kvm.Route
	for i := uint32(0); i < 24; i++ {
		if i < 16 {
			r = append(r, kvm.Route{GSI: i, Type: kvm.RouteIRQChip, Chip: kvm.IRQChipPICMaster + i/8, Pin: i % 8})
		}
		r = append(r, kvm.Route{GSI: i, Type: kvm.RouteIRQChip, Chip: kvm.IRQChipIOAPIC, Pin: i})
	}
	return r
}

// commitLocked rewrites KVM's table; m.mu is held.
func (m *msiRoutes) commitLocked() error {
	table := defaultRoutes()
	for _, r := range m.routes {
		table = append(table, r)
	}
	return m.vm.SetGSIRouting(table)
}

// device returns the MSIRouter for one PCI function.
func (m *msiRoutes) device() pci.MSIRouter { return &deviceMSI{routes: m, gsis: map[int]*msiVector{}} }

func (m *msiRoutes) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, fd := range m.fds {
		fd.Close()
	}
	m.fds = nil
}

type msiVector struct {
	gsi uint32
	fd  *kvm.EventFD
}

// deviceMSI routes one function's MSI-X vectors.
type deviceMSI struct {
	routes *msiRoutes
	gsis   map[int]*msiVector // guarded by routes.mu
}

var _ pci.MSIRouter = (*deviceMSI)(nil)

// Route points the vector's GSI at the new message. The eventfd (and so the
// irq.Trigger the device holds) stays the same for the vector's lifetime;
// only the route behind it changes.
func (d *deviceMSI) Route(vector int, addr uint64, data uint32) (irq.Trigger, error) {
	m := d.routes
	m.mu.Lock()
	defer m.mu.Unlock()
	v := d.gsis[vector]
	if v == nil {
		fd, err := kvm.NewEventFD()
		if err != nil {
			return nil, err
		}
		gsi, fresh := m.nextGSI, true
		if n := len(m.freeGSIs); n > 0 {
			gsi, fresh = m.freeGSIs[n-1], false
		}
		v = &msiVector{gsi: gsi, fd: fd}
		m.routes[v.gsi] = kvm.Route{GSI: v.gsi, Type: kvm.RouteMSI, Address: addr, Data: data}
		if err := m.commitLocked(); err != nil {
			delete(m.routes, v.gsi)
			fd.Close()
			return nil, fmt.Errorf("MSI route for GSI %d: %w", v.gsi, err)
		}
		if err := m.vm.IRQFD(fd.FD(), v.gsi); err != nil {
			delete(m.routes, v.gsi)
			fd.Close()
			return nil, fmt.Errorf("irqfd for GSI %d: %w", v.gsi, err)
		}
		if fresh {
			m.nextGSI++
		} else {
			m.freeGSIs = m.freeGSIs[:len(m.freeGSIs)-1]
		}
		m.fds = append(m.fds, fd)
		d.gsis[vector] = v
		return fd, nil
	}
	m.routes[v.gsi] = kvm.Route{GSI: v.gsi, Type: kvm.RouteMSI, Address: addr, Data: data}
	if err := m.commitLocked(); err != nil {
		return nil, fmt.Errorf("MSI route for GSI %d: %w", v.gsi, err)
	}
	return v.fd, nil
}

// ioEvents attaches KVM ioeventfds to queue notify addresses, so a guest's
// doorbell write signals the device's goroutine without an exit to vio.
type ioEvents struct {
	vm *kvm.VM

	mu       sync.Mutex
	attached map[uint64]ioEvent
}

// ioEvent is one attached notify address: an eventfd of vio's with a
// goroutine calling the kick function, or (AttachFD) a duplicate of a
// device's eventfd that another process reads.
type ioEvent struct {
	ev *kvm.EventFD // nil for a duplicate
	fd int
}

func (e ioEvent) close() {
	if e.ev != nil {
		e.ev.Close()
	} else {
		unix.Close(e.fd)
	}
}

var _ virtiopci.IOEventFDRegistrar = (*ioEvents)(nil)

func newIOEvents(vm *kvm.VM) *ioEvents {
	return &ioEvents{vm: vm, attached: map[uint64]ioEvent{}}
}

// AttachFD makes a guest write to gpa signal fd (a vhost-user back-end's
// kick eventfd) from KVM itself. It keeps a duplicate, so the device can
// close its own descriptor whenever it likes.
func (e *ioEvents) AttachFD(gpa uint64, fd int) error {
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("duplicating a kick eventfd: %w", err)
	}
	if err := e.vm.IOEventFD(kvm.IOEvent{Addr: gpa, Len: 0, FD: dup}); err != nil {
		unix.Close(dup)
		return err
	}
	e.mu.Lock()
	if old, ok := e.attached[gpa]; ok {
		e.detachLocked(gpa, old)
	}
	e.attached[gpa] = ioEvent{fd: dup}
	e.mu.Unlock()
	return nil
}

func (e *ioEvents) Attach(gpa uint64, kick func()) error {
	fd, err := kvm.NewEventFD()
	if err != nil {
		return err
	}
	// Len 0 matches a write of any width, as the transport promises.
	if err := e.vm.IOEventFD(kvm.IOEvent{Addr: gpa, Len: 0, FD: fd.FD()}); err != nil {
		fd.Close()
		return err
	}
	e.mu.Lock()
	if old, ok := e.attached[gpa]; ok {
		e.detachLocked(gpa, old)
	}
	e.attached[gpa] = ioEvent{ev: fd, fd: fd.FD()}
	e.mu.Unlock()
	go func() {
		for {
			if _, err := fd.Wait(); err != nil {
				return // closed by Detach
			}
			kick()
		}
	}()
	return nil
}

func (e *ioEvents) Detach(gpa uint64) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	a, ok := e.attached[gpa]
	if !ok {
		return nil
	}
	return e.detachLocked(gpa, a)
}

func (e *ioEvents) detachLocked(gpa uint64, a ioEvent) error {
	delete(e.attached, gpa)
	err := e.vm.IOEventFDDeassign(kvm.IOEvent{Addr: gpa, Len: 0, FD: a.fd})
	a.close()
	return err
}

func (e *ioEvents) close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for gpa, fd := range e.attached {
		e.detachLocked(gpa, fd)
	}
}

// newDevice returns the MSIRouter of one PCI function that can be
// released when the function is unplugged.
func (m *msiRoutes) newDevice() *deviceMSI { return &deviceMSI{routes: m, gsis: map[int]*msiVector{}} }

// release drops the function's vectors: irqfds deassigned, routes
// removed, eventfds closed, GSIs free for the next function.
func (d *deviceMSI) release() {
	m := d.routes
	m.mu.Lock()
	defer m.mu.Unlock()
	for vec, v := range d.gsis {
		m.vm.IRQFDDeassign(v.fd.FD(), v.gsi)
		delete(m.routes, v.gsi)
		for i, fd := range m.fds {
			if fd == v.fd {
				m.fds = append(m.fds[:i], m.fds[i+1:]...)
				break
			}
		}
		v.fd.Close()
		m.freeGSIs = append(m.freeGSIs, v.gsi)
		delete(d.gsis, vec)
	}
	m.commitLocked()
}
