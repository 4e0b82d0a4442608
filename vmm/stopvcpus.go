package vmm

import (
	"errors"
	"io/fs"
	"net"
	"time"

	"github.com/viovmm/vio/vcpu"
)

// vcpuStopTimeout bounds how long stopping a VM waits for its vCPUs, and
// then for its devices: a vCPU stuck in a device's handler (or in the
// kernel) must not make SIGTERM, the API's shutdown or a reboot hang.
var vcpuStopTimeout = 10 * time.Second

// stopVCPUs stops every vCPU, waiting at most vcpuStopTimeout. Stuck
// vCPUs are reported (which, and in what access) and left behind: their
// threads end with the process, and Close then leaves alone what they may
// still touch (their fds, the VM, guest memory).
func (v *VM) stopVCPUs() {
	if v.group == nil || v.vcpusStuck.Load() {
		return // stuck ones were reported, and waiting again is no use
	}
	err := v.group.StopWithin(vcpuStopTimeout)
	var se *vcpu.StuckError
	if errors.As(err, &se) {
		v.vcpusStuck.Store(true)
		v.log.Error("vCPUs did not stop: shutting down without them; the VM's memory and file descriptors are left to the process's exit",
			"err", err)
	}
}

// runClosers closes what the VM holds, last opened first. With vCPUs
// stuck, a device they are stuck in may not close either: the closers
// then get vcpuStopTimeout, and whatever is still closing after it is
// left behind with a message.
func (v *VM) runClosers() {
	run := func() {
		for i := len(v.closers) - 1; i >= 0; i-- {
			// A disk's final flush fails here, among others: the data
			// the guest wrote last may be gone, which must be said.
			if err := v.closers[i].Close(); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, fs.ErrClosed) {
				v.log.Error("closing the VM's devices and back-ends", "err", err)
			}
		}
	}
	if !v.vcpusStuck.Load() {
		run()
		return
	}
	done := make(chan struct{})
	go func() { run(); close(done) }()
	select {
	case <-done:
	case <-time.After(vcpuStopTimeout):
		v.log.Error("devices did not close within the timeout after a vCPU got stuck; leaving them", "timeout", vcpuStopTimeout)
	}
}
