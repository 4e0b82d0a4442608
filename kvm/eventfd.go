package kvm

import (
	"encoding/binary"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// EventFD is a Linux eventfd, the currency of KVM's fast paths: IRQFD
// (a write injects an interrupt) and IOEventFD (a guest write signals it).
// It is non-blocking at the OS level and registered with Go's poller, so
// Wait parks a goroutine, not a thread, and Close wakes a blocked Wait.
type EventFD struct {
	f  *os.File
	fd int // kept apart: os.File.Fd would switch the descriptor to blocking mode
}

// NewEventFD creates an eventfd with counter 0.
func NewEventFD() (*EventFD, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("kvm: eventfd: %w", err)
	}
	return &EventFD{f: os.NewFile(uintptr(fd), "eventfd"), fd: fd}, nil
}

// FD returns the descriptor to hand to VM.IRQFD or VM.IOEventFD. It stays
// owned by the EventFD.
func (e *EventFD) FD() int { return e.fd }

// Trigger adds 1 to the counter, waking a waiter (and, when registered with
// VM.IRQFD, injecting the interrupt). It has irq.Trigger's signature.
func (e *EventFD) Trigger() error { return e.Add(1) }

// Add adds n to the counter.
func (e *EventFD) Add(n uint64) error {
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], n)
	if _, err := e.f.Write(b[:]); err != nil {
		return fmt.Errorf("kvm: eventfd write: %w", err)
	}
	return nil
}

// Wait blocks until the counter is non-zero, then returns it and resets it
// to 0. After Close it returns an error wrapping os.ErrClosed.
func (e *EventFD) Wait() (uint64, error) {
	var b [8]byte
	if _, err := e.f.Read(b[:]); err != nil {
		return 0, fmt.Errorf("kvm: eventfd read: %w", err)
	}
	return binary.NativeEndian.Uint64(b[:]), nil
}

// SetReadDeadline makes a Wait blocked now or later return
// os.ErrDeadlineExceeded once t has passed (a zero t waits forever
// again): how a goroutine that waits on an eventfd it does not own is
// told to stop without closing it.
func (e *EventFD) SetReadDeadline(t time.Time) error { return e.f.SetReadDeadline(t) }

// Close closes the eventfd. Deassign it from KVM first.
func (e *EventFD) Close() error { return e.f.Close() }
