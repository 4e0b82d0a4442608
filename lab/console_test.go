package lab

import (
	"strings"
	"testing"
)

// TestConsoleLockup: a lasting soft lockup in L1's kernel closes locked; a
// short one (a host stall) does not.
func TestConsoleLockup(t *testing.T) {
	short := "[  30.1] watchdog: BUG: soft lockup - CPU#0 stuck for 23s! [ksoftirqd/0:14]\n"
	c := &console{ready: make(chan struct{}), locked: make(chan struct{})}
	c.read(strings.NewReader(short))
	select {
	case <-c.locked:
		t.Fatal("a 23 s stall counted as a lockup")
	default:
	}
	c = &console{ready: make(chan struct{}), locked: make(chan struct{})}
	c.read(strings.NewReader(short + "[ 120.5] watchdog: BUG: soft lockup - CPU#1 stuck for 82s! [rcu_preempt:15]\n" +
		"[ 150.5] watchdog: BUG: soft lockup - CPU#1 stuck for 108s! [rcu_preempt:15]\n"))
	select {
	case <-c.locked:
	default:
		t.Fatal("an 82 s lockup was not noticed")
	}
}
