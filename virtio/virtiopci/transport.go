// Package virtiopci is the virtio-over-PCI modern transport (virtio 1.2
// section 4.1): a pci.Function whose configuration space carries the
// virtio vendor capabilities and whose BAR 0 holds the common
// configuration, notification, ISR and device-specific structures and the
// MSI-X table.
//
// The transport negotiates features, runs the device status state machine,
// collects queue configuration and activates the virtio.Device on
// DRIVER_OK. It is pure Go: the VMM connects it to KVM through
// pci.MSIRouter (MSI-X), irq.Line (INTx) and IOEventRegistrar (one
// ioeventfd per queue notify address).
//
// Queue notifications never run device code on the vCPU thread: a write to
// a notify register, or the VMM calling Notify when an ioeventfd fires,
// only kicks the queue, which wakes the device's goroutine.
//
// Wiring by the VMM (see Example):
//
//	tr, err := virtiopci.New(dev, mem, virtiopci.Options{
//		Router:   router,   // KVM GSI routing + irqfd per MSI-X vector
//		INTx:     line,     // optional legacy line
//		IOEvents: ioevents, // KVM_IOEVENTFD per notify address
//	})
//	root.Add(pci.BDF{Device: n}, tr)
//
// The guest assigns and enables BAR 0 (or keeps the Root's assignment);
// the transport then attaches one ioeventfd per queue at NotifyAddr(q),
// and the VMM calls tr.Notify(q) when it fires.
//
// What the transport decides, and how (all visible to the driver):
//   - FEATURES_OK sticks only if the driver's features are a subset of the
//     offered ones and include VERSION_1 (no legacy interface).
//   - Queue registers are frozen once the queue is enabled or DRIVER_OK is
//     set; queue_enable ignores 0 (no VIRTIO_F_RING_RESET).
//   - Vectors at or above the MSI-X table size read back as NO_VECTOR.
//   - Queue sizes and ring addresses are validated at DRIVER_OK; a bad
//     queue, a failing Device.Activate, or a queue that breaks later sets
//     DEVICE_NEEDS_RESET and raises the configuration interrupt.
//   - While MSI-X is disabled, interrupts set ISR bits and assert INTx;
//     reading ISR clears both. With MSI-X enabled, NO_VECTOR means no
//     interrupt at all.
package virtiopci

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/viovmm/vio/bus"
	"github.com/viovmm/vio/irq"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/pci"
	"github.com/viovmm/vio/virtio"
)

// PCI identity of virtio devices.
const (
	VendorID      = 0x1af4
	DeviceIDBase  = 0x1040 // + device type, for modern (non-transitional) devices
	RevisionID    = 1      // non-transitional devices have revision ≥ 1
	DefaultSubsys = 0x1100 // QEMU's subsystem ID, which guests know well
)

// NoVector is VIRTIO_MSI_NO_VECTOR.
const NoVector = 0xffff

// NotifyOffMultiplier is the distance between two queues' notify
// registers: each queue gets its own address, so the VMM can attach one
// ioeventfd per queue without data matching.
const NotifyOffMultiplier = 4

// Virtio PCI capability types (cfg_type).
const (
	CapCommonCfg = 1
	CapNotifyCfg = 2
	CapISRCfg    = 3
	CapDeviceCfg = 4
	CapPCICfg    = 5
)

// Layout of BAR 0. Each structure starts on its own page so the VMM could
// map them separately (the MSI-X table must not share a page with
// anything a VFIO-style fast path would map directly).
const (
	BARIndex     = 0
	CommonOffset = 0x0000
	CommonLength = 0x3c // through queue_reset (virtio 1.2)
	ISROffset    = 0x1000
	ISRLength    = 4
	DeviceOffset = 0x2000
	DeviceLength = 0x1000
	NotifyOffset = 0x3000
)

// Limits.
const (
	MaxQueues = 1024 // notify registers fit in one page
)

// Offsets in the common configuration structure.
const (
	regDeviceFeatureSelect = 0x00
	regDeviceFeature       = 0x04
	regDriverFeatureSelect = 0x08
	regDriverFeature       = 0x0c
	regConfigMSIXVector    = 0x10
	regNumQueues           = 0x12
	regDeviceStatus        = 0x14
	regConfigGeneration    = 0x15
	regQueueSelect         = 0x16
	regQueueSize           = 0x18
	regQueueMSIXVector     = 0x1a
	regQueueEnable         = 0x1c
	regQueueNotifyOff      = 0x1e
	regQueueDesc           = 0x20
	regQueueDriver         = 0x28
	regQueueDevice         = 0x30
	regQueueNotifyData     = 0x38
	regQueueReset          = 0x3a
)

// IOEventRegistrar lets the VMM bypass the MMIO exit path for queue
// notifications. Attach arranges that a guest write of any width and value
// to the MMIO address gpa calls kick (from any goroutine; the VMM's
// ioeventfd reader). Detach undoes it. The transport attaches every
// queue's notify address when BAR 0 is mapped and detaches them when it
// is unmapped or moved; a failed Attach is harmless, since the transport
// also serves notify writes that reach it as MMIO exits.
type IOEventRegistrar interface {
	Attach(gpa uint64, kick func()) error
	Detach(gpa uint64) error
}

// IOEventFDRegistrar is an IOEventRegistrar that can also make a guest
// write to gpa signal an eventfd of the caller's (it keeps a duplicate of
// fd; Detach undoes it). The transport uses it for a virtio.Handoff
// device, so the driver's kicks reach the other process with no vio code
// on the way.
type IOEventFDRegistrar interface {
	IOEventRegistrar
	AttachFD(gpa uint64, fd int) error
}

// Options configures a Transport.
type Options struct {
	// Router delivers MSI-X messages (may also be set later with
	// MSIX().SetRouter, before the guest enables MSI-X).
	Router pci.MSIRouter
	// INTx is the function's legacy interrupt line, used while MSI-X is
	// disabled. nil: the function has no INTx pin.
	INTx irq.Line
	// IOEvents, if set, gets the notify addresses (see IOEventRegistrar).
	IOEvents IOEventRegistrar
	// SubsystemVendorID and SubsystemID default to 1af4:1100.
	SubsystemVendorID, SubsystemID uint16
	// Class defaults by device type (network, storage, ...).
	Class uint32
	// MSIXVectors defaults to one per queue plus one for configuration
	// changes.
	MSIXVectors int
	// AccessPlatform offers VIRTIO_F_ACCESS_PLATFORM: the device's
	// addresses are translated by the platform (an IOMMU: mem is then the
	// device's view through it). Without it Linux hands the device guest
	// physical addresses and bypasses the IOMMU's DMA mappings.
	AccessPlatform bool
	// Express makes the function a PCI Express root complex integrated
	// endpoint (4 KiB configuration space, PCIe capability), which is
	// what a q35-style machine presents.
	Express bool
	// SRIOV, if set, makes the function an SR-IOV physical function
	// (sriov.go): VIRTIO_F_SR_IOV is offered and the guest can enable
	// virtual functions, each a Transport that NewVF builds with
	// VirtualFunction set. Implies Express.
	SRIOV *SRIOV
	// VirtualFunction, if set, makes the function VF Index of PF: its
	// configuration space and BAR placement follow the PF's SR-IOV
	// capability, and it offers Function Level Reset. Implies Express.
	VirtualFunction *VirtualFunction
	// OnEvent, if set, hears of the device's life as the driver drives
	// it: "activated" (DRIVER_OK started it), "reset" (the driver reset
	// an active device) and "needs-reset" (a broken queue or a failed
	// activation set DEVICE_NEEDS_RESET; err says why). It is called
	// with the transport's lock held or from a device goroutine, so it
	// must return at once and not call the transport.
	OnEvent func(event string, err error)
}

type queueState struct {
	size                 uint16
	enabled              bool
	desc, driver, device uint64
}

// Transport is a virtio device on PCI. It implements pci.Function.
type Transport struct {
	*pci.Config
	dev      virtio.Device
	handoff  virtio.Handoff // dev, when its queues are served elsewhere
	mem      memory.DMA     // the device's view of guest memory, handed to queues and the device
	msix     *pci.MSIX
	maxSizes []uint16
	offered  uint64
	ioevents IOEventRegistrar
	onEvent  func(string, error) // nil: nobody listens
	barSize  uint64
	tableOff uint64
	pbaOff   uint64
	pciCap   int // offset of the VIRTIO_PCI_CAP_PCI_CFG capability

	// Read by interrupt and notify paths without mu (they run on device
	// goroutines that Reset, holding mu, may be waiting for).
	isr          atomic.Uint32
	needsReset   atomic.Bool
	generation   atomic.Uint32
	configVector atomic.Uint32
	queueVectors []atomic.Uint32
	active       atomic.Pointer[[]*virtio.Queue]
	barBase      atomic.Uint64 // BAR 0's mapped address, 0 when unmapped
	stats        struct {
		activations, resets, activateErrors, brokenQueues, interruptErrors atomic.Uint64
	}

	mu          sync.Mutex
	devFeatSel  uint32
	drvFeatSel  uint32
	drvFeatures uint64
	status      uint8
	queueSel    uint16
	queues      []queueState
	activated   bool
	lastError   error
	// resetting is non-nil while the device's Reset runs on a goroutine
	// of its own (see resetDeviceLocked); it is closed when the reset is
	// complete and device_status reads 0 again.
	resetting chan struct{}
}

var (
	_ pci.Function = (*Transport)(nil)
	_ bus.Device   = (*barDevice)(nil)
)

// ErrConfig reports bad transport options or device description.
var ErrConfig = errors.New("virtiopci: bad configuration")

func defaultClass(t virtio.DeviceType) uint32 {
	switch t {
	case virtio.TypeNet:
		return 0x020000 // network controller, ethernet
	case virtio.TypeBlock, virtio.TypeSCSI:
		return 0x010000 // mass storage, SCSI (what QEMU reports)
	case virtio.TypeConsole:
		return 0x078000 // communication controller, other
	case virtio.TypeInput:
		return 0x098000 // input device, other
	case virtio.TypeGPU:
		return 0x038000 // display controller, other
	}
	return 0xff0000 // unclassified
}

func roundPage(n uint64) uint64 { return (n + 0xfff) &^ 0xfff }

// barLayout places the MSI-X table and PBA after the notify registers of
// nq queues and returns BAR 0's size (a power of two) and their offsets.
func barLayout(nq, nvec int) (size, tableOff, pbaOff uint64) {
	tableOff = NotifyOffset + roundPage(uint64(nq)*NotifyOffMultiplier)
	pbaOff = tableOff + roundPage(uint64(nvec)*pci.MSIXEntrySize)
	end := pbaOff + roundPage(uint64((nvec+63)/64*8))
	size = 1
	for size < end {
		size <<= 1
	}
	return size, tableOff, pbaOff
}

// New wraps dev in a virtio-pci function. Add the result to a pci.Root.
func New(dev virtio.Device, mem memory.DMA, opts Options) (*Transport, error) {
	maxSizes := append([]uint16(nil), dev.QueueMaxSizes()...)
	nq := len(maxSizes)
	if nq == 0 || nq > MaxQueues {
		return nil, fmt.Errorf("%w: %d queues", ErrConfig, nq)
	}
	for i, s := range maxSizes {
		if s == 0 || s&(s-1) != 0 || s > virtio.MaxQueueSize {
			return nil, fmt.Errorf("%w: queue %d max size %d", ErrConfig, i, s)
		}
	}
	nvec := opts.MSIXVectors
	if nvec == 0 {
		nvec = nq + 1
	}
	if nvec < 1 || nvec > pci.MaxMSIXVectors {
		return nil, fmt.Errorf("%w: %d MSI-X vectors", ErrConfig, nvec)
	}
	h := pci.Header{
		VendorID:          VendorID,
		DeviceID:          DeviceIDBase + uint16(dev.Type()),
		Revision:          RevisionID,
		Class:             opts.Class,
		SubsystemVendorID: opts.SubsystemVendorID,
		SubsystemID:       opts.SubsystemID,
	}
	if h.Class == 0 {
		h.Class = defaultClass(dev.Type())
	}
	if h.SubsystemVendorID == 0 {
		h.SubsystemVendorID = VendorID
	}
	if h.SubsystemID == 0 {
		h.SubsystemID = DefaultSubsys
	}
	if opts.INTx != nil {
		h.InterruptPin = 1
	}
	h.Express = opts.Express || opts.SRIOV != nil || opts.VirtualFunction != nil
	cfg := pci.NewConfig
	if vf := opts.VirtualFunction; vf != nil {
		cfg = func(h pci.Header) *pci.Config { return vf.PF.NewVFConfig(vf.Index, h) }
	}
	t := &Transport{
		Config:       cfg(h),
		dev:          dev,
		mem:          mem,
		handoff:      handoffOf(dev),
		maxSizes:     maxSizes,
		offered:      offered(dev, opts),
		ioevents:     opts.IOEvents,
		onEvent:      opts.OnEvent,
		queueVectors: make([]atomic.Uint32, nq),
		queues:       make([]queueState, nq),
	}
	if opts.INTx != nil {
		t.SetINTxLine(opts.INTx)
	}
	t.barSize, t.tableOff, t.pbaOff = barLayout(nq, nvec)

	// Capabilities, in the order Linux's virtio_pci_modern looks for them.
	caps := []struct {
		typ          uint8
		off, length  uint64
		notifyExtras bool
	}{
		{CapCommonCfg, CommonOffset, CommonLength, false},
		{CapNotifyCfg, NotifyOffset, uint64(nq) * NotifyOffMultiplier, true},
		{CapISRCfg, ISROffset, ISRLength, false},
		{CapDeviceCfg, DeviceOffset, DeviceLength, false},
	}
	for _, c := range caps {
		body := vendorCap(c.typ, BARIndex, uint32(c.off), uint32(c.length))
		if c.notifyExtras {
			body = binary.LittleEndian.AppendUint32(body, NotifyOffMultiplier)
		}
		if _, err := t.AddCapability(pci.CapVendor, body, nil, pci.CapabilityHooks{}); err != nil {
			return nil, err
		}
	}
	// VIRTIO_PCI_CAP_PCI_CFG: a window into BAR 0 through configuration
	// space, for firmware that cannot map BARs yet. bar, offset, length
	// and pci_cfg_data are guest-writable.
	body := append(vendorCap(CapPCICfg, 0, 0, 0), 0, 0, 0, 0)
	wmask := make([]byte, len(body))
	wmask[2] = 0xff // bar
	for i := 6; i < 18; i++ {
		wmask[i] = 0xff // offset, length, pci_cfg_data
	}
	off, err := t.AddCapability(pci.CapVendor, body, wmask, pci.CapabilityHooks{Read: t.pciCfgRead, Write: t.pciCfgWrite})
	if err != nil {
		return nil, err
	}
	t.pciCap = off

	t.msix, err = pci.NewMSIX(t.Config, nvec,
		pci.MSIXLocation{BAR: BARIndex, Offset: uint32(t.tableOff)},
		pci.MSIXLocation{BAR: BARIndex, Offset: uint32(t.pbaOff)}, opts.Router)
	if err != nil {
		return nil, err
	}
	if t.handoff != nil {
		// The device moves its back-end between the irqfd and vio's
		// own delivery as the guest masks and unmasks vectors.
		t.msix.OnChange(t.handoff.InterruptsChanged)
	}
	if err := t.addExpress(opts); err != nil {
		return nil, err
	}
	if err := t.SetBAR(BARIndex, pci.BAR{Kind: pci.BARMem64, Size: t.barSize, Device: (*barDevice)(t)}); err != nil {
		return nil, err
	}
	t.mu.Lock()
	t.resetLocked()
	t.mu.Unlock()
	return t, nil
}

// vendorCap returns a virtio_pci_cap after its first two bytes: cap_len,
// cfg_type, bar, id, padding[2], offset, length.
func vendorCap(typ, bar uint8, off, length uint32) []byte {
	n := 16
	if typ == CapNotifyCfg {
		n = 20
	}
	if typ == CapPCICfg {
		n = 20
	}
	b := []byte{byte(n), typ, bar, 0, 0, 0}
	b = binary.LittleEndian.AppendUint32(b, off)
	return binary.LittleEndian.AppendUint32(b, length)
}

// MSIX returns the function's MSI-X capability.
func (t *Transport) MSIX() *pci.MSIX { return t.msix }

// BARSize returns the size of BAR 0.
func (t *Transport) BARSize() uint64 { return t.barSize }

// NumQueues returns the number of queues.
func (t *Transport) NumQueues() int { return len(t.maxSizes) }

// NotifyAddr returns the guest physical address of queue q's notify
// register while BAR 0 is mapped.
func (t *Transport) NotifyAddr(q int) (uint64, bool) {
	base := t.barBase.Load()
	if base == 0 || q < 0 || q >= len(t.maxSizes) {
		return 0, false
	}
	return base + NotifyOffset + uint64(q)*NotifyOffMultiplier, true
}

// Notify is the driver's notification of queue q; the VMM calls it when
// q's ioeventfd fires. It only wakes the device's goroutine.
func (t *Transport) Notify(q int) {
	if t.handoff != nil {
		if q >= 0 && q < len(t.maxSizes) {
			t.handoff.Kick(q)
		}
		return
	}
	qs := t.active.Load()
	if qs == nil || q < 0 || q >= len(*qs) || (*qs)[q] == nil {
		return
	}
	(*qs)[q].Kick()
}

// BARMapped implements pci.Function: it keeps the ioeventfds on the
// notify addresses.
func (t *Transport) BARMapped(r pci.Region, mapped bool) {
	if r.BAR != BARIndex {
		return
	}
	if !mapped {
		t.barBase.Store(0)
		if t.ioevents != nil {
			for i := range t.maxSizes {
				_ = t.ioevents.Detach(r.Addr + NotifyOffset + uint64(i)*NotifyOffMultiplier)
			}
		}
		return
	}
	t.barBase.Store(r.Addr)
	if t.ioevents != nil {
		fdr, direct := t.ioevents.(IOEventFDRegistrar)
		for i := range t.maxSizes {
			gpa := r.Addr + NotifyOffset + uint64(i)*NotifyOffMultiplier
			if t.handoff != nil && direct {
				// The guest's doorbell signals the back-end's kick eventfd
				// itself: no exit, no vio goroutine per kick.
				_ = fdr.AttachFD(gpa, t.handoff.KickFD(i))
				continue
			}
			_ = t.ioevents.Attach(gpa, func() { t.Notify(i) })
		}
	}
}

// Stats are transport counters.
type Stats struct {
	Activations, Resets, ActivateErrors, BrokenQueues, InterruptErrors uint64
	LastError                                                          error
}

// Stats returns the transport's counters.
func (t *Transport) Stats() Stats {
	t.mu.Lock()
	last := t.lastError
	t.mu.Unlock()
	return Stats{
		Activations:     t.stats.activations.Load(),
		Resets:          t.stats.resets.Load(),
		ActivateErrors:  t.stats.activateErrors.Load(),
		BrokenQueues:    t.stats.brokenQueues.Load(),
		InterruptErrors: t.stats.interruptErrors.Load(),
		LastError:       last,
	}
}

// ConfigChanged tells the driver the device configuration changed: it
// bumps config_generation and raises the configuration interrupt.
func (t *Transport) ConfigChanged() {
	t.generation.Add(1)
	t.configInterrupt()
}

// interrupt delivers on vector if MSI-X is enabled, otherwise sets isrBit
// and asserts INTx.
func (t *Transport) interrupt(vector uint32, isrBit uint32) error {
	if vector != NoVector {
		err := t.msix.Notify(int(vector))
		if !errors.Is(err, pci.ErrMSIXDisabled) {
			return err
		}
	} else if t.msix.Enabled() {
		return nil // the driver asked for no interrupt
	}
	t.isr.Or(isrBit)
	return t.SetINTx(true)
}

func (t *Transport) configInterrupt() {
	if err := t.interrupt(t.configVector.Load(), 2); err != nil {
		t.stats.interruptErrors.Add(1)
	}
}

// queueTrigger is a queue's irq.Trigger.
type queueTrigger struct {
	t *Transport
	q int
}

func (qt queueTrigger) Trigger() error {
	err := qt.t.interrupt(qt.t.queueVectors[qt.q].Load(), 1)
	if err != nil {
		qt.t.stats.interruptErrors.Add(1)
	}
	return err
}

// queueBroken is the queues' OnBroken hook: DEVICE_NEEDS_RESET plus a
// configuration interrupt (spec 2.1.2).
func (t *Transport) queueBroken(err error) {
	t.stats.brokenQueues.Add(1)
	if !t.needsReset.Swap(true) {
		t.configInterrupt()
		t.event("needs-reset", err)
	}
}

func (t *Transport) event(name string, err error) {
	if t.onEvent != nil {
		t.onEvent(name, err)
	}
}

// resetLocked returns the virtio state to its initial values; the device
// must already be stopped.
func (t *Transport) resetLocked() {
	t.active.Store(nil)
	t.devFeatSel, t.drvFeatSel, t.drvFeatures = 0, 0, 0
	t.status, t.queueSel = 0, 0
	t.needsReset.Store(false)
	t.configVector.Store(NoVector)
	for i := range t.queues {
		t.queues[i] = queueState{size: t.maxSizes[i]}
		t.queueVectors[i].Store(NoVector)
	}
	t.isr.Store(0)
	_ = t.SetINTx(false)
}

// resetDeviceLocked is the driver writing 0 to device_status. A device
// that was never activated has no work to stop and is reset at once. An
// active one is reset on a goroutine of its own: stopping it may wait for
// requests in flight or a host sink, and the vCPU that wrote the status
// (perhaps through the PCI_CFG window, under the PCI root's lock, which
// every vCPU's configuration access needs) must not wait with it. The
// spec allows this: the driver MUST wait for device_status to read 0
// after writing 0 (Linux polls it), and until the reset is complete it
// reads the old, non-zero status. A driver that does not wait finds its
// next write to the common configuration held until the reset is done.
func (t *Transport) resetDeviceLocked() {
	if t.resetting != nil {
		return // already on its way
	}
	t.stats.resets.Add(1)
	if !t.activated {
		t.resetLocked()
		return
	}
	done := make(chan struct{})
	t.resetting = done
	go func() {
		// Reset stops the device's goroutines; they never take t.mu.
		t.dev.Reset()
		t.event("reset", nil) // before the status reads 0
		t.mu.Lock()
		t.activated = false
		t.resetLocked()
		t.resetting = nil
		t.mu.Unlock()
		close(done)
	}()
}

// lockSettled takes t.mu once no reset is in flight.
func (t *Transport) lockSettled() {
	t.mu.Lock()
	for t.resetting != nil {
		done := t.resetting
		t.mu.Unlock()
		<-done
		t.mu.Lock()
	}
}

// WaitReset waits until no device reset is in flight, or ctx ends.
func (t *Transport) WaitReset(ctx context.Context) error {
	t.mu.Lock()
	done := t.resetting
	t.mu.Unlock()
	if done == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("virtiopci: waiting for a device reset: %w", ctx.Err())
	}
}

func (t *Transport) failLocked(err error) {
	t.lastError = err
	t.stats.activateErrors.Add(1)
	if !t.needsReset.Swap(true) {
		t.configInterrupt()
		t.event("needs-reset", err)
	}
}

// featuresOK checks the driver's feature selection (spec 3.1.1): a subset
// of what was offered, and VERSION_1, since this device has no legacy
// interface.
func (t *Transport) featuresOK() bool {
	return t.drvFeatures&^t.offeredNow() == 0 && t.drvFeatures&virtio.FeatureVersion1 != 0
}

func (t *Transport) setStatusLocked(v uint8) {
	if v == 0 {
		t.resetDeviceLocked()
		return
	}
	old := t.status
	// The driver only ever adds bits (spec 2.1.1); a write that lacks some
	// is taken as adding the new ones.
	nw := old | v&^virtio.StatusDeviceNeedsReset
	if nw&virtio.StatusFeaturesOK != 0 && old&virtio.StatusFeaturesOK == 0 {
		if nw&virtio.StatusDriver == 0 || !t.featuresOK() {
			nw &^= virtio.StatusFeaturesOK // refused: the driver reads it back clear
		}
	}
	if nw&virtio.StatusDriverOK != 0 && old&virtio.StatusDriverOK == 0 {
		if nw&virtio.StatusFeaturesOK == 0 {
			nw &^= virtio.StatusDriverOK
		} else {
			t.status = nw
			t.activateLocked()
			return
		}
	}
	t.status = nw
}

func (t *Transport) activateLocked() {
	if t.needsReset.Load() {
		return
	}
	if t.handoff != nil {
		t.activateHandoffLocked()
		return
	}
	queues := make([]*virtio.Queue, len(t.queues))
	for i, qs := range t.queues {
		if !qs.enabled {
			continue
		}
		q, err := virtio.NewQueue(t.mem, virtio.QueueConfig{
			Size: qs.size, DescTable: qs.desc, AvailRing: qs.driver, UsedRing: qs.device,
		}, t.maxSizes[i], t.drvFeatures)
		if err != nil {
			t.failLocked(fmt.Errorf("virtiopci: queue %d: %w", i, err))
			return
		}
		queues[i] = q
	}
	if err := t.startLocked(queues); err != nil {
		t.failLocked(err)
	}
}

// offeredNow is the feature set offered to the driver. A Handoff device
// decides it and may learn it late (a restored vhost-user device learns
// what the guest saw from its state), so it is asked each time; the
// platform's bits are the transport's.
func (t *Transport) offeredNow() uint64 {
	if t.handoff != nil {
		return t.handoff.Features() | t.offered&(virtio.FeatureAccessPlatform|virtio.FeatureSRIOV)
	}
	return t.offered
}

// activateHandoffLocked is activateLocked for a virtio.Handoff device:
// the queue configuration is checked as for vio's own queues, then handed
// over with the transport's interrupt and needs-reset paths.
func (t *Transport) activateHandoffLocked() {
	if err := t.startHandoffLocked(); err != nil {
		t.failLocked(err)
	}
}

// startHandoffLocked hands the enabled queues to the Handoff device: on
// DRIVER_OK, and on a restore of a running device.
func (t *Transport) startHandoffLocked() error {
	cfgs := make([]*virtio.QueueConfig, len(t.queues))
	for i, qs := range t.queues {
		if !qs.enabled {
			continue
		}
		c := virtio.QueueConfig{Size: qs.size, DescTable: qs.desc, AvailRing: qs.driver, UsedRing: qs.device}
		// NewQueue's checks (size, alignment, rings inside guest memory);
		// the queue itself is not used.
		if _, err := virtio.NewQueue(t.mem, c, t.maxSizes[i], t.drvFeatures); err != nil {
			return fmt.Errorf("virtiopci: queue %d: %w", i, err)
		}
		cfgs[i] = &c
	}
	h := &virtio.HandoffActivation{
		Memory: t.mem, Features: t.drvFeatures, Queues: cfgs,
		Interrupt: func(q int) {
			if q >= 0 && q < len(t.queueVectors) {
				_ = queueTrigger{t, q}.Trigger()
			}
		},
		DirectInterrupt: func(q int) (int, bool) {
			if q < 0 || q >= len(t.queueVectors) {
				return -1, false
			}
			v := t.queueVectors[q].Load()
			if v == NoVector {
				return -1, false
			}
			return t.msix.DirectFD(int(v))
		},
		Broken:        t.queueBroken,
		ConfigChanged: t.ConfigChanged,
	}
	if err := t.handoff.ActivateHandoff(h); err != nil {
		return fmt.Errorf("virtiopci: activate: %w", err)
	}
	t.activated = true
	t.stats.activations.Add(1)
	t.event("activated", nil)
	return nil
}

// startLocked hands the queues to the device: on DRIVER_OK, and on a
// restore of a running device.
func (t *Transport) startLocked(queues []*virtio.Queue) error {
	for i, q := range queues {
		if q != nil {
			q.SetInterrupt(queueTrigger{t, i})
			q.OnBroken(t.queueBroken)
		}
	}
	a := &virtio.Activation{Memory: t.mem, Features: t.drvFeatures, Queues: queues, ConfigChanged: t.ConfigChanged}
	if err := t.dev.Activate(a); err != nil {
		return fmt.Errorf("virtiopci: activate: %w", err)
	}
	t.activated = true
	t.stats.activations.Add(1)
	t.active.Store(&queues)
	t.event("activated", nil)
	return nil
}

func (t *Transport) statusLocked() uint8 {
	s := t.status
	if t.needsReset.Load() {
		s |= virtio.StatusDeviceNeedsReset
	}
	return s
}

func (t *Transport) selectedLocked() *queueState {
	if int(t.queueSel) >= len(t.queues) {
		return nil
	}
	return &t.queues[t.queueSel]
}

// commonImage renders the common configuration structure.
func (t *Transport) commonImageLocked() [CommonLength]byte {
	var b [CommonLength]byte
	le := binary.LittleEndian
	le.PutUint32(b[regDeviceFeatureSelect:], t.devFeatSel)
	if t.devFeatSel < 2 {
		le.PutUint32(b[regDeviceFeature:], uint32(t.offeredNow()>>(32*t.devFeatSel)))
	}
	le.PutUint32(b[regDriverFeatureSelect:], t.drvFeatSel)
	if t.drvFeatSel < 2 {
		le.PutUint32(b[regDriverFeature:], uint32(t.drvFeatures>>(32*t.drvFeatSel)))
	}
	le.PutUint16(b[regConfigMSIXVector:], uint16(t.configVector.Load()))
	le.PutUint16(b[regNumQueues:], uint16(len(t.queues)))
	b[regDeviceStatus] = t.statusLocked()
	b[regConfigGeneration] = uint8(t.generation.Load())
	le.PutUint16(b[regQueueSelect:], t.queueSel)
	if q := t.selectedLocked(); q != nil {
		le.PutUint16(b[regQueueSize:], q.size)
		le.PutUint16(b[regQueueMSIXVector:], uint16(t.queueVectors[t.queueSel].Load()))
		if q.enabled {
			le.PutUint16(b[regQueueEnable:], 1)
		}
		le.PutUint16(b[regQueueNotifyOff:], t.queueSel)
		le.PutUint64(b[regQueueDesc:], q.desc)
		le.PutUint64(b[regQueueDriver:], q.driver)
		le.PutUint64(b[regQueueDevice:], q.device)
	} else {
		// Unimplemented queues read back zero size and no vector.
		le.PutUint16(b[regQueueMSIXVector:], NoVector)
	}
	return b
}

func (t *Transport) readCommon(off uint64, data []byte) {
	t.mu.Lock()
	img := t.commonImageLocked()
	t.mu.Unlock()
	clear(data)
	if off < CommonLength {
		copy(data, img[off:])
	}
}

type field struct{ off, size uint64 }

// writableFields in offset order; a write touching several applies them in
// this order.
var writableFields = []field{
	{regDeviceFeatureSelect, 4}, {regDriverFeatureSelect, 4}, {regDriverFeature, 4},
	{regConfigMSIXVector, 2}, {regDeviceStatus, 1}, {regQueueSelect, 2},
	{regQueueSize, 2}, {regQueueMSIXVector, 2}, {regQueueEnable, 2},
	{regQueueDesc, 8}, {regQueueDriver, 8}, {regQueueDevice, 8},
}

// writeCommon merges the write into a rendering of the structure and
// commits each field it touched, so any access width works (Linux writes
// the 64-bit queue addresses as two 32-bit halves).
func (t *Transport) writeCommon(off uint64, data []byte) {
	if off >= CommonLength {
		return
	}
	t.lockSettled()
	defer t.mu.Unlock()
	img := t.commonImageLocked()
	n := copy(img[off:], data)
	end := off + uint64(n)
	le := binary.LittleEndian
	for _, f := range writableFields {
		if f.off >= end || f.off+f.size <= off {
			continue
		}
		var v uint64
		switch f.size {
		case 1:
			v = uint64(img[f.off])
		case 2:
			v = uint64(le.Uint16(img[f.off:]))
		case 4:
			v = uint64(le.Uint32(img[f.off:]))
		case 8:
			v = le.Uint64(img[f.off:])
		}
		t.commitLocked(f.off, v)
	}
}

func (t *Transport) validVector(v uint64) uint32 {
	if v == NoVector || v >= uint64(t.msix.Vectors()) {
		return NoVector // the driver reads back NO_VECTOR: refused
	}
	return uint32(v)
}

func (t *Transport) commitLocked(reg, v uint64) {
	switch reg {
	case regDeviceFeatureSelect:
		t.devFeatSel = uint32(v)
		return
	case regDriverFeatureSelect:
		t.drvFeatSel = uint32(v)
		return
	case regDriverFeature:
		if t.status&virtio.StatusFeaturesOK != 0 || t.drvFeatSel >= 2 {
			return // features are frozen once FEATURES_OK is set
		}
		shift := 32 * t.drvFeatSel
		t.drvFeatures = t.drvFeatures&^(0xffffffff<<shift) | v<<shift
		return
	case regConfigMSIXVector:
		t.configVector.Store(t.validVector(v))
		return
	case regDeviceStatus:
		t.setStatusLocked(uint8(v))
		return
	case regQueueSelect:
		t.queueSel = uint16(v)
		return
	}
	q := t.selectedLocked()
	if q == nil || q.enabled || t.status&virtio.StatusDriverOK != 0 {
		// Queue configuration is frozen once enabled (spec 4.1.4.3.2);
		// without VIRTIO_F_RING_RESET there is no way back short of a
		// device reset.
		return
	}
	switch reg {
	case regQueueSize:
		q.size = uint16(v) // validated at DRIVER_OK, against the maximum
	case regQueueMSIXVector:
		t.queueVectors[t.queueSel].Store(t.validVector(v))
	case regQueueEnable:
		if v == 1 {
			q.enabled = true
		}
	case regQueueDesc:
		q.desc = v
	case regQueueDriver:
		q.driver = v
	case regQueueDevice:
		q.device = v
	}
}

func (t *Transport) readISR(data []byte) {
	clear(data)
	v := t.isr.Swap(0) // reading ISR acknowledges the interrupt
	data[0] = byte(v)
	if v != 0 {
		_ = t.SetINTx(false)
	}
}

// barDevice serves BAR 0.
type barDevice Transport

func inside(off uint64, n int, base, size uint64) bool {
	return off >= base && off-base < size && uint64(n) <= size-(off-base)
}

func (b *barDevice) Read(off uint64, data []byte) {
	t := (*Transport)(b)
	switch {
	case inside(off, len(data), CommonOffset, CommonLength):
		t.readCommon(off-CommonOffset, data)
	case off == ISROffset && len(data) <= ISRLength:
		t.readISR(data)
	case inside(off, len(data), DeviceOffset, DeviceLength):
		t.dev.ReadConfig(off-DeviceOffset, data)
	case inside(off, len(data), t.tableOff, t.msix.TableSize()):
		t.msix.ReadTable(off-t.tableOff, data)
	case inside(off, len(data), t.pbaOff, t.msix.PBASize()):
		t.msix.ReadPBA(off-t.pbaOff, data)
	default:
		clear(data) // notify registers and gaps read as zero
	}
}

func (b *barDevice) Write(off uint64, data []byte) {
	t := (*Transport)(b)
	switch {
	case inside(off, len(data), CommonOffset, CommonLength):
		t.writeCommon(off-CommonOffset, data)
	case inside(off, len(data), NotifyOffset, uint64(len(t.maxSizes))*NotifyOffMultiplier):
		t.Notify(int((off - NotifyOffset) / NotifyOffMultiplier))
	case inside(off, len(data), DeviceOffset, DeviceLength):
		t.dev.WriteConfig(off-DeviceOffset, data)
	case inside(off, len(data), t.tableOff, t.msix.TableSize()):
		t.msix.WriteTable(off-t.tableOff, data)
	}
}

// The VIRTIO_PCI_CAP_PCI_CFG capability: cap bytes 4 (bar), 8..11
// (offset), 12..15 (length), 16..19 (pci_cfg_data).
func (t *Transport) pciCfgWindow() (off uint64, n int, ok bool) {
	b := t.Bytes(t.pciCap, 20)
	le := binary.LittleEndian
	bar, off, n := b[4], uint64(le.Uint32(b[8:])), int(le.Uint32(b[12:]))
	if bar != BARIndex || n != 1 && n != 2 && n != 4 || !inside(off, n, 0, t.barSize) {
		return 0, 0, false
	}
	return off, n, true
}

func (t *Transport) pciCfgRead(capOff int, data []byte) {
	if capOff+len(data) <= 16 {
		return
	}
	off, n, ok := t.pciCfgWindow()
	var buf [4]byte
	if ok {
		(*barDevice)(t).Read(off, buf[:n])
	}
	for i := range data {
		if p := capOff + i; p >= 16 && p < 20 {
			data[i] = buf[p-16]
		}
	}
}

func (t *Transport) pciCfgWrite(capOff int, data []byte) {
	if capOff+len(data) <= 16 {
		return
	}
	off, n, ok := t.pciCfgWindow()
	if !ok {
		return
	}
	buf := t.Bytes(t.pciCap+16, 4)
	(*barDevice)(t).Write(off, buf[:n])
}

// offered is what the transport offers the driver: the device's features,
// the transport's, and ACCESS_PLATFORM when asked for.
func offered(dev virtio.Device, opts Options) uint64 {
	f := dev.Features() | virtio.TransportFeatures
	if handoffOf(dev) != nil {
		f = dev.Features() // the device decides the transport bits too
	}
	if opts.AccessPlatform {
		f |= virtio.FeatureAccessPlatform
	}
	if opts.SRIOV != nil {
		f |= virtio.FeatureSRIOV
	}
	return f
}

// handoffOf returns dev as a virtio.Handoff, or nil.
func handoffOf(dev virtio.Device) virtio.Handoff {
	if h, ok := dev.(virtio.Handoff); ok {
		return h
	}
	return nil
}
