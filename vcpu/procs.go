package vcpu

import (
	"os"
	"runtime"
	"sync"
)

// A vCPU's thread spends its life inside KVM_RUN, and the Go scheduler
// counts a thread in a system call as still holding its P (the right to
// run Go code) until the runtime's monitor (sysmon) takes it back. With
// GOMAXPROCS at the host's CPU count, a VM with as many vCPUs as that
// leaves no idle P while its vCPUs run: sysmon then takes Ps back from the
// ioctls on every tick, and because it did something it keeps ticking at
// its fastest, every 20 µs, a host timer (hrtimer_wakeup) each time. A
// timer interrupt on a CPU that runs a guest is an exit. Measured in the
// lab (vio-bench emul -trace, a 2-vCPU guest on a 2-CPU host): 27 such
// timers per 4 KiB IDE read and 7.8 external-interrupt exits, against
// none and 2.0 for QEMU, whose vCPU threads hold nothing.
//
// So each running vCPU gets a P of its own on top of the ones the runtime
// chose for the process (its CPU count or cgroup quota): the vCPUs' Ps
// sit in their ioctls, the others stay free for the devices' goroutines,
// and sysmon, finding idle Ps, leaves short ioctls alone and backs off.
// An explicit GOMAXPROCS in the environment is the user's and is left as
// it is. GOMAXPROCS never goes down when vCPUs stop: lowering it stops the
// world and gains nothing.
var procs struct {
	sync.Mutex
	base    int // GOMAXPROCS before the first vCPU; 0 until then
	running int // vCPU threads alive
}

// reserveP accounts for one more vCPU thread.
func reserveP() {
	if os.Getenv("GOMAXPROCS") != "" {
		return
	}
	procs.Lock()
	defer procs.Unlock()
	if procs.base == 0 {
		procs.base = runtime.GOMAXPROCS(0)
	}
	procs.running++
	if want := procs.base + procs.running; runtime.GOMAXPROCS(0) < want {
		runtime.GOMAXPROCS(want)
	}
}

// releaseP accounts for a vCPU thread that ended.
func releaseP() {
	if os.Getenv("GOMAXPROCS") != "" {
		return
	}
	procs.Lock()
	procs.running--
	procs.Unlock()
}
