// Package irq is how devices raise interrupts without knowing how they are
// delivered: an irqfd into KVM, a level-triggered legacy line, or a test
// recorder.
package irq

// Trigger injects one edge-triggered interrupt (an MSI-X vector, or a pulse
// on a line). It must be safe to call from any goroutine and must not block
// on the guest.
type Trigger interface {
	Trigger() error
}

// Line is a level-triggered interrupt line (legacy INTx, ISA IRQs).
// SetLevel(true) asserts it until SetLevel(false).
type Line interface {
	SetLevel(high bool) error
}
