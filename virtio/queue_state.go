package virtio

import (
	"errors"
	"fmt"

	"github.com/viovmm/vio/memory"
)

// QueueState is what a split queue keeps besides guest memory: its
// configuration, the negotiated features that change its behaviour, and
// the device's positions in the rings. Ready is implied: only a queue the
// driver enabled exists as a *Queue.
type QueueState struct {
	Size      uint16
	DescTable uint64
	AvailRing uint64
	UsedRing  uint64
	EventIdx  bool
	Indirect  bool
	// NextAvail is the next avail ring entry the device will take;
	// NextUsed the next used ring entry it will write (used.idx). They
	// are equal when nothing is in flight, which SaveState requires.
	NextAvail uint16
	NextUsed  uint16
	// SignalledUsed is used.idx at the last interrupt decision, when
	// SignalValid; it keeps EVENT_IDX interrupt suppression exact.
	SignalledUsed uint16
	SignalValid   bool
	// Broken is set when the queue had failed; it stays failed (the
	// driver must reset the device) after a restore.
	Broken bool
}

// ErrInFlight reports a queue saved with requests the device took and has
// not completed: saving it would lose them. Pause the device first.
var ErrInFlight = errors.New("virtio: requests in flight")

// SaveState returns the queue's state. It refuses while requests are in
// flight (taken by Next and not yet Pushed): a restored queue could not
// complete them, so they would be lost.
func (q *Queue) SaveState() (QueueState, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if n := q.nextAvail - q.nextUsed; n != 0 {
		return QueueState{}, fmt.Errorf("%w: %d requests taken and not completed; pause the device before saving", ErrInFlight, n)
	}
	return QueueState{
		Size: q.cfg.Size, DescTable: q.cfg.DescTable, AvailRing: q.cfg.AvailRing, UsedRing: q.cfg.UsedRing,
		EventIdx: q.eventIdx, Indirect: q.indirect,
		NextAvail: q.nextAvail, NextUsed: q.nextUsed,
		SignalledUsed: q.signalledUsed, SignalValid: q.signalValid,
		Broken: q.broken != nil,
	}, nil
}

// Features returns the feature bits a QueueState's flags stand for, as
// NewQueue takes them.
func (s QueueState) Features() uint64 {
	var f uint64
	if s.EventIdx {
		f |= FeatureEventIdx
	}
	if s.Indirect {
		f |= FeatureIndirectDesc
	}
	return f
}

// Config returns the queue configuration a QueueState holds.
func (s QueueState) Config() QueueConfig {
	return QueueConfig{Size: s.Size, DescTable: s.DescTable, AvailRing: s.AvailRing, UsedRing: s.UsedRing}
}

// RestoreQueue recreates a saved queue over guest memory, which must
// already hold the snapshot's RAM. The state is hostile: it is validated
// exactly as a driver's programming is (NewQueue: size, alignment, rings
// inside RAM, maxSize), and against guest memory: used.idx there must be
// the saved NextUsed, or memory and device state come from different
// snapshots. The queue continues where the saved one stopped.
func RestoreQueue(mem memory.DMA, s QueueState, maxSize uint16) (*Queue, error) {
	q, err := NewQueue(mem, s.Config(), maxSize, s.Features())
	if err != nil {
		return nil, err
	}
	if s.NextAvail != s.NextUsed {
		return nil, fmt.Errorf("%w: state has %d requests in flight (next avail %d, next used %d)",
			ErrInFlight, s.NextAvail-s.NextUsed, s.NextAvail, s.NextUsed)
	}
	used, err := mem.LoadUint16(s.UsedRing + 2)
	if err != nil {
		return nil, fmt.Errorf("%w: used ring: %w", ErrQueueConfig, err)
	}
	if used != s.NextUsed {
		return nil, fmt.Errorf("%w: used.idx in guest memory is %d but the device state says %d: memory and device state are from different snapshots",
			ErrQueueConfig, used, s.NextUsed)
	}
	q.nextAvail, q.nextUsed = s.NextAvail, s.NextUsed
	q.signalledUsed, q.signalValid = s.SignalledUsed, s.SignalValid
	if s.Broken {
		q.broken = fmt.Errorf("%w: broken when saved", ErrQueueBroken)
		q.stats.LastError = q.broken
	}
	return q, nil
}

// Unget hands back the chain Next returned last, untouched, as if it had
// never been taken: the device will get it again from Next. A device
// that holds chains it has not started on (receive buffers waiting for
// data) uses it to come to rest with nothing in flight before a save.
// Chains go back newest first. It reports false, changing nothing, when c
// is not the newest chain taken from q or when entries were pushed since
// it was taken; the caller then completes c instead (a receive buffer
// with length 0).
func (q *Queue) Unget(c *Chain) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	// With an inflight log the chain is recorded as taken, and handing
	// it back would have to undo that: it is completed instead.
	if c == nil || c.from != q || q.broken != nil || q.inflight != nil || c.availPos+1 != q.nextAvail || c.usedAtTaken != q.nextUsed {
		return false
	}
	q.nextAvail--
	q.stats.Chains--
	q.taken[c.Head].remove(c)
	c.from = nil // a second Unget of the same chain must fail
	return true
}

// NextAvail returns the index of the next avail ring entry the device will
// take: after the device stopped with nothing in flight (ServedQueue.Stop),
// where a successor resumes (vhost-user's GET_VRING_BASE answer). A broken
// queue reports where it stopped taking.
func (q *Queue) NextAvail() uint16 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.nextAvail
}
