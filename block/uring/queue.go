package uring

import (
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

// Queue lets many goroutines share one Ring. A submitter goroutine owns the
// submission side and a completion goroutine owns the completion side, so a
// request entering never waits for one leaving. At most Depth requests are
// in flight; Start blocks when all slots are taken, which is the
// backpressure a block device wants. Memory is fixed at New: Depth slots
// and two channels of Depth entries.
type Queue struct {
	r     *Ring
	depth int
	slots []atomic.Pointer[request]
	free  chan uint32 // free slot indices; its capacity bounds the queue
	sub   chan uint32 // slots handed to the submitter
	busy  atomic.Int64

	mu      sync.Mutex // orders sends on sub with Close
	closed  bool
	closing chan struct{}
	subDone chan struct{}
	done    chan struct{}
	once    sync.Once
	doneCh  sync.Pool
}

type request struct {
	op    Op
	tag   uint64
	done  chan<- Result
	tries int
}

// closeTag marks the cancel the submitter sends last; it is no slot index.
const closeTag = ^uint64(0)

// maxRetries bounds resubmission of requests the kernel failed with EAGAIN
// or EINTR, so a file that always says EAGAIN cannot spin the queue.
const maxRetries = 8

// NewQueue sets up a ring with depth entries and starts its two goroutines.
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
		sub:     make(chan uint32, depth),
		closing: make(chan struct{}),
		subDone: make(chan struct{}),
		done:    make(chan struct{}),
	}
	q.doneCh.New = func() any { return make(chan Result, 1) }
	for i := range depth {
		q.free <- uint32(i)
	}
	go q.submitLoop()
	go q.completeLoop()
	return q, nil
}

// Depth is the most requests the Queue keeps in flight.
func (q *Queue) Depth() int { return q.depth }

// Start queues op; its Result, carrying tag, is sent on done. done must have
// buffer room for every Result it will receive: the completion goroutine
// blocks on a full done, stalling the whole queue. Start blocks while the
// queue is full and fails with ErrClosed once Close has begun. op's buffers
// belong to the kernel until its Result arrives.
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
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		q.free <- i
		return ErrClosed
	}
	q.slots[i].Store(&request{op: op, tag: tag, done: done})
	q.busy.Add(1)
	q.sub <- i // never blocks: at most depth slots exist
	q.mu.Unlock()
	return nil
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

// Close fails requests not yet given to the kernel with ErrClosed, asks the
// kernel to cancel those it holds (they fail with ECANCELED), waits for
// every one of them to complete (their buffers are the kernel's until then;
// a regular-file read already running is not cancellable and finishes
// normally), and releases the ring. Later Starts fail with ErrClosed. Close is idempotent.
func (q *Queue) Close() error {
	q.once.Do(func() {
		q.mu.Lock()
		q.closed = true
		close(q.closing)
		q.mu.Unlock()
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

func (q *Queue) submitLoop() {
	defer close(q.subDone)
	for {
		select {
		case i := <-q.sub:
			q.prep(i)
		batch:
			for {
				select {
				case j := <-q.sub:
					q.prep(j)
				default:
					break batch
				}
			}
			q.flush()
		case <-q.closing:
			// Every send on sub happened before closing was closed
			// (both under mu), so this drains all of them.
			for {
				select {
				case i := <-q.sub:
					q.finish(i, q.slots[i].Load(), 0, ErrClosed)
					continue
				default:
				}
				break
			}
			// Cancel what the kernel holds, so a read that may never
			// finish (a pipe, a hung device) does not hold Close up.
			// What cannot be cancelled is waited for.
			if err := q.r.Prep(&Op{Kind: CancelAll}, closeTag); err != nil {
				panic("uring: no room for the closing cancel: " + err.Error()) // flush leaves the SQ empty
			}
			q.flush()
			return
		}
	}
}

func (q *Queue) prep(i uint32) {
	req := q.slots[i].Load()
	if err := q.r.Prep(&req.op, uint64(i)); err != nil {
		// Cannot happen: at most depth slots and each flush empties the
		// SQ; fail the request rather than lose it.
		q.finish(i, req, 0, err)
	}
}

// flush submits everything prepared. EAGAIN and EBUSY mean the kernel is
// short of memory for the moment; back off briefly and retry, since the
// prepared entries cannot be taken back.
func (q *Queue) flush() {
	for backoff := time.Microsecond; ; backoff = min(2*backoff, time.Millisecond) {
		_, err := q.r.Submit(0)
		if err == nil {
			return
		}
		time.Sleep(backoff)
	}
}

func (q *Queue) completeLoop() {
	defer close(q.done)
	sawClose := false
	for !sawClose || q.busy.Load() != 0 {
		if err := q.r.Wait(); err != nil {
			// io_uring_enter failing for GETEVENTS alone means the ring
			// itself is broken; there is nothing to retry.
			panic(err)
		}
		q.r.Reap(func(ud uint64, res int32) {
			if ud == closeTag {
				sawClose = true
				return
			}
			i := uint32(ud)
			req := q.slots[i].Load()
			if (res == -int32(syscall.EAGAIN) || res == -int32(syscall.EINTR)) && req.tries < maxRetries {
				req.tries++
				q.mu.Lock()
				if !q.closed {
					q.sub <- i
					q.mu.Unlock()
					return
				}
				q.mu.Unlock()
			}
			n, err := result(&req.op, res)
			q.finish(i, req, n, err)
		})
	}
	<-q.subDone
	q.r.Close()
}
