package vcpu

import (
	"sync/atomic"

	"github.com/viovmm/vio/kvm"
)

// maxCountedReason bounds the per-reason array; reasons at or above it
// (none exist on x86 today) are counted under Other.
const maxCountedReason = 64

// counters are updated by the vCPU's thread and read by anyone.
type counters struct {
	exits               [maxCountedReason]atomic.Uint64
	other               atomic.Uint64
	unclaimedPIOReads   atomic.Uint64
	unclaimedPIOWrites  atomic.Uint64
	unclaimedMMIOReads  atomic.Uint64
	unclaimedMMIOWrites atomic.Uint64
	kicks               atomic.Uint64
	events              atomic.Uint64
}

func (c *counters) exit(r kvm.ExitReason) {
	if r < maxCountedReason {
		c.exits[r].Add(1)
	} else {
		c.other.Add(1)
	}
}

// Counters is a snapshot of a vCPU's counters, kept by the loop itself (so
// they exist on every kernel; kvm.Stats has KVM's own view).
type Counters struct {
	// Exits counts returns from KVM_RUN by exit reason; ExitIntr counts
	// interrupted runs (kicks, and signals the runtime sends).
	Exits map[kvm.ExitReason]uint64
	// OtherExits counts exit reasons too large to index (none exist today).
	OtherExits uint64

	UnclaimedPIOReads   uint64 // port reads no device claimed (returned all ones)
	UnclaimedPIOWrites  uint64 // port writes no device claimed (dropped)
	UnclaimedMMIOReads  uint64
	UnclaimedMMIOWrites uint64

	Kicks  uint64 // times Pause or Stop kicked the vCPU
	Events uint64 // events handed to the Handler
}

// Counters returns a snapshot of the vCPU's counters. Safe at any time.
func (r *Runner) Counters() Counters {
	c := &r.counters
	s := Counters{
		Exits:               make(map[kvm.ExitReason]uint64),
		OtherExits:          c.other.Load(),
		UnclaimedPIOReads:   c.unclaimedPIOReads.Load(),
		UnclaimedPIOWrites:  c.unclaimedPIOWrites.Load(),
		UnclaimedMMIOReads:  c.unclaimedMMIOReads.Load(),
		UnclaimedMMIOWrites: c.unclaimedMMIOWrites.Load(),
		Kicks:               c.kicks.Load(),
		Events:              c.events.Load(),
	}
	for i := range c.exits {
		if n := c.exits[i].Load(); n != 0 {
			s.Exits[kvm.ExitReason(i)] = n
		}
	}
	return s
}
