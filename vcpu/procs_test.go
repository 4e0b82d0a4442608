package vcpu

import (
	"runtime"
	"testing"
)

// TestReserveP: each vCPU thread adds a P on top of the process's own, and
// an explicit GOMAXPROCS is left alone.
func TestReserveP(t *testing.T) {
	t.Setenv("GOMAXPROCS", "")
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	reserveP()
	reserveP()
	procs.Lock()
	want := procs.base + procs.running
	running := procs.running
	procs.Unlock()
	if running < 2 {
		t.Fatalf("%d vCPU threads counted after two reservations", running)
	}
	if got := runtime.GOMAXPROCS(0); got < want {
		t.Errorf("GOMAXPROCS %d with %d vCPU threads on a base of %d", got, running, want-running)
	}
	releaseP()
	releaseP()
	procs.Lock()
	after := procs.running
	procs.Unlock()
	if after != running-2 {
		t.Errorf("%d vCPU threads counted after releasing two of %d", after, running)
	}

	t.Setenv("GOMAXPROCS", "1")
	before := runtime.GOMAXPROCS(0)
	reserveP()
	defer releaseP()
	if got := runtime.GOMAXPROCS(0); got != before {
		t.Errorf("GOMAXPROCS moved from %d to %d though the environment sets it", before, got)
	}
}
