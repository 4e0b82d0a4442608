// Package faults is a fault-injecting interposer: errors (EIO, ENOSPC, ...)
// at byte ranges, on the Nth request or with a seeded probability; added
// latency; torn writes; a fail-stop after which the child has vanished.
// Rules change at run time through a small thread-safe API (AddRule,
// RemoveRule, SetRules, Rules, Restart), which the control plane and the
// tests of replication and multipath drive.
//
// With no rule the node forwards every request unchanged (one atomic load
// on the way), so it passes the back-end conformance suite.
package faults

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/filter"
)

// ErrStopped is matched by every request after a fail-stop. It wraps
// syscall.EIO (a vanished disk is an I/O error to the guest).
var ErrStopped = fmt.Errorf("faults: the disk has fail-stopped: %w", syscall.EIO)

// Error is an injected error; it matches its Errno with errors.Is.
type Error struct {
	Rule  string // the rule's name, or its index
	Errno syscall.Errno
}

func (e *Error) Error() string { return fmt.Sprintf("faults: rule %s injected %v", e.Rule, e.Errno) }
func (e *Error) Unwrap() error { return e.Errno }

// RuleStatus is a rule with its counters.
type RuleStatus struct {
	Rule
	Seen uint64 // matching requests
	Hits uint64 // requests it hit
}

type rule struct {
	Rule
	label string
	seen  atomic.Uint64
	hits  atomic.Uint64
}

// Node injects faults into the requests to its child.
type Node struct {
	filter.Base
	rules   atomic.Pointer[[]*rule] // immutable slice; replaced whole
	stopped atomic.Bool
	closed  atomic.Bool
	done    chan struct{} // closed by Close: cuts delays short

	mu  sync.Mutex // serialises rule changes and guards rng
	rng *rand.Rand
}

var _ filter.Interposer = (*Node)(nil)

// New returns child behind a fault node with no rule, drawing
// probabilities and delays from a generator seeded with seed. The node has
// the child's capabilities and owns it.
func New(child block.Backend, seed uint64) block.Backend {
	return filter.View(NewNode(child, seed), filter.CapsOf(child))
}

// NewNode returns the node itself (New wraps it in a view).
func NewNode(child block.Backend, seed uint64) *Node {
	n := &Node{Base: filter.Base{Child: child}, done: make(chan struct{}), rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
	n.rules.Store(&[]*rule{})
	return n
}

// Of returns the fault node behind a back-end made by New, or nil.
func Of(b block.Backend) *Node {
	n, _ := filter.Unwrap(b).(*Node)
	return n
}

// AddRule adds a rule after the existing ones.
func (n *Node) AddRule(r Rule) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	old := *n.rules.Load()
	nr, err := n.prepare(r, len(old), old)
	if err != nil {
		return err
	}
	rs := append(append([]*rule(nil), old...), nr)
	n.rules.Store(&rs)
	return nil
}

// SetRules replaces every rule (an empty list removes them all); counters
// start from zero.
func (n *Node) SetRules(rules []Rule) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	var rs []*rule
	for i, r := range rules {
		nr, err := n.prepare(r, i, rs)
		if err != nil {
			return err
		}
		rs = append(rs, nr)
	}
	n.rules.Store(&rs)
	return nil
}

func (n *Node) prepare(r Rule, i int, others []*rule) (*rule, error) {
	label := r.Name
	if label == "" {
		label = fmt.Sprint(i)
	}
	if err := r.normalise(); err != nil {
		return nil, fmt.Errorf("fault rule %s: %w", label, err)
	}
	if r.Name != "" {
		for _, o := range others {
			if o.Name == r.Name {
				return nil, fmt.Errorf("fault rule %q: the name is already used by another rule", r.Name)
			}
		}
	}
	return &rule{Rule: r, label: label}, nil
}

// RemoveRule removes the rule with this name and reports whether there was
// one.
func (n *Node) RemoveRule(name string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	old := *n.rules.Load()
	var rs []*rule
	for _, r := range old {
		if r.Name != name {
			rs = append(rs, r)
		}
	}
	n.rules.Store(&rs)
	return len(rs) != len(old)
}

// Rules returns the rules with their counters.
func (n *Node) Rules() []RuleStatus {
	var out []RuleStatus
	for _, r := range *n.rules.Load() {
		out = append(out, RuleStatus{Rule: r.Rule, Seen: r.seen.Load(), Hits: r.hits.Load()})
	}
	return out
}

// FailStop makes the child vanish now, as a FailStop rule does.
func (n *Node) FailStop() { n.stopped.Store(true) }

// Stopped reports whether the node has fail-stopped.
func (n *Node) Stopped() bool { return n.stopped.Load() }

// Restart brings a fail-stopped child back (a path that returns).
func (n *Node) Restart() { n.stopped.Store(false) }

// effect is what the rules decided for one request.
type effect struct {
	err  error
	torn int64 // bytes of a write to pass before err; -1: none
}

// decide runs the rules for a request; it delays the caller when a rule
// says so. The zero effect (nil err, torn -1) means "forward".
func (n *Node) decide(op Op, off, length int64) effect {
	if n.closed.Load() {
		return effect{err: block.ErrClosed, torn: -1}
	}
	if n.stopped.Load() {
		return effect{err: ErrStopped, torn: -1}
	}
	rs := *n.rules.Load()
	for _, r := range rs {
		if !r.covers(op, off, length) {
			continue
		}
		seen := r.seen.Add(1)
		if r.Nth != 0 && seen != r.Nth {
			continue
		}
		if r.Probability != 0 && !n.draw(r.Probability) {
			continue
		}
		if r.Times != 0 {
			if h := r.hits.Add(1); h > r.Times {
				r.hits.Add(^uint64(0))
				continue
			}
		} else {
			r.hits.Add(1)
		}
		if d := n.delay(&r.Rule); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-n.done:
				t.Stop()
				return effect{err: block.ErrClosed, torn: -1}
			}
		}
		switch {
		case r.FailStop:
			n.stopped.Store(true)
			return effect{err: ErrStopped, torn: -1}
		case r.Torn > 0 && op == Write:
			return effect{err: &Error{Rule: r.label, Errno: r.Errno}, torn: min(r.Torn, max(length-1, 0))}
		case r.Errno != 0:
			return effect{err: &Error{Rule: r.label, Errno: r.Errno}, torn: -1}
		}
		// A delay-only rule: later rules may still act.
	}
	if n.stopped.Load() {
		return effect{err: ErrStopped, torn: -1}
	}
	return effect{torn: -1}
}

func (n *Node) draw(p float64) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.rng.Float64() < p
}

func (n *Node) delay(r *Rule) time.Duration {
	if r.DelayMax <= r.Delay {
		return r.Delay
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return r.Delay + time.Duration(n.rng.Int64N(int64(r.DelayMax-r.Delay)+1))
}

func vlen(bufs [][]byte) int64 {
	var t int64
	for _, b := range bufs {
		t += int64(len(b))
	}
	return t
}

func (n *Node) ReadAt(p []byte, off int64) (int, error) {
	if e := n.decide(Read, off, int64(len(p))); e.err != nil {
		return 0, e.err
	}
	return n.Child.ReadAt(p, off)
}

func (n *Node) ReadvAt(bufs [][]byte, off int64) (int, error) {
	if e := n.decide(Read, off, vlen(bufs)); e.err != nil {
		return 0, e.err
	}
	return block.ReadvAt(n.Child, bufs, off)
}

func (n *Node) WriteAt(p []byte, off int64) (int, error) {
	return n.WritevAt([][]byte{p}, off)
}

func (n *Node) WritevAt(bufs [][]byte, off int64) (int, error) {
	total := vlen(bufs)
	e := n.decide(Write, off, total)
	if e.err == nil {
		return block.WritevAt(n.Child, bufs, off)
	}
	if e.torn <= 0 {
		return 0, e.err
	}
	// A torn write: a prefix reaches the child. A request out of range
	// still fails as the child would fail it, whole.
	if err := block.CheckRange(off, total, n.Child.Size()); err != nil {
		return 0, err
	}
	prefix := cut(bufs, e.torn)
	m, err := block.WritevAt(n.Child, prefix, off)
	if err != nil {
		return m, err
	}
	return m, e.err
}

// cut returns the first k bytes of bufs as buffers.
func cut(bufs [][]byte, k int64) [][]byte {
	var out [][]byte
	for _, b := range bufs {
		if k <= 0 {
			break
		}
		take := min(int64(len(b)), k)
		out = append(out, b[:take])
		k -= take
	}
	return out
}

func (n *Node) Flush() error {
	if e := n.decide(Flush, 0, 0); e.err != nil {
		return e.err
	}
	return n.Child.Flush()
}

func (n *Node) Discard(off, length int64) error {
	if e := n.decide(Discard, off, length); e.err != nil {
		return e.err
	}
	return n.Base.Discard(off, length)
}

func (n *Node) WriteZeroes(off, length int64, unmap bool) error {
	if e := n.decide(Discard, off, length); e.err != nil {
		return e.err
	}
	return n.Base.WriteZeroes(off, length, unmap)
}

// Resize is not a request the rules see; a stopped disk cannot resize.
func (n *Node) Resize(size int64) error {
	if n.closed.Load() {
		return block.ErrClosed
	}
	if n.stopped.Load() {
		return ErrStopped
	}
	return n.Base.Resize(size)
}

// Close ends any injected delay and closes the child (even a fail-stopped
// one: the vanishing is simulated, the resources are real).
func (n *Node) Close() error {
	if n.closed.Swap(true) {
		return block.ErrClosed
	}
	close(n.done)
	return n.Child.Close()
}
