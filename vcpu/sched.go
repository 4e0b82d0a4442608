package vcpu

import (
	"os"
	"runtime"
	"sync"
)

// How a vCPU thread shares the Go scheduler.
//
// A vCPU's goroutine spends most of its life inside KVM_RUN. Made as an
// ordinary system call, the goroutine keeps its P (Go's right to run
// goroutines) but the runtime knows it is in a system call, and its
// monitor thread (sysmon) treats such a P as one to take back: after one
// monitor tick when no P is idle, or after 10 ms in any case. Each time
// it takes one, it also resets its own polling interval to 20 µs. With a
// P per CPU and a vCPU thread per CPU inside KVM_RUN, it takes one nearly
// every tick, so it never slows down. In the lab that was about 2800
// timer expiries a second (hrtimer_wakeup, none under QEMU), and each one
// that lands on a CPU running the guest is an exit: 4-8 external-interrupt
// exits per 4 KiB IDE read against QEMU's 2, 52 against 16 per MB on the
// e1000 (docs/devices.md). Adding Ps (GOMAXPROCS+1 per vCPU thread) alone
// did not help: an idle vCPU halted in KVM_RUN for 10 ms still had its P
// taken, and that reset the polling every time.
//
// So a vCPU thread enters the guest with a raw system call, which the
// scheduler does not see: the P stays the vCPU's, sysmon has nothing to
// take back and backs off to 10 ms. GOMAXPROCS is raised by one for each
// running vCPU thread, so that the rest of vio keeps the Ps it had. What
// it costs: sysmon still asks a goroutine that has run 10 ms without
// rescheduling to yield, by a signal (SIGURG), which takes the vCPU out
// of the guest (an ExitIntr) and through the scheduler once; that is at
// most 100 exits a second for a vCPU that stays in the guest. A stop of
// the world (for the GC) signals it the same way, so it never waits on
// the guest.
//
// It is the default since session 14; VIO_VCPU_RUN=syscall turns it off
// (the ordinary system call), for an A/B or if it ever misbehaves. It was
// opt-in for a session after two live-migration tests failed in one of
// three whole-suite passes with it on: one failure was the lab resetting
// the guest during a migration (which the test then missed: mended), the
// other a guest silent after its third hop, not seen again in the lab
// with it on (the migration tests passed). GOMAXPROCS set in the
// environment is the user's choice of how many threads run Go code; it
// keeps the ordinary system call too.
func holdP() bool {
	return os.Getenv("GOMAXPROCS") == "" && os.Getenv("VIO_VCPU_RUN") != "syscall"
}

// pMu orders GOMAXPROCS changes, each a read and a write.
var pMu sync.Mutex

// reserveP raises GOMAXPROCS by one, for a vCPU thread's life.
func reserveP() {
	pMu.Lock()
	defer pMu.Unlock()
	runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + 1)
}

// releaseP gives back reserveP's P.
func releaseP() {
	pMu.Lock()
	defer pMu.Unlock()
	if n := runtime.GOMAXPROCS(0); n > 1 {
		runtime.GOMAXPROCS(n - 1)
	}
}
