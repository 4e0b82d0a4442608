package netdev

import (
	"os"
	"sync"
	"time"
)

// ReadDeadline is the read deadline of a back-end whose received frames
// wait on a channel (a user-mode stack, a stream socket, a bond, an IDS
// hook): SetReadDeadline stores it and Receive honours it, a deadline set
// while a read waits taking effect at once. The zero value has no deadline.
type ReadDeadline struct {
	mu   sync.Mutex
	t    time.Time
	wake chan struct{} // closed and replaced when the deadline changes
}

// Set sets the deadline (the zero time: none) and wakes a waiting Receive.
func (r *ReadDeadline) Set(t time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.t = t
	if r.wake != nil {
		close(r.wake)
	}
	r.wake = make(chan struct{})
}

func (r *ReadDeadline) get() (time.Time, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.wake == nil {
		r.wake = make(chan struct{})
	}
	return r.t, r.wake
}

// Receive waits for the next frame on in. It returns ErrClosed once done
// is closed (checked before the queue, so a closed back-end delivers
// nothing more) and os.ErrDeadlineExceeded once the deadline has passed.
func (r *ReadDeadline) Receive(done <-chan struct{}, in <-chan []byte) ([]byte, error) {
	return r.ReceiveUnless(done, nil, nil, in)
}

// ReceiveUnless is Receive for a back-end whose link can be lost: once
// lost is closed, a frame already queued is still delivered, and after
// that lostErr.
func (r *ReadDeadline) ReceiveUnless(done, lost <-chan struct{}, lostErr error, in <-chan []byte) ([]byte, error) {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	var first []byte
	for first == nil {
		select {
		case <-done:
			return nil, ErrClosed
		default:
		}
		dl, wake := r.get()
		var expired <-chan time.Time
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return nil, os.ErrDeadlineExceeded
			}
			if timer == nil {
				timer = time.NewTimer(d)
			} else {
				timer.Reset(d)
			}
			expired = timer.C
		}
		select {
		case <-done:
			return nil, ErrClosed
		case first = <-in:
		case <-wake:
		case <-expired:
		case <-lost:
			select {
			case first = <-in:
			default:
				return nil, lostErr
			}
		}
	}
	return first, nil
}
