// Package vmm assembles a VM from a config.VM and runs it: guest memory,
// the in-kernel irqchip and PIT, vCPUs, the legacy platform and devices,
// the boot payload, and the lifecycle (run, pause, stop, reboot).
//
// It is an assembler, not a god object: every part lives in its own
// package (kvm, memory, bus, vcpu, arch/x86, loader, devices/...), and this
// package only wires them together and decides what guest events mean.
package vmm

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/viovmm/vio/arch/x86"
	"github.com/viovmm/vio/block/graph"
	"github.com/viovmm/vio/bus"
	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/devices/ide"
	"github.com/viovmm/vio/events"
	"github.com/viovmm/vio/iommu/vfiomap"
	"github.com/viovmm/vio/iommu/vtd"
	"github.com/viovmm/vio/kvm"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/pci"
	"github.com/viovmm/vio/state"
	"github.com/viovmm/vio/vcpu"
)

// IO is where the VM's serial console goes.
type IO struct {
	Stdin  io.Reader // nil: no input
	Stdout io.Writer // nil: output discarded

	hub *inputHub // Stdin shared by the VMs one Builder makes (see input.go)
}

// Options tune how a VM is built.
type Options struct {
	// KVMPath is the KVM device (default /dev/kvm).
	KVMPath string
	// AllowPVM runs on a PVM-only KVM, where standard guests run about a
	// thousand times too slowly to boot Linux. Tests with tiny guests use it.
	AllowPVM bool
	Log      *slog.Logger
	// Stats, if set, receives the VM's counters (see VM.Stats) as JSON
	// when each run of the guest ends.
	Stats io.Writer
	// Events, if set, hears of the devices' lives (see deviceEvents).
	Events *events.Monitor

	// openHost opens host devices for pass-through instead of VFIO
	// (this package's tests give a double).
	openHost hostOpener
	// hotplugEvent, if set, is called after the VM raised its hot-plug
	// GPE: this package's tests play the guest's ACPI handler there.
	hotplugEvent func(*VM)
}

// ErrPVMOnly means the host's KVM cannot run standard guests at speed.
var ErrPVMOnly = errors.New("this host's /dev/kvm is PVM-only (no VMX/SVM): it cannot boot a standard Linux guest in useful time; run vio inside the lab: go run ./cmd/vio-lab exec -- ./bin/vio run ...")

// ErrNoKVM means there is no usable /dev/kvm.
var ErrNoKVM = errors.New("no /dev/kvm: load the kvm_intel or kvm_amd module (and check that you may open /dev/kvm), or run vio inside the lab: go run ./cmd/vio-lab exec -- ./bin/vio run ...")

// VM is one assembled virtual machine, ready to Run once.
type VM struct {
	cfg    *config.VM
	opts   Options
	log    *slog.Logger
	kernel *kernelImage
	sys    *kvm.System
	kvm    *kvm.VM
	mem    *memory.Memory
	pio    *bus.Bus
	mmio   *bus.Bus

	cpus  []*kvm.VCPU
	group *vcpu.Group
	// msrIndex is KVM_GET_MSR_INDEX_LIST, a fact of the host's KVM read
	// once: every save and restore needs it, and a migration's warm-up
	// reads it before the pause.
	msrIndex func() ([]uint32, error)

	events  chan Exit // guest decisions: poweroff, reboot, panic, fatal exits
	closers []io.Closer
	graphs  *graph.Builder // disks' graphs and their shared throttle groups (disk.go)

	platform   *platform
	pciRoot    *pci.Root
	iommu      *vtd.Unit    // nil without --iommu (iommu.go)
	pciDevices []*pciDevice // guarded by hp.mu once the VM runs
	ptDevices  []*ptDevice  // pass-through devices; guarded by hp.mu
	vfio       *vfioHost    // their VFIO groups and containers (passthrough.go)
	mmioSlots  *deviceSlots // KVM memory slots of their BAR pages
	// deferPrimaries leaves the failover primaries out of the build: a
	// migration's destination, whose guest had them unplugged, and a
	// restored VM (failover.go).
	deferPrimaries bool
	hp             hotplug
	e1000s         []e1000Device
	ide            *ide.Controller    // nil without IDE drives
	intx           []x86.PCIInterrupt // INTx routes, for the MP table and _PRT
	msi            *msiRoutes
	ioevents       *ioEvents

	// iommuVFIO hands the iommu's events to the pass-through devices
	// that follow it (passthrough.go); nil without both.
	iommuVFIO *vfiomap.Fanout

	pauseMu  sync.Mutex
	clock    *kvm.ClockData // kvmclock saved by Pause, nil while running
	pausedAt time.Time      // host time when clock was saved
	// restored is set on a VM built from a snapshot until its first
	// Resume, which then advances the clock by the time since pausedAt
	// (the pause before the snapshot), not freezes it.
	restored bool

	mig migrationGuard // migrations reading this VM (migrate.go)
	// exited is how the guest's run ended (set by Wait), for Close to
	// tell a migration it cancels why.
	exited atomic.Pointer[Exit]

	// The virtio disks' images and the virtio NICs' TAPs, which a
	// migration hands over (diskhandoff.go, nethandoff.go).
	// disksInactive builds them without their images and TAPs: a
	// migration's destination, whose source still holds them, until
	// it takes them.
	disksInactive bool
	// vhostDeferred builds the vhost-user devices without connecting:
	// a VM restored from a snapshot, or a migration's destination, whose
	// back-ends another VM may hold; takeVhostUser connects them once
	// the state is restored (vhostuser.go).
	vhostDeferred bool
	diskMu        sync.Mutex
	disks         []vmDisk // guarded by diskMu
	nics          []vmNIC  // guarded by diskMu
	// held is set while a migration that did not end here left the
	// devices paused and the disks and TAPs released; Resume undoes that
	// first.
	// Guarded by pauseMu.
	held *[]state.Pausable

	closeOnce  sync.Once
	vcpusStuck atomic.Bool // a vCPU did not stop in time (see stopVCPUs)
}

// New builds a VM: after it returns, the guest is loaded and its vCPUs are
// ready to start, but nothing runs yet.
func New(cfg *config.VM, stdio IO, opts Options) (vm *VM, err error) {
	return assemble(cfg, stdio, opts, nil)
}

// assemble builds a VM from cfg: booting its payload, or, with snap, with
// the memory and state of a snapshot instead (see Restore).
func assemble(cfg *config.VM, stdio IO, opts Options, snap *snapshotSource) (vm *VM, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	v := &VM{cfg: cfg, opts: opts, log: opts.Log, pio: bus.New("pio"), mmio: bus.New("mmio"), events: make(chan Exit, 1),
		disksInactive: snap != nil && snap.incoming, vhostDeferred: snap != nil, deferPrimaries: snap != nil}
	defer func() {
		if err != nil {
			v.Close()
		}
	}()
	if snap == nil {
		if cfg.Payload.Kernel == "" {
			v.kernel, err = v.kernelFromDisk()
		} else {
			v.kernel, err = parseKernel(cfg.Payload.Kernel)
		}
		if err != nil {
			return nil, err
		}
	}
	if v.sys, err = kvm.Open(opts.KVMPath); err != nil {
		if errors.Is(err, kvm.ErrNoKVM) {
			return nil, ErrNoKVM
		}
		return nil, fmt.Errorf("opening KVM: %w", err)
	}
	v.msrIndex = sync.OnceValues(v.sys.MSRIndexList)
	if v.sys.IsPVM() && !opts.AllowPVM {
		return nil, ErrPVMOnly
	}
	if v.kvm, err = v.sys.CreateVM(); err != nil {
		return nil, fmt.Errorf("creating the VM: %w", err)
	}
	switch {
	case snap != nil && snap.shared != nil:
		err = v.setupSharedMemory(snap.shared)
	case snap == nil || snap.incoming:
		err = v.setupMemory()
	default:
		err = v.setupMemoryFrom(snap)
	}
	if err != nil {
		return nil, err
	}
	if err := v.setupIRQChip(); err != nil {
		return nil, err
	}
	if v.platform, err = newPlatform(v, stdio); err != nil {
		return nil, err
	}
	if err := v.setupPCI(stdio); err != nil {
		return nil, err
	}
	if snap != nil {
		if err := v.setupVCPUs(0, false); err != nil {
			return nil, err
		}
		if snap.incoming {
			return v, nil // RAM and state arrive later (migrate.go)
		}
		if err := v.restore(snap); err != nil {
			return nil, err
		}
		if err := v.takeVhostUser(); err != nil {
			return nil, fmt.Errorf("cannot restore: %w", err)
		}
		return v, nil
	}
	entry, err := v.loadPayload()
	if err != nil {
		return nil, err
	}
	if err := v.setupVCPUs(entry, true); err != nil {
		return nil, err
	}
	return v, nil
}

// Close releases everything the VM holds. It is safe to call more than once
// and after a failed New.
func (v *VM) Close() error {
	v.closeOnce.Do(func() {
		cause := errors.New("the VM was closed")
		if e := v.exited.Load(); e != nil {
			cause = fmt.Errorf("the guest stopped (%s: %s)", e.Reason, e.Detail)
		}
		v.mig.abortAndWait(cause)
		if v.kernel != nil && v.kernel.file != nil {
			v.kernel.file.Close()
		}
		v.stopVCPUs()
		v.runClosers()
		if v.vcpusStuck.Load() {
			// A stuck vCPU thread may still use its fd, the VM and guest
			// memory: leave them to the process's exit.
			return
		}
		for _, c := range v.cpus {
			c.Close()
		}
		if v.kvm != nil {
			v.kvm.Close()
		}
		if v.mem != nil {
			v.mem.Close()
		}
		if v.sys != nil {
			v.sys.Close()
		}
	})
	return nil
}

// Memory returns guest RAM (for devices and tests).
func (v *VM) Memory() *memory.Memory { return v.mem }
