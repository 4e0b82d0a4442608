package events

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Sink writes a Monitor's events to w as JSON lines (one event, one
// line, one Write), from a goroutine of its own: a slow or stalled w
// costs the VMM nothing but the events its subscription has to drop.
type Sink struct {
	sub  *Subscription
	w    io.Writer
	done chan struct{}

	mu     sync.Mutex
	err    error // the first write error
	failed uint64
}

// NewSink starts writing m's events to w, buffering up to buffer of them
// (DefaultBuffer if buffer <= 0).
func NewSink(m *Monitor, w io.Writer, buffer int) *Sink {
	k := &Sink{sub: m.Subscribe(buffer), w: w, done: make(chan struct{})}
	go k.run()
	return k
}

func (k *Sink) run() {
	defer close(k.done)
	for e := range k.sub.Events() {
		b, err := json.Marshal(e)
		if err == nil {
			b = append(b, '\n')
			_, err = k.w.Write(b)
		}
		if err != nil {
			k.mu.Lock()
			if k.err == nil {
				k.err = err
			}
			k.failed++
			k.mu.Unlock()
		}
	}
}

// Dropped reports the events this sink lost to a full buffer.
func (k *Sink) Dropped() uint64 { return k.sub.Dropped() }

// Close stops taking events and waits up to timeout for the queued ones
// to be written. It reports the first write error, or that w did not
// take the rest in time. It does not close w.
func (k *Sink) Close(timeout time.Duration) error {
	k.sub.Close()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-k.done:
	case <-t.C:
		return fmt.Errorf("event monitor: the consumer took no events for %v; %d are left unwritten", timeout, len(k.sub.ch))
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.err != nil {
		return fmt.Errorf("event monitor: %d events could not be written: %w", k.failed, k.err)
	}
	return nil
}

// Target is where --event-monitor sends events: a file or an inherited
// descriptor, in Cloud Hypervisor's form path=FILE or fd=N.
type Target struct {
	Path string // a file, created or truncated
	FD   int    // a descriptor vio inherited; -1 when Path is set
}

// ErrTarget is a --event-monitor value vio cannot use.
var ErrTarget = errors.New("bad --event-monitor")

// ParseTarget parses path=FILE or fd=N.
func ParseTarget(s string) (Target, error) {
	k, v, ok := strings.Cut(s, "=")
	switch {
	case !ok:
		return Target{}, fmt.Errorf("%w %q: write path=FILE or fd=N", ErrTarget, s)
	case k == "path":
		if v == "" {
			return Target{}, fmt.Errorf("%w %q: the path is empty; write path=FILE", ErrTarget, s)
		}
		return Target{Path: v, FD: -1}, nil
	case k == "fd":
		fd, err := strconv.Atoi(v)
		if err != nil || fd < 0 {
			return Target{}, fmt.Errorf("%w %q: fd must be a descriptor number, e.g. fd=3", ErrTarget, s)
		}
		return Target{FD: fd}, nil
	}
	return Target{}, fmt.Errorf("%w %q: unknown key %q; write path=FILE or fd=N", ErrTarget, s, k)
}

// Open opens the target for writing: a path is created (mode 0600) or
// truncated; a descriptor must be open and writable.
func (t Target) Open() (*os.File, error) {
	if t.Path != "" {
		f, err := os.OpenFile(t.Path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrTarget, err)
		}
		return f, nil
	}
	fl, err := unix.FcntlInt(uintptr(t.FD), unix.F_GETFL, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: fd %d is not an open descriptor of vio: %v", ErrTarget, t.FD, err)
	}
	if fl&unix.O_ACCMODE == unix.O_RDONLY {
		return nil, fmt.Errorf("%w: fd %d is open read-only; pass a writable descriptor", ErrTarget, t.FD)
	}
	unix.CloseOnExec(t.FD)
	return os.NewFile(uintptr(t.FD), fmt.Sprintf("fd %d", t.FD)), nil
}
