package virtio

import "github.com/viovmm/vio/memory"

// Handoff is implemented by a Device whose queues are served by another
// process (a vhost-user back-end) rather than by vio's Queue code. The
// transport then hands such a device the queue configuration and a way
// to interrupt the driver, instead of Queues:
//
//   - the device, not the transport, decides every offered feature bit,
//     the transport's ones included (TransportFeatures are not added):
//     the back-end implements the rings, so EVENT_IDX or INDIRECT_DESC
//     are offered only if it does;
//   - a driver notification of queue q must reach KickFD(q): the VMM's
//     ioeventfd signals that eventfd directly when it can (no vio code
//     runs per kick), and a notification that reaches the transport as
//     an MMIO exit is passed on with Kick(q);
//   - ActivateHandoff replaces Activate on DRIVER_OK.
//
// Reset keeps Device's meaning: when it returns, the other process no
// longer touches the rings or signals interrupts. The interface is small
// on purpose: existing devices do not implement it and see no change.
type Handoff interface {
	Device
	// KickFD returns the eventfd for queue q's notifications, valid for
	// the device's life (the VMM may duplicate it, never closes it).
	KickFD(q int) int
	// Kick signals KickFD(q).
	Kick(q int)
	// ActivateHandoff is Activate for a Handoff device. Like Activate
	// it must not block on I/O: it validates and starts the hand-over;
	// a later failure goes to h.Broken.
	ActivateHandoff(h *HandoffActivation) error
	// InterruptsChanged tells the device the guest changed its MSI-X
	// set-up (enabled or disabled it, masked or unmasked a vector, moved
	// one): HandoffActivation.DirectInterrupt may answer differently now.
	// It is called on a vCPU and must not block.
	InterruptsChanged()
}

// HandoffActivation is what a Handoff device gets when the driver is
// ready.
type HandoffActivation struct {
	// Memory is guest memory as the device reaches it (the device reads
	// a ring's used index there when its back-end restarts).
	Memory memory.DMA
	// Features is the negotiated feature set.
	Features uint64
	// Queues holds one entry per queue of QueueMaxSizes: the driver's
	// configuration, checked like NewQueue checks it, or nil for a queue
	// the driver did not enable.
	Queues []*QueueConfig
	// Interrupt raises queue q's interrupt as the driver set it up
	// (MSI-X vector, masking and pending bits, or INTx and ISR). Safe
	// from any goroutine until Reset returns.
	Interrupt func(q int)
	// DirectInterrupt returns an eventfd that raises queue q's interrupt
	// with no vio code on the way (a KVM irqfd), when there is one now:
	// MSI-X on, the queue's vector neither masked nor function-masked,
	// and routed to an irqfd. Otherwise (ok false) interrupts must go
	// through Interrupt, which keeps them pending while masked. The
	// answer changes only after InterruptsChanged.
	DirectInterrupt func(q int) (fd int, ok bool)
	// Broken sets DEVICE_NEEDS_RESET, with err saying why; safe from any
	// goroutine until Reset returns.
	Broken func(err error)
	// ConfigChanged is Activation.ConfigChanged.
	ConfigChanged func()
}
