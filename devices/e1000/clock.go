package e1000

import "time"

// Clock is the time source of the interrupt moderation timers (ITR,
// RDTR/RADV, TIDV/TADV). Tests substitute e1000test.Clock to step time by
// hand.
//
// AfterFunc runs f on its own goroutine once d has passed, unless the
// returned Timer is stopped first; Stop reports whether it prevented f.
// f may still run after a Stop that returned false, so the device checks
// that the timer it fires for is still the current one.
type Clock interface {
	Now() time.Time
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a pending AfterFunc.
type Timer interface {
	Stop() bool
}

// SystemClock is the wall clock.
type SystemClock struct{}

var _ Clock = SystemClock{}

// Now implements Clock.
func (SystemClock) Now() time.Time { return time.Now() }

// AfterFunc implements Clock.
func (SystemClock) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

// delayTimer is one interrupt delay: a packet timer that every event
// restarts (RDTR, TIDV) and an absolute timer that the first event after
// an interrupt starts and later events leave alone (RADV, TADV). When
// either expires, both stop and the cause is raised. Units are the
// registers' 1.024 µs.
type delayTimer struct {
	cause    uint32
	pkt, abs Timer
	seq      uint64 // identifies the current arming; stale callbacks compare it
}

const delayUnit = 1024 * time.Nanosecond

// stop cancels both timers.
func (t *delayTimer) stop() {
	if t.pkt != nil {
		t.pkt.Stop()
		t.pkt = nil
	}
	if t.abs != nil {
		t.abs.Stop()
		t.abs = nil
	}
	t.seq++
}
