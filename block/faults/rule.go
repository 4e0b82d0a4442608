package faults

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"syscall"
	"time"
)

// Op is a set of request kinds a rule applies to.
type Op uint8

const (
	Read  Op = 1 << iota
	Write    // WriteAt and WritevAt
	Flush
	Discard // Discard and WriteZeroes
)

var opNames = []struct {
	op   Op
	name string
}{{Read, "read"}, {Write, "write"}, {Flush, "flush"}, {Discard, "discard"}}

// ParseOps parses a list such as "read", "write" or "read+write+flush".
func ParseOps(s string) (Op, error) {
	var o Op
	for _, part := range strings.FieldsFunc(s, func(r rune) bool { return r == '+' || r == '|' || r == ' ' }) {
		found := false
		for _, n := range opNames {
			if n.name == part {
				o |= n.op
				found = true
			}
		}
		if !found {
			return 0, fmt.Errorf("request kind %q: want read, write, flush or discard (joined with +)", part)
		}
	}
	return o, nil
}

func (o Op) String() string {
	var parts []string
	for _, n := range opNames {
		if o&n.op != 0 {
			parts = append(parts, n.name)
		}
	}
	return strings.Join(parts, "+")
}

// Errnos are the errors a rule can inject, by name.
var Errnos = map[string]syscall.Errno{
	"EIO":       syscall.EIO,
	"ENOSPC":    syscall.ENOSPC,
	"EROFS":     syscall.EROFS,
	"ENODEV":    syscall.ENODEV,
	"ETIMEDOUT": syscall.ETIMEDOUT,
	"EDQUOT":    syscall.EDQUOT,
}

// ParseErrno returns the errno a name stands for.
func ParseErrno(name string) (syscall.Errno, error) {
	if e, ok := Errnos[strings.ToUpper(name)]; ok {
		return e, nil
	}
	names := make([]string, 0, len(Errnos))
	for n := range Errnos {
		names = append(names, n)
	}
	sort.Strings(names)
	return 0, fmt.Errorf("error %q: want one of %s", name, strings.Join(names, ", "))
}

// Rule describes one fault. A request matches a rule when its kind is in
// Ops and its byte range overlaps [Offset, Offset+Length) (flushes have no
// range: they match any rule with Flush in Ops); whether a matching request
// is hit depends on Nth, Times and Probability; a hit request suffers the
// rule's effects, in the order delay, then fail-stop, torn write or error.
type Rule struct {
	// Name identifies the rule for RemoveRule; optional, unique when given.
	Name string

	// Ops are the request kinds the rule applies to; zero means reads and
	// writes (writes for a torn-write rule). Read-only or write-only faults are Ops: Read or Ops: Write.
	Ops Op
	// Offset and Length bound the bytes the rule covers; Length 0 means
	// to the end of the disk.
	Offset, Length int64

	// Nth, when set, hits only the Nth matching request (counting from 1).
	Nth uint64
	// Times, when set, bounds the hits; the rule stays but no longer hits.
	Times uint64
	// Probability, when set (0 < p ≤ 1), hits a matching request with that
	// probability, drawn from the node's seeded generator.
	Probability float64

	// Effects (at least one).

	// Delay holds a hit request back before anything else happens; with
	// DelayMax set the delay is uniform in [Delay, DelayMax].
	Delay, DelayMax time.Duration
	// Errno fails a hit request (syscall.EIO when zero and the rule has no
	// other effect, and for a torn write).
	Errno syscall.Errno
	// Torn makes a hit write a torn one: its first Torn bytes (at most all
	// but the last byte) reach the child, then it fails with Errno.
	Torn int64
	// FailStop makes the child vanish at the hit: this and every later
	// request of the node fails with ErrStopped, until Restart.
	FailStop bool
}

func (r *Rule) normalise() error {
	if r.Ops == 0 {
		r.Ops = Read | Write
		if r.Torn > 0 {
			r.Ops = Write
		}
	}
	switch {
	case r.Ops&^(Read|Write|Flush|Discard) != 0:
		return errors.New("the rule names an unknown request kind")
	case r.Offset < 0 || r.Length < 0:
		return errors.New("the rule's offset and length must not be negative")
	case r.Probability < 0 || r.Probability > 1:
		return fmt.Errorf("probability %v: want a number above 0 and at most 1", r.Probability)
	case r.Delay < 0 || r.DelayMax < 0:
		return errors.New("a delay must not be negative")
	case r.DelayMax != 0 && r.DelayMax < r.Delay:
		return fmt.Errorf("delay range %v-%v: the maximum is below the minimum", r.Delay, r.DelayMax)
	case r.Torn < 0:
		return errors.New("torn: the prefix length must not be negative")
	case r.Torn > 0 && r.Ops&^Write != 0:
		return errors.New("a torn-write rule applies to writes only: give ops write")
	case r.Torn > 0 && r.FailStop:
		return errors.New("a rule either tears a write or fail-stops the disk, not both")
	}
	if r.Delay == 0 && r.DelayMax == 0 && r.Errno == 0 && r.Torn == 0 && !r.FailStop {
		r.Errno = syscall.EIO
	}
	if r.Torn > 0 && r.Errno == 0 {
		r.Errno = syscall.EIO
	}
	return nil
}

// covers reports whether a request of kind op on [off, off+n) matches.
func (r *Rule) covers(op Op, off, n int64) bool {
	if r.Ops&op == 0 {
		return false
	}
	if op == Flush {
		return true
	}
	if off+n <= r.Offset && n > 0 || n == 0 && off < r.Offset {
		return false
	}
	return r.Length == 0 || off < r.Offset+r.Length
}
