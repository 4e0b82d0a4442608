package virtiopci

import (
	"context"
	"fmt"

	"github.com/viovmm/vio/pci"
	"github.com/viovmm/vio/state"
	"github.com/viovmm/vio/virtio"
)

// State is a virtio-pci function's state: the PCI side (configuration
// space, MSI-X table) and the virtio side (the common configuration
// structure, ISR, and the queues of a running device). The device's own
// state is a separate section.
type State struct {
	Config pci.ConfigState
	MSIX   pci.MSIXState

	Status              uint8 // device_status as the driver set it, without NEEDS_RESET
	NeedsReset          bool
	DeviceFeatureSelect uint32
	DriverFeatureSelect uint32
	DriverFeatures      uint64
	QueueSelect         uint16
	ConfigVector        uint16
	Generation          uint32
	ISR                 uint8
	// Activated is set when the device is running (DRIVER_OK was
	// accepted); each enabled queue then has its Ring.
	Activated bool
	Queues    []QueueState
}

// QueueState is one queue's registers and, on a running device, its ring
// positions.
type QueueState struct {
	Size    uint16
	Enabled bool
	Desc    uint64
	Driver  uint64
	Device  uint64
	Vector  uint16
	Ring    *virtio.QueueState `json:",omitempty"`
}

// StateVersion is the version of State this package writes.
const StateVersion = 1

var (
	_ state.Snapshottable = (*Transport)(nil)
	_ state.Pausable      = (*Transport)(nil)
)

// Pause pauses the device if it implements state.Pausable. A device that
// does not may still be saved when it happens to have nothing in flight
// (SaveState checks).
func (t *Transport) Pause(ctx context.Context) error {
	if err := t.WaitReset(ctx); err != nil {
		return err
	}
	if p, ok := t.dev.(state.Pausable); ok {
		return p.Pause(ctx)
	}
	return nil
}

// Resume resumes a paused device.
func (t *Transport) Resume() {
	if p, ok := t.dev.(state.Pausable); ok {
		p.Resume()
	}
}

// SaveState returns the function's state. Call it with the vCPUs stopped
// and the device paused: a queue with requests in flight refuses
// (virtio.ErrInFlight). A virtio.Handoff device's queues have no Ring:
// their positions are in the other process, and the device's own
// section saves them (a vhost-user device's, from GET_VRING_BASE).
func (t *Transport) SaveState() (State, error) {
	t.lockSettled()
	defer t.mu.Unlock()
	s := State{
		Config:              t.Config.SaveState(),
		MSIX:                t.msix.SaveState(),
		Status:              t.status,
		NeedsReset:          t.needsReset.Load(),
		DeviceFeatureSelect: t.devFeatSel,
		DriverFeatureSelect: t.drvFeatSel,
		DriverFeatures:      t.drvFeatures,
		QueueSelect:         t.queueSel,
		ConfigVector:        uint16(t.configVector.Load()),
		Generation:          t.generation.Load(),
		ISR:                 uint8(t.isr.Load()),
		Activated:           t.activated,
		Queues:              make([]QueueState, len(t.queues)),
	}
	var active []*virtio.Queue
	if p := t.active.Load(); p != nil {
		active = *p
	}
	for i, q := range t.queues {
		s.Queues[i] = QueueState{Size: q.size, Enabled: q.enabled, Desc: q.desc, Driver: q.driver, Device: q.device,
			Vector: uint16(t.queueVectors[i].Load())}
		if i < len(active) && active[i] != nil {
			rs, err := active[i].SaveState()
			if err != nil {
				return State{}, fmt.Errorf("virtiopci: queue %d: %w", i, err)
			}
			s.Queues[i].Ring = &rs
		}
	}
	return s, nil
}

const knownStatus = virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusDriverOK |
	virtio.StatusFeaturesOK | virtio.StatusFailed

func (t *Transport) checkVector(what string, v uint16) error {
	if v != NoVector && int(v) >= t.msix.Vectors() {
		return fmt.Errorf("%w: %s MSI-X vector %d, the function has %d", state.ErrInvalid, what, v, t.msix.Vectors())
	}
	return nil
}

// check validates s against this transport without changing anything.
func (t *Transport) check(s *State) error {
	if len(s.Queues) != len(t.queues) {
		return fmt.Errorf("%w: %d queues, this device has %d", state.ErrMismatch, len(s.Queues), len(t.queues))
	}
	if s.Status&^knownStatus != 0 {
		return fmt.Errorf("%w: device status %#x", state.ErrInvalid, s.Status)
	}
	if s.ISR&^3 != 0 {
		return fmt.Errorf("%w: ISR %#x", state.ErrInvalid, s.ISR)
	}
	if err := t.checkVector("config", s.ConfigVector); err != nil {
		return err
	}
	featuresOK := s.Status&virtio.StatusFeaturesOK != 0
	if off := t.offeredNow(); featuresOK && (s.DriverFeatures&^off != 0 || s.DriverFeatures&virtio.FeatureVersion1 == 0) {
		return fmt.Errorf("%w: negotiated features %#x are not a valid subset of the offered %#x", state.ErrInvalid, s.DriverFeatures, off)
	}
	if s.Status&virtio.StatusDriverOK != 0 && !featuresOK {
		return fmt.Errorf("%w: DRIVER_OK without FEATURES_OK", state.ErrInvalid)
	}
	if s.Activated && (s.Status&virtio.StatusDriverOK == 0 || s.NeedsReset) {
		return fmt.Errorf("%w: running device without DRIVER_OK, or needing reset", state.ErrInvalid)
	}
	for i, q := range s.Queues {
		if err := t.checkVector(fmt.Sprintf("queue %d", i), q.Vector); err != nil {
			return err
		}
		if !s.Activated || !q.Enabled || t.handoff != nil {
			if q.Ring != nil {
				return fmt.Errorf("%w: queue %d has ring state but is not running here", state.ErrInvalid, i)
			}
			continue
		}
		r := q.Ring
		if r == nil {
			return fmt.Errorf("%w: running queue %d has no ring state", state.ErrInvalid, i)
		}
		if r.Config() != (virtio.QueueConfig{Size: q.Size, DescTable: q.Desc, AvailRing: q.Driver, UsedRing: q.Device}) {
			return fmt.Errorf("%w: queue %d ring state disagrees with its registers", state.ErrInvalid, i)
		}
		if want := s.DriverFeatures & (virtio.FeatureEventIdx | virtio.FeatureIndirectDesc); r.Features() != want {
			return fmt.Errorf("%w: queue %d ring features %#x, negotiated %#x", state.ErrInvalid, i, r.Features(), want)
		}
	}
	return nil
}

// RestoreState restores a function saved by SaveState into this fresh
// transport (built from the same configuration, its device never
// started). Guest memory must already be restored. For a running device
// it recreates the queues where they stopped (validated like a driver's
// programming, see virtio.RestoreQueue) and activates the device, which
// then serves them; restore the device's own section right after. Call
// pci.Root.Resync once every function is restored so the BARs are
// registered where the guest put them. If RestoreState fails, discard
// the transport: parts of the state may be applied. A virtio.Handoff
// device that was running gets its activation (ActivateHandoff) with the
// queues' registers, checked as on DRIVER_OK; its own section, restored
// next, says where the rings stand.
func (t *Transport) RestoreState(s State) error {
	t.lockSettled()
	defer t.mu.Unlock()
	if t.activated || t.status != 0 {
		return fmt.Errorf("virtiopci: restore into a transport the guest already used; build a fresh one")
	}
	if err := t.check(&s); err != nil {
		return err
	}
	var queues []*virtio.Queue
	if s.Activated && t.handoff == nil {
		queues = make([]*virtio.Queue, len(t.queues))
		for i, q := range s.Queues {
			if !q.Enabled {
				continue
			}
			vq, err := virtio.RestoreQueue(t.mem, *q.Ring, t.maxSizes[i])
			if err != nil {
				return fmt.Errorf("virtiopci: queue %d: %w", i, err)
			}
			queues[i] = vq
		}
	}
	if err := t.Config.RestoreState(s.Config); err != nil {
		return err
	}
	if err := t.msix.RestoreState(s.MSIX); err != nil {
		return err
	}
	t.status = s.Status
	t.needsReset.Store(s.NeedsReset)
	t.devFeatSel, t.drvFeatSel, t.drvFeatures = s.DeviceFeatureSelect, s.DriverFeatureSelect, s.DriverFeatures
	t.queueSel = s.QueueSelect
	t.configVector.Store(uint32(s.ConfigVector))
	t.generation.Store(s.Generation)
	t.isr.Store(uint32(s.ISR))
	for i, q := range s.Queues {
		t.queues[i] = queueState{size: q.Size, enabled: q.Enabled, desc: q.Desc, driver: q.Driver, device: q.Device}
		t.queueVectors[i].Store(uint32(q.Vector))
	}
	switch {
	case s.Activated && t.handoff != nil:
		return t.startHandoffLocked()
	case s.Activated:
		return t.startLocked(queues)
	}
	return nil
}

// StateKind implements state.Snapshottable.
func (*Transport) StateKind() string { return "virtio-pci" }

// StateSample is a State for the codec's warm-up (state.Sampler).
func (*Transport) StateSample() any { return State{} }

// StateVersion implements state.Snapshottable.
func (*Transport) StateVersion() uint32 { return StateVersion }

// MarshalState implements state.Snapshottable.
func (t *Transport) MarshalState() ([]byte, error) { return state.Save(t.SaveState()) }

// UnmarshalState implements state.Snapshottable.
func (t *Transport) UnmarshalState(version uint32, data []byte) error {
	return state.Load(version, t.StateVersion(), data, t.RestoreState)
}
