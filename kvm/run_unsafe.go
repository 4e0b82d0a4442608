package kvm

import (
	"sync/atomic"
	"unsafe"
)

// Views of the mmapped kvm_run page. The page is shared with the kernel,
// which writes it during KVM_RUN; the vCPU thread reads it between runs.
// Each view is checked against the page length before the cast, so a
// corrupt or truncated mapping can never yield an out-of-bounds pointer.

func runView[T any](run []byte, off uintptr) *T {
	var zero T
	if off+unsafe.Sizeof(zero) > uintptr(len(run)) {
		panic("kvm: kvm_run mapping shorter than kvm_run")
	}
	return (*T)(unsafe.Pointer(&run[off]))
}

func (c *VCPU) head() *runHead { return runView[runHead](c.run, 0) }

func exitView[T any](run []byte) *T { return runView[T](run, runExitOffset) }

// flagsWord is the naturally aligned 32-bit word holding
// request_interrupt_window (byte 0) and immediate_exit (byte 1). Another
// goroutine sets immediate_exit to kick the vCPU while the vCPU's thread may
// be touching request_interrupt_window, so both are updated with atomic
// read-modify-write on the whole word (Go has no 8-bit atomics).
func (c *VCPU) flagsWord() *atomic.Uint32 {
	return runView[atomic.Uint32](c.run, 0)
}
