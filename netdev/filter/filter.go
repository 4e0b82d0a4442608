// Package filter is the base of network interposers: back-ends that wrap
// a back-end (a firewall, a pcap mirror, an IDS hook, a bond member).
// Base forwards every call, optional capabilities included, so an
// interposer overrides only what it changes; Drop helps it drop frames
// in either direction while keeping WriteFrames' and ReadFrames'
// contracts.
package filter

import (
	"errors"
	"time"

	"github.com/viovmm/vio/netdev"
)

// Base forwards to Inner. It always implements netdev.Offloader and
// netdev.QueueSwitch: over a back-end without them it reports no offloads
// and accepts only what such a back-end implies (SetRecvOffloads(0),
// SetQueueEnabled(true)), which is the same contract.
type Base struct {
	Inner netdev.Backend
}

var (
	_ netdev.Backend     = (*Base)(nil)
	_ netdev.Offloader   = (*Base)(nil)
	_ netdev.QueueSwitch = (*Base)(nil)
)

// ReadFrames forwards.
func (b *Base) ReadFrames(bufs [][]byte, sizes []int) (int, error) {
	return b.Inner.ReadFrames(bufs, sizes)
}

// WriteFrames forwards.
func (b *Base) WriteFrames(frames [][][]byte) (int, error) { return b.Inner.WriteFrames(frames) }

// SetReadDeadline forwards.
func (b *Base) SetReadDeadline(t time.Time) error { return b.Inner.SetReadDeadline(t) }

// Close closes Inner.
func (b *Base) Close() error { return b.Inner.Close() }

// Offloads forwards, or reports none.
func (b *Base) Offloads() netdev.Offloads {
	if o, ok := b.Inner.(netdev.Offloader); ok {
		return o.Offloads()
	}
	return 0
}

// ErrNoOffloads is SetRecvOffloads' answer when the inner back-end has
// none to restrict.
var ErrNoOffloads = errors.New("filter: the back-end has no offloads")

// SetRecvOffloads forwards.
func (b *Base) SetRecvOffloads(o netdev.Offloads) error {
	if of, ok := b.Inner.(netdev.Offloader); ok {
		return of.SetRecvOffloads(o)
	}
	if o != 0 {
		return ErrNoOffloads
	}
	return nil
}

// SetQueueEnabled forwards.
func (b *Base) SetQueueEnabled(on bool) error {
	if q, ok := b.Inner.(netdev.QueueSwitch); ok {
		return q.SetQueueEnabled(on)
	}
	return nil
}

// WriteKept writes to inner the frames for which keep returns true and
// treats the others as sent (a filter losing a frame is a cable losing
// it): the count it returns is over all of frames, and an error concerns
// frames[n] as WriteFrames' contract says. scratch is reused between
// calls to avoid allocating; pass the previous return's slice or nil.
func WriteKept(inner netdev.Backend, frames [][][]byte, keep func(i int) bool, scratch []int) (int, []int, error) {
	idx := scratch[:0]
	for i := range frames {
		if keep(i) {
			idx = append(idx, i)
		}
	}
	if len(idx) == len(frames) {
		n, err := inner.WriteFrames(frames)
		return n, idx, err
	}
	kept := make([][][]byte, len(idx))
	for j, i := range idx {
		kept[j] = frames[i]
	}
	for done := 0; done < len(kept); {
		n, err := inner.WriteFrames(kept[done:])
		done += n
		if err != nil {
			// kept[done] failed: the frames before it, dropped or
			// sent, are done.
			return idx[done], idx, err
		}
	}
	return len(frames), idx, nil
}

// Compact keeps the frames of bufs[:n] for which keep returns true,
// moving them to the front, and returns how many remain. It copies rather
// than swapping buffers: a caller may care which buffer is which.
func Compact(bufs [][]byte, sizes []int, n int, keep func(i int) bool) int {
	m := 0
	for i := range n {
		if !keep(i) {
			continue
		}
		if i != m {
			sizes[m] = copy(bufs[m], bufs[i][:sizes[i]])
		}
		m++
	}
	return m
}

// Linear returns the concatenation of a gather list, without copying when
// it has one part; buf is scratch space reused when it is big enough.
func Linear(parts [][]byte, buf []byte) ([]byte, []byte) {
	if len(parts) == 1 {
		return parts[0], buf
	}
	buf = buf[:0]
	for _, p := range parts {
		buf = append(buf, p...)
	}
	return buf, buf
}
