package uring

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Result is the outcome of one Op started on a Queue. N is what the kernel
// returned: a Read or Write may be short (N < Op.Len()), which is reported
// as such with a nil Err; the caller decides whether to continue.
type Result struct {
	Tag uint64
	N   int
	Err error
}

// Queue lets many goroutines share one Ring. A caller submits its own
// request under a submission lock (so a request entering never waits for a
// goroutine hop, and requests that complete inline, such as reads from the
// page cache, are reaped by the caller right after), while a completion
// goroutine blocks in the kernel for the rest. At most Depth requests are in
// flight; Start blocks when all slots are taken, which is the backpressure a
// block device wants. Memory is fixed at NewQueue: Depth slots and a channel
// of Depth free slot numbers.
type Queue struct {
	r     *Ring
	depth int
	slots []atomic.Pointer[request]
	free  chan uint32 // free slot indices; its capacity bounds the queue
	busy  atomic.Int64

	sqMu   sync.Mutex // the Ring's Prep and Publish; guards closed, broken
	closed bool
	broken error // why the completion side failed (see fail)
	// ringMu is held shared by callers entering the kernel outside sqMu
	// and exclusively to close the ring, so no io_uring_enter can meet an
	// unmapped ring or a reused descriptor number.
	ringMu   sync.RWMutex
	ringGone bool
	closing  chan struct{}
	cqMu     sync.Mutex // the Ring's completion side; guards the two below
	sawClose bool
	// onlyLoop stops callers reaping once Close has begun: the
	// completion goroutine must see Close's cancel itself, or it could
	// block in the kernel for a completion a caller already took.
	onlyLoop bool
	done     chan struct{}
	once     sync.Once
	doneCh   sync.Pool
}

type request struct {
	op    Op
	tag   uint64
	done  chan<- Result
	tries int
}

// closeTag marks the cancel Close submits; it is no slot index.
const closeTag = ^uint64(0)

// maxRetries bounds resubmission of requests the kernel failed with EAGAIN
// or EINTR, so a file that always says EAGAIN cannot spin the queue.
const maxRetries = 8

// NewQueue sets up a ring with depth entries and starts its completion
// goroutine.
func NewQueue(depth int) (*Queue, error) {
	if depth < 1 || depth > 4096 {
		return nil, fmt.Errorf("uring: queue depth %d, want 1 to 4096", depth)
	}
	r, err := New(uint32(depth))
	if err != nil {
		return nil, err
	}
	q := &Queue{
		r:       r,
		depth:   depth,
		slots:   make([]atomic.Pointer[request], depth),
		free:    make(chan uint32, depth),
		closing: make(chan struct{}),
		done:    make(chan struct{}),
	}
	q.doneCh.New = func() any { return make(chan Result, 1) }
	for i := range depth {
		q.free <- uint32(i)
	}
	go q.completeLoop()
	return q, nil
}

// Depth is the most requests the Queue keeps in flight.
func (q *Queue) Depth() int { return q.depth }

// Start submits op; its Result, carrying tag, is sent on done. done must
// have buffer room for every Result it will receive: a full done blocks the
// goroutine reaping completions. Start blocks while the queue is full and
// fails with ErrClosed once Close has begun. op's buffers belong to the
// kernel until its Result arrives.
func (q *Queue) Start(op Op, tag uint64, done chan<- Result) error {
	if err := op.check(); err != nil {
		return err
	}
	var i uint32
	select {
	case i = <-q.free:
	case <-q.closing:
		return ErrClosed
	}
	req := &request{op: op, tag: tag, done: done}
	q.sqMu.Lock()
	if q.closed {
		q.sqMu.Unlock()
		q.free <- i
		return ErrClosed
	}
	q.slots[i].Store(req)
	q.busy.Add(1)
	if err := q.r.Prep(&req.op, uint64(i)); err != nil {
		q.sqMu.Unlock()
		q.finish(i, req, 0, err)
		return nil
	}
	pos := q.r.Publish()
	q.sqMu.Unlock()
	// Enter outside sqMu so submitters on both cores overlap their
	// syscalls; one enter takes every published entry, so a caller whose
	// entry another caller already submitted skips the syscall.
	q.ringMu.RLock()
	if !q.ringGone {
		q.submitTo(pos)
	}
	q.ringMu.RUnlock()
	// Reads from the page cache complete inside io_uring_enter: reap them
	// here rather than wait for the completion goroutine's turn.
	if q.cqMu.TryLock() {
		if !q.onlyLoop {
			q.reapLocked()
		}
		q.cqMu.Unlock()
	}
	return nil
}

// submitLocked preps slot i and enters the kernel; sqMu is held. Prep
// cannot find the SQ full (at most depth slots, and every submit empties
// it), and EAGAIN/EBUSY from io_uring_enter mean the kernel is short of
// memory for the moment: back off briefly and retry, since a prepared entry
// cannot be taken back.
func (q *Queue) submitLocked(i uint32, req *request) {
	if err := q.r.Prep(&req.op, uint64(i)); err != nil {
		q.finish(i, req, 0, err)
		return
	}
	q.flushLocked()
}

func (q *Queue) flushLocked() { q.submitTo(q.r.Publish()) }

func (q *Queue) submitTo(pos uint32) {
	for backoff := time.Microsecond; ; backoff = min(2*backoff, time.Millisecond) {
		err := q.r.SubmitTo(pos)
		if err == nil || !transient(err) {
			// A ring that refuses entries for good also fails the
			// completion side's wait, which fails every request.
			return
		}
		time.Sleep(backoff)
	}
}

// transient reports whether io_uring_enter failed only for the moment
// (the kernel short of memory, or a full completion backlog).
func transient(err error) bool {
	return errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EBUSY)
}

// Do runs op and waits for it.
func (q *Queue) Do(op Op) (int, error) {
	ch := q.doneCh.Get().(chan Result)
	if err := q.Start(op, 0, ch); err != nil {
		q.doneCh.Put(ch)
		return 0, err
	}
	res := <-ch
	q.doneCh.Put(ch)
	return res.N, res.Err
}

// ReadAt, WriteAt and Sync are Do for the common cases.
func (q *Queue) ReadAt(fd int, p []byte, off int64) (int, error) {
	return q.Do(Op{Kind: Read, Fd: fd, Off: off, Bufs: [][]byte{p}})
}

func (q *Queue) WriteAt(fd int, p []byte, off int64) (int, error) {
	return q.Do(Op{Kind: Write, Fd: fd, Off: off, Bufs: [][]byte{p}})
}

func (q *Queue) Sync(fd int, datasync bool) error {
	_, err := q.Do(Op{Kind: Fsync, Fd: fd, Datasync: datasync})
	return err
}

// Close fails later Starts (and those blocked on a full queue) with
// ErrClosed, asks the kernel to cancel the requests it holds (they fail
// with ECANCELED), waits for every one of them to complete (their buffers
// are the kernel's until then; a regular-file read already running is not
// cancellable and finishes normally), and releases the ring. Close is
// idempotent.
func (q *Queue) Close() error {
	q.once.Do(func() {
		q.sqMu.Lock()
		q.closeLocked()
		q.sqMu.Unlock()
		q.cqMu.Lock()
		q.onlyLoop = true
		q.cqMu.Unlock()
		q.sqMu.Lock()
		// The SQ is empty between Starts, so there is room; a ring
		// whose completion side has failed ends without the cancel.
		if q.broken == nil && !q.ringGone {
			if err := q.r.Prep(&Op{Kind: CancelAll}, closeTag); err == nil {
				q.flushLocked()
			}
		}
		q.sqMu.Unlock()
	})
	<-q.done
	return nil
}

// finish delivers a result and frees the slot.
func (q *Queue) finish(i uint32, req *request, n int, err error) {
	q.slots[i].Store(nil)
	q.busy.Add(-1)
	q.free <- i
	req.done <- Result{Tag: req.tag, N: n, Err: err}
}

// reapLocked delivers every ready completion; cqMu is held.
func (q *Queue) reapLocked() {
	q.r.Reap(func(ud uint64, res int32) {
		if ud == closeTag {
			q.sawClose = true
			return
		}
		i := uint32(ud)
		req := q.slots[i].Load()
		if (res == -int32(syscall.EAGAIN) || res == -int32(syscall.EINTR)) && req.tries < maxRetries {
			req.tries++
			q.sqMu.Lock()
			if !q.closed {
				q.submitLocked(i, req)
				q.sqMu.Unlock()
				return
			}
			q.sqMu.Unlock()
		}
		n, err := result(&req.op, res)
		q.finish(i, req, n, err)
	})
}

// closeLocked stops new requests; sqMu is held.
func (q *Queue) closeLocked() {
	if !q.closed {
		q.closed = true
		close(q.closing)
	}
}

func (q *Queue) completeLoop() {
	defer close(q.done)
	for backoff := time.Microsecond; ; {
		if err := q.r.Wait(); err != nil {
			if transient(err) {
				// A completion backlog drains as we reap.
				q.cqMu.Lock()
				q.reapLocked()
				q.cqMu.Unlock()
				time.Sleep(backoff)
				backoff = min(2*backoff, time.Millisecond)
				continue
			}
			q.fail(err)
			break
		}
		backoff = time.Microsecond
		q.cqMu.Lock()
		q.reapLocked()
		end := q.sawClose && q.busy.Load() == 0
		q.cqMu.Unlock()
		if end {
			break
		}
	}
	q.release()
}

// fail ends a queue whose ring no longer waits for completions (which
// io_uring_enter refuses only when the ring itself is unusable): new
// requests get ErrClosed and those in flight ErrBroken, so no caller waits
// forever for a completion that cannot come.
func (q *Queue) fail(cause error) {
	q.sqMu.Lock()
	q.broken = cause
	q.closeLocked()
	q.sqMu.Unlock()
	q.cqMu.Lock()
	q.onlyLoop = true
	for i := range q.slots {
		if req := q.slots[i].Load(); req != nil {
			q.finish(uint32(i), req, 0, fmt.Errorf("%w: %w", ErrBroken, cause))
		}
	}
	q.cqMu.Unlock()
}

// release unmaps the ring once the completion goroutine is done with it.
func (q *Queue) release() {
	// Close may still be inside Submit for its cancel (whose completion
	// can arrive before io_uring_enter returns): unmap only after it.
	q.sqMu.Lock()
	q.ringMu.Lock()
	q.ringGone = true
	q.r.Close()
	q.ringMu.Unlock()
	q.sqMu.Unlock()
}
