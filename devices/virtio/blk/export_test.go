package blk

import "testing"

// SetIdleHook makes f run whenever a queue's goroutine is about to sleep
// in a state where a worker may complete directly, for t's duration.
func SetIdleHook(t testing.TB, f func()) {
	idleHook.Store(&f)
	t.Cleanup(func() { idleHook.Store(nil) })
}

// SetPollHook makes f run whenever a queue's goroutine starts to poll the
// available ring, for t's duration.
func SetPollHook(t testing.TB, f func()) {
	pollHook.Store(&f)
	t.Cleanup(func() { pollHook.Store(nil) })
}
