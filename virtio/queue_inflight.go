package virtio

import "fmt"

// InflightLog keeps, outside the queue, a record of the chains a device
// took and has not yet completed, so that a device that replaces this one
// after a crash (a restarted vhost-user back-end) can complete them: the
// avail ring cannot tell it, since the driver may have reused those
// entries, and the used ring only tells what did complete.
//
// The queue calls it with its lock held, in ring order: Taken for each
// chain it hands out (and for each malformed chain, which it completes
// at once), Completing just before it writes a used element, and Completed
// just after it published used.idx. The methods must not block or call
// back into the queue. A record that holds a head between Completing and
// Completed is ambiguous: whoever reads it after a crash decides from
// used.idx whether that head completed.
type InflightLog interface {
	Taken(head uint16)
	Completing(head uint16)
	Completed(head uint16, usedIdx uint16)
}

// ResumeInflight makes q, fresh from NewQueue and not yet served, continue
// a ring whose previous device stopped abruptly: used.idx in guest memory
// must be nextUsed, the driver's entries before nextAvail were all taken,
// and resubmit lists the heads taken and not completed (in the order they
// were taken). Next hands those out again, in that order, before any
// chain from the avail ring; log records what q takes and completes from
// now on (it may be nil only with an empty resubmit list).
//
// Everything here comes from a record a crashed process or a hostile
// front-end wrote: it is checked against the ring, and a mismatch is an
// error that leaves q unchanged.
func (q *Queue) ResumeInflight(log InflightLog, nextAvail, nextUsed uint16, resubmit []uint16) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := q.cfg.Size
	if d := nextAvail - nextUsed; d > n || int(d) != len(resubmit) {
		return fmt.Errorf("%w: %d chains in flight (next avail %d, next used %d) and %d to resubmit, queue size %d",
			ErrQueueConfig, d, nextAvail, nextUsed, len(resubmit), n)
	}
	if len(resubmit) > 0 && log == nil {
		return fmt.Errorf("%w: chains to resubmit without an inflight log", ErrQueueConfig)
	}
	for _, h := range resubmit {
		if h >= n {
			return fmt.Errorf("%w: resubmitted head %d ≥ queue size %d", ErrQueueConfig, h, n)
		}
	}
	used, err := q.mem.LoadUint16(q.cfg.UsedRing + 2)
	if err != nil {
		return fmt.Errorf("%w: used ring: %w", ErrQueueConfig, err)
	}
	if used != nextUsed {
		return fmt.Errorf("%w: used.idx in guest memory is %d, not %d", ErrQueueConfig, used, nextUsed)
	}
	q.nextAvail, q.nextUsed = nextAvail, nextUsed
	q.resubmit = append([]uint16(nil), resubmit...)
	q.inflight = log
	return nil
}

// nextResubmitLocked hands out the next chain to resubmit, if any is
// left; a malformed one is completed with length 0 and skipped, like a
// malformed chain from the avail ring.
func (q *Queue) nextResubmitLocked() (c *Chain, returnedBad bool, err error) {
	for len(q.resubmit) > 0 {
		head := q.resubmit[0]
		q.resubmit = q.resubmit[1:]
		// availPos never matches nextAvail-1: a resubmitted chain came
		// from no avail entry this queue took, so Unget refuses it.
		c, err := q.takeLocked(head, q.nextAvail)
		if err != nil {
			return nil, returnedBad, err
		}
		if c == nil {
			returnedBad = true
			continue
		}
		return c, returnedBad, nil
	}
	return nil, returnedBad, nil
}
