package kvm

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"
)

// VM is a KVM virtual machine: its memory slots, in-kernel interrupt
// controllers, interrupt routing and vCPUs. Its methods may be called from
// any goroutine.
type VM struct {
	fd       int
	mmapSize int
}

// FD returns the VM's file descriptor.
func (vm *VM) FD() int { return vm.fd }

// Close closes the VM's descriptor. The kernel frees the VM once its vCPUs
// are closed too.
func (vm *VM) Close() error { return closeFD(&vm.fd) }

// CheckExtension is KVM_CHECK_EXTENSION on the VM, whose answer may differ
// from the system's (for example CapNrMemslots, CapMaxVCPUs).
func (vm *VM) CheckExtension(c Cap) (int, error) {
	r, err := ioctl(vm.fd, ioctlCheckExtension, uintptr(c))
	if err != nil {
		return 0, ioctlError("KVM_CHECK_EXTENSION", err)
	}
	return int(r), nil
}

// EnableCap is KVM_ENABLE_CAP on the VM (for example CapSplitIRQChip with
// the number of IOAPIC pins as args[0]).
func (vm *VM) EnableCap(c Cap, args ...uint64) error {
	ec := enableCap{Cap: uint32(c)}
	if len(args) > len(ec.Args) {
		return fmt.Errorf("kvm: KVM_ENABLE_CAP: %d arguments, at most %d", len(args), len(ec.Args))
	}
	copy(ec.Args[:], args)
	_, err := ioctlPtr(vm.fd, ioctlEnableCap, &ec)
	return ioctlError("KVM_ENABLE_CAP", err)
}

// MemoryRegion describes one memory slot: guest physical range
// [GPA, GPA+len(Host)) backed by the host bytes Host.
type MemoryRegion struct {
	Slot uint32
	GPA  uint64
	// Host backs the slot. It must be page aligned, a multiple of the page
	// size long, and stay mapped until the slot is deleted or the VM closed:
	// the kernel keeps only its address. (memory.Region.Data satisfies this.)
	Host     []byte
	LogDirty bool // track writes for VM.GetDirtyLog
	ReadOnly bool // guest writes exit as MMIO
}

// SetUserMemoryRegion creates or changes a memory slot.
func (vm *VM) SetUserMemoryRegion(r MemoryRegion) error {
	page := uint64(unix.Getpagesize())
	if r.GPA%page != 0 || uint64(len(r.Host))%page != 0 || bytesAddr(r.Host)%page != 0 {
		return fmt.Errorf("kvm: memory slot %d at %#x+%#x is not page aligned", r.Slot, r.GPA, len(r.Host))
	}
	m := UserspaceMemoryRegion{
		Slot:          r.Slot,
		GuestPhysAddr: r.GPA,
		MemorySize:    uint64(len(r.Host)),
		UserspaceAddr: bytesAddr(r.Host),
	}
	if r.LogDirty {
		m.Flags |= memLogDirtyPages
	}
	if r.ReadOnly {
		m.Flags |= memReadonly
	}
	_, err := ioctlPtr(vm.fd, ioctlSetUserMemoryRegion, &m)
	if err != nil {
		return fmt.Errorf("kvm: KVM_SET_USER_MEMORY_REGION slot %d at %#x+%#x: %w", r.Slot, r.GPA, len(r.Host), err)
	}
	return nil
}

// DeleteUserMemoryRegion removes a memory slot (a zero-sized region).
func (vm *VM) DeleteUserMemoryRegion(slot uint32) error {
	m := UserspaceMemoryRegion{Slot: slot}
	_, err := ioctlPtr(vm.fd, ioctlSetUserMemoryRegion, &m)
	return ioctlError("KVM_SET_USER_MEMORY_REGION (delete)", err)
}

// SetTSSAddr places the three pages Intel VT-x needs for real-mode emulation
// (KVM_SET_TSS_ADDR). The range must not overlap RAM or MMIO the guest uses.
func (vm *VM) SetTSSAddr(addr uint32) error {
	_, err := ioctl(vm.fd, ioctlSetTSSAddr, uintptr(addr))
	return ioctlError("KVM_SET_TSS_ADDR", err)
}

// SetIdentityMapAddr places the one-page identity map VT-x uses for real
// mode (KVM_SET_IDENTITY_MAP_ADDR); call before creating vCPUs.
func (vm *VM) SetIdentityMapAddr(addr uint64) error {
	_, err := ioctlPtr(vm.fd, ioctlSetIdentityMapAddr, &addr)
	return ioctlError("KVM_SET_IDENTITY_MAP_ADDR", err)
}

// CreateIRQChip creates the in-kernel PIC pair, IOAPIC and local APICs
// (KVM_CREATE_IRQCHIP), with the default routing of GSIs 0-23.
func (vm *VM) CreateIRQChip() error {
	_, err := ioctl(vm.fd, ioctlCreateIRQChip, 0)
	return ioctlError("KVM_CREATE_IRQCHIP", err)
}

// PITSpeakerDummy, in PITConfig.Flags, makes KVM emulate a dummy PC speaker
// port (0x61) so the guest's PIT calibration works without a device model.
const PITSpeakerDummy = pitSpeakerDummy

// CreatePIT2 creates the in-kernel i8254 PIT (KVM_CREATE_PIT2). Requires
// CreateIRQChip first.
func (vm *VM) CreatePIT2(cfg PITConfig) error {
	_, err := ioctlPtr(vm.fd, ioctlCreatePIT2, &cfg)
	return ioctlError("KVM_CREATE_PIT2", err)
}

// IRQLine sets the level of GSI irq on the in-kernel irqchip (KVM_IRQ_LINE).
// An edge is a true followed by a false.
func (vm *VM) IRQLine(irq uint32, level bool) error {
	l := irqLevel{IRQ: irq}
	if level {
		l.Level = 1
	}
	_, err := ioctlPtr(vm.fd, ioctlIRQLine, &l)
	return ioctlError("KVM_IRQ_LINE", err)
}

// RouteType says where a GSI goes.
type RouteType uint32

const (
	RouteIRQChip RouteType = irqRoutingIRQChip // to a pin of the PIC or IOAPIC
	RouteMSI     RouteType = irqRoutingMSI     // as a message-signalled interrupt
)

// Route is one entry of the GSI routing table.
type Route struct {
	GSI  uint32
	Type RouteType

	// RouteIRQChip: Chip is IRQChipPICMaster, IRQChipPICSlave or
	// IRQChipIOAPIC; Pin is the input pin on that chip.
	Chip, Pin uint32

	// RouteMSI: the message address and data the device would write.
	Address uint64
	Data    uint32
}

// maxRoutes is KVM_MAX_IRQ_ROUTES, the kernel's table limit.
const maxRoutes = 4096

// SetGSIRouting replaces the whole GSI routing table (KVM_SET_GSI_ROUTING).
// The kernel has no incremental update: pass every route, including the
// default irqchip ones that CreateIRQChip installed if they are still wanted.
func (vm *VM) SetGSIRouting(routes []Route) error {
	if len(routes) > maxRoutes {
		return fmt.Errorf("kvm: KVM_SET_GSI_ROUTING: %d routes, at most %d", len(routes), maxRoutes)
	}
	buf := make([]byte, 0, sizeofIRQRoutingHead+len(routes)*sizeofIRQRoutingEntry)
	buf = binary.NativeEndian.AppendUint32(buf, uint32(len(routes)))
	buf = binary.NativeEndian.AppendUint32(buf, 0)
	for _, r := range routes {
		e := irqRoutingEntry{GSI: r.GSI, Type: uint32(r.Type)}
		switch r.Type {
		case RouteIRQChip:
			binary.NativeEndian.PutUint32(e.U[0:], r.Chip)
			binary.NativeEndian.PutUint32(e.U[4:], r.Pin)
		case RouteMSI:
			binary.NativeEndian.PutUint32(e.U[0:], uint32(r.Address))
			binary.NativeEndian.PutUint32(e.U[4:], uint32(r.Address>>32))
			binary.NativeEndian.PutUint32(e.U[8:], r.Data)
		default:
			return fmt.Errorf("kvm: KVM_SET_GSI_ROUTING: GSI %d: unknown route type %d", r.GSI, r.Type)
		}
		var err error
		if buf, err = binary.Append(buf, binary.NativeEndian, &e); err != nil {
			return err
		}
	}
	_, err := ioctlBytes(vm.fd, ioctlSetGSIRouting, buf)
	return ioctlError("KVM_SET_GSI_ROUTING", err)
}

// IRQFD makes a write to eventfd fd inject GSI gsi (KVM_IRQFD): the fast
// interrupt path, with no exit to userspace.
func (vm *VM) IRQFD(fd int, gsi uint32) error {
	f := irqfd{FD: uint32(fd), GSI: gsi}
	_, err := ioctlPtr(vm.fd, ioctlIRQFD, &f)
	return ioctlError("KVM_IRQFD", err)
}

// IRQFDResample is IRQFD for a level-triggered line: the GSI is asserted on
// a write to fd and de-asserted when the guest acknowledges it, at which
// point KVM writes resampleFD so the device can re-assert if still pending.
func (vm *VM) IRQFDResample(fd, resampleFD int, gsi uint32) error {
	f := irqfd{FD: uint32(fd), GSI: gsi, Flags: irqfdFlagResample, Resamplefd: uint32(resampleFD)}
	_, err := ioctlPtr(vm.fd, ioctlIRQFD, &f)
	return ioctlError("KVM_IRQFD (resample)", err)
}

// IRQFDDeassign undoes IRQFD (or IRQFDResample) for the pair fd, gsi.
func (vm *VM) IRQFDDeassign(fd int, gsi uint32) error {
	f := irqfd{FD: uint32(fd), GSI: gsi, Flags: irqfdFlagDeassign}
	_, err := ioctlPtr(vm.fd, ioctlIRQFD, &f)
	return ioctlError("KVM_IRQFD (deassign)", err)
}

// IOEvent describes a guest write that KVM turns into an eventfd signal
// instead of an exit (KVM_IOEVENTFD): the doorbell fast path.
type IOEvent struct {
	Addr  uint64 // port (PIO) or guest physical address (MMIO)
	Len   uint32 // access size 1, 2, 4 or 8; 0 matches any size (MMIO only)
	PIO   bool   // Addr is an I/O port
	Match bool   // signal only when the written value equals Data
	Data  uint64
	FD    int // the eventfd
}

func (e IOEvent) raw(deassign bool) ioeventfd {
	r := ioeventfd{Addr: e.Addr, Len: e.Len, FD: int32(e.FD)}
	if e.PIO {
		r.Flags |= ioeventfdPIO
	}
	if e.Match {
		r.Flags |= ioeventfdDatamatch
		r.Datamatch = e.Data
	}
	if deassign {
		r.Flags |= ioeventfdDeassign
	}
	return r
}

// IOEventFD registers e.
func (vm *VM) IOEventFD(e IOEvent) error {
	r := e.raw(false)
	_, err := ioctlPtr(vm.fd, ioctlIOEventFD, &r)
	if err != nil {
		return fmt.Errorf("kvm: KVM_IOEVENTFD %#x/%d: %w", e.Addr, e.Len, err)
	}
	return nil
}

// IOEventFDDeassign removes a registration made by IOEventFD with the same e.
func (vm *VM) IOEventFDDeassign(e IOEvent) error {
	r := e.raw(true)
	_, err := ioctlPtr(vm.fd, ioctlIOEventFD, &r)
	if err != nil {
		return fmt.Errorf("kvm: KVM_IOEVENTFD deassign %#x/%d: %w", e.Addr, e.Len, err)
	}
	return nil
}

// DirtyBitmapWords returns how many uint64 words GetDirtyLog needs for a
// slot of size bytes: one bit per page.
func DirtyBitmapWords(size uint64) int {
	pages := (size + uint64(unix.Getpagesize()) - 1) / uint64(unix.Getpagesize())
	return int((pages + 63) / 64)
}

// GetDirtyLog fetches and clears the dirty-page bitmap of a slot created with
// LogDirty (KVM_GET_DIRTY_LOG). Bit i of the bitmap (word i/64, bit i%64)
// is page i of the slot. bitmap must have DirtyBitmapWords(slot size) words:
// the kernel writes that many bytes and cannot be told a shorter length.
func (vm *VM) GetDirtyLog(slot uint32, bitmap []uint64) error {
	if len(bitmap) == 0 {
		return fmt.Errorf("kvm: KVM_GET_DIRTY_LOG slot %d: empty bitmap", slot)
	}
	return ioctlError("KVM_GET_DIRTY_LOG", getDirtyLog(vm.fd, slot, bitmap))
}

// GetClock returns the VM's kvmclock (KVM_GET_CLOCK), for save/restore.
func (vm *VM) GetClock() (ClockData, error) {
	var c ClockData
	_, err := ioctlPtr(vm.fd, ioctlGetClock, &c)
	return c, ioctlError("KVM_GET_CLOCK", err)
}

// SetClock sets the VM's kvmclock (KVM_SET_CLOCK). Only Clock (and, with
// the matching flag, Realtime) is used by the kernel.
func (vm *VM) SetClock(c ClockData) error {
	_, err := ioctlPtr(vm.fd, ioctlSetClock, &c)
	return ioctlError("KVM_SET_CLOCK", err)
}

// CreateVCPU creates vCPU id (its initial APIC ID) and maps its kvm_run page.
func (vm *VM) CreateVCPU(id int) (*VCPU, error) {
	fd, err := ioctl(vm.fd, ioctlCreateVCPU, uintptr(id))
	if err != nil {
		return nil, fmt.Errorf("kvm: KVM_CREATE_VCPU %d: %w", id, err)
	}
	unix.CloseOnExec(int(fd))
	run, err := unix.Mmap(int(fd), 0, vm.mmapSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(int(fd))
		return nil, fmt.Errorf("kvm: mapping kvm_run of vCPU %d: %w", id, err)
	}
	c := &VCPU{fd: int(fd), id: id, run: run}
	if n, err := vm.CheckExtension(CapXSave); err == nil && n > 0 {
		c.hasXSave = true
		c.xsaveSize, _ = vm.CheckExtension(CapXSave2)
	}
	return c, nil
}

// SignalMSI injects one message-signalled interrupt directly
// (KVM_SIGNAL_MSI), without a route or an eventfd: the slow path, for
// devices that raise MSIs rarely. It reports whether the interrupt was
// delivered (false: the guest's interrupt controller blocked it).
func (vm *VM) SignalMSI(address uint64, data uint32) (bool, error) {
	m := msi{Lo: uint32(address), Hi: uint32(address >> 32), Data: data}
	r, err := ioctlPtr(vm.fd, ioctlSignalMSI, &m)
	if err != nil {
		return false, ioctlError("KVM_SIGNAL_MSI", err)
	}
	return r > 0, nil
}
