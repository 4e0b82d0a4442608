package nbd

import (
	"net"
	"sync"
)

// batchWriter writes messages to a connection from many goroutines, each
// message atomically. It uses flat combining: a writer queues its buffers,
// then whoever holds the write lock sends everything queued in one writev.
// Under load many requests or replies share one system call (and the peer
// one wakeup); when idle nobody waits for a writer goroutine.
//
// write returns once the message has been handed to the kernel (by this
// caller or by another in its batch), so the caller may then reuse its
// buffers. A write error is passed to onError; the message may be lost.
type batchWriter struct {
	c       net.Conn
	onError func(error)

	wmu   sync.Mutex // held while writing to c
	qmu   sync.Mutex
	queue net.Buffers // messages not yet written
	spare net.Buffers
}

func (bw *batchWriter) write(bufs ...[]byte) {
	bw.qmu.Lock()
	bw.queue = append(bw.queue, bufs...)
	bw.qmu.Unlock()

	bw.wmu.Lock()
	defer bw.wmu.Unlock()
	bw.qmu.Lock()
	batch := bw.queue
	bw.queue, bw.spare = bw.spare[:0], nil
	bw.qmu.Unlock()
	if len(batch) == 0 {
		// An earlier holder of wmu took our message along.
		bw.qmu.Lock()
		bw.spare = batch
		bw.qmu.Unlock()
		return
	}
	keep := batch
	_, err := batch.WriteTo(bw.c) // consumes batch
	clear(keep)                   // drop references to callers' buffers
	bw.qmu.Lock()
	bw.spare = keep[:0]
	bw.qmu.Unlock()
	if err != nil {
		bw.onError(err)
	}
}

// locked runs fn with the write lock held, after everything queued so far
// is written: for the last message of a session.
func (bw *batchWriter) locked(fn func()) {
	bw.write()
	bw.wmu.Lock()
	defer bw.wmu.Unlock()
	fn()
}
