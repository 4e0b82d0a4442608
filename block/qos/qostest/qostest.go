// Package qostest has test doubles for the QoS interposer's tests: a
// back-end that records the order in which requests reach it and can
// hold writes back, so a test can see whether a flush overtook a write.
package qostest

import (
	"sync"

	"github.com/viovmm/vio/block"
)

// Recorder forwards to a child back-end and logs "write" and "flush" as
// each completes. While Hold is set, each write waits on it before
// reaching the child.
type Recorder struct {
	block.Backend
	Hold chan struct{}

	mu  sync.Mutex
	log []string
	// Started receives one value as each write starts waiting on Hold.
	Started chan struct{}
}

var _ block.Backend = (*Recorder)(nil)

// NewRecorder returns a recorder over child whose writes wait on hold
// (nil: they don't).
func NewRecorder(child block.Backend, hold chan struct{}) *Recorder {
	return &Recorder{Backend: child, Hold: hold, Started: make(chan struct{}, 64)}
}

func (r *Recorder) note(s string) {
	r.mu.Lock()
	r.log = append(r.log, s)
	r.mu.Unlock()
}

// Log returns what completed, in order.
func (r *Recorder) Log() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.log...)
}

func (r *Recorder) WriteAt(p []byte, off int64) (int, error) {
	if r.Hold != nil {
		r.Started <- struct{}{}
		<-r.Hold
	}
	n, err := r.Backend.WriteAt(p, off)
	r.note("write")
	return n, err
}

func (r *Recorder) Flush() error {
	err := r.Backend.Flush()
	r.note("flush")
	return err
}
