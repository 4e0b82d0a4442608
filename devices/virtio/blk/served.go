package blk

import (
	"context"
	"fmt"
	"sync"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/state"
	"github.com/viovmm/vio/virtio"
)

var _ virtio.QueueServer = (*Device)(nil)

// servedQueue is one queue served through ServeQueue: the same server an
// Activation runs per queue, with a gate of its own so that Stop can drain
// this queue alone.
type servedQueue struct {
	d    *Device
	q    *virtio.Queue
	stop chan struct{}
	gate *state.Gate
	done chan struct{} // closed when the server and its workers are gone
	once sync.Once
}

// ServeQueue implements virtio.QueueServer: a vhost-user back-end starts
// and stops the rings of a virtio-blk device one at a time. features is
// the negotiated set; it applies to the whole device (every ring of one
// front-end negotiates the same).
func (d *Device) ServeQueue(index int, q *virtio.Queue, features uint64) (virtio.ServedQueue, error) {
	if index < 0 || index >= d.cfg.NumQueues {
		return nil, fmt.Errorf("%w: queue %d of %d", ErrConfig, index, d.cfg.NumQueues)
	}
	if q == nil {
		return nil, ErrNoQueue
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.run != nil {
		return nil, ErrActive
	}
	d.served++
	d.negotiate.Store(features)
	sq := &servedQueue{d: d, q: q, stop: make(chan struct{}), gate: state.NewGate(), done: make(chan struct{})}
	s := newServer(d, q, sq.stop)
	s.gate = sq.gate
	sq.gate.Join()
	go func() {
		defer close(sq.done)
		defer sq.gate.Leave()
		s.serve()
	}()
	return sq, nil
}

// Stop implements virtio.ServedQueue: the gate's pause is the drain (the
// server completes what is in flight, pushes it and signals before it
// parks; a broken queue's server has left the gate instead).
func (sq *servedQueue) Stop() {
	sq.once.Do(func() {
		_ = sq.gate.Pause(context.Background()) // cannot fail without a deadline
		sq.finish()
	})
	<-sq.done
}

// Abort implements virtio.ServedQueue. Like Reset, it drains the
// back-end while it waits, so that a front-end that went away is not
// waited for at a rate limit (a throttle, or its client's limit in a
// QoS scheduler); what is drained fails, and nobody reads its status.
func (sq *servedQueue) Abort() {
	sq.once.Do(func() {
		if dr, ok := sq.d.be.(block.Drainer); ok {
			dr.Drain(true)
			defer dr.Drain(false)
		}
		sq.finish()
	})
	<-sq.done
}

// finish stops the server and waits for it and its workers, then rolls
// the queue's counters into the device's.
func (sq *servedQueue) finish() {
	close(sq.stop)
	<-sq.done
	st := sq.q.Stats()
	d := sq.d
	d.stats.interrupts.Add(st.Interrupts)
	d.stats.badChains.Add(st.BadChains)
	d.mu.Lock()
	d.served--
	d.mu.Unlock()
}
