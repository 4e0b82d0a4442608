// Package block defines the storage contract every disk back-end and every
// interposer implements, so that any front-end (virtio-blk, IDE, an NBD
// export) can sit on any stack of back-ends.
//
// The contract is deliberately the one of a disk, not of a file: a Backend
// has a fixed size that only Resize changes, writes never extend it, and
// durability is promised only at Flush. Package blocktest checks an
// implementation against every rule written here.
package block

import (
	"errors"
	"io"
)

// Backend is a fixed-size, byte-addressed store.
//
// ReadAt follows io.ReaderAt: it fills p entirely or returns an error. A read
// that starts at or beyond Size returns 0, io.EOF; one that runs past Size
// returns the bytes up to Size and io.EOF. A negative offset is an error.
//
// WriteAt follows io.WriterAt, and additionally never changes Size: a write
// with a negative offset or one that would run past Size writes nothing and
// returns an error matching ErrOutOfRange. A write to a read-only back-end
// returns an error matching ErrReadOnly.
//
// Any byte offset and length are allowed (alignment is the implementation's
// problem: an O_DIRECT file bounces unaligned requests). ReadAt and WriteAt
// may be called concurrently from several goroutines. Requests on disjoint
// ranges do not affect each other; the outcome of overlapping concurrent
// writes is, per byte, one of the writes, and a read overlapping a
// concurrent write sees, per byte, old or new data — as on a real disk.
// A read never returns data that was never written to this range (stale
// bytes of another range, or of a freed host cluster, are a bug).
//
// Flush makes every write that completed before Flush was called durable:
// after a crash, each of them reads back. Writes not covered by a completed
// Flush may be lost, wholly or in part, but never corrupt other data. Flush
// is the guest's FLUSH command and the building block of FUA.
//
// Size is constant between Resize calls and safe to call concurrently.
//
// Close flushes and releases the back-end; it returns the flush error, if
// any. Calls after Close return an error matching ErrClosed and never panic;
// Close must not run concurrently with other calls.
type Backend interface {
	io.ReaderAt
	io.WriterAt
	Flush() error
	Size() int64
	Close() error
}

// Optional capabilities, discovered by type assertion. An interposer that
// wraps a Backend should implement a capability only when it can honour it,
// typically by forwarding to the wrapped Backend when that one has it.

// Discarder frees the storage behind a range, as TRIM/UNMAP does. The range
// must lie within [0, Size] (otherwise ErrOutOfRange, nothing discarded).
// Afterwards each byte of the range reads as zero or as its old value (the
// guest must not rely on either), consistently until it is next written.
// Discard is advisory: an implementation may do nothing and return nil.
type Discarder interface {
	Discard(off, n int64) error
}

// ZeroWriter writes zeroes to a range without transferring them. The range
// must lie within [0, Size] (otherwise ErrOutOfRange, nothing changed).
// Afterwards the whole range reads as zeroes. With unmap set the
// implementation may also free the storage behind it.
type ZeroWriter interface {
	WriteZeroes(off, n int64, unmap bool) error
}

// Resizer changes the size of the back-end. Bytes added by growing read as
// zeroes. An implementation that cannot resize (a block device), or cannot
// shrink, returns an error matching errors.ErrUnsupported and leaves the
// size unchanged.
type Resizer interface {
	Resize(size int64) error
}

// ReadOnlyReporter is implemented by back-ends that can be read-only. A
// read-only back-end fails WriteAt, Discard, WriteZeroes and Resize with
// ErrReadOnly.
type ReadOnlyReporter interface {
	ReadOnly() bool
}

// VectorReaderAt reads into several buffers as one request (preadv). The
// buffers are filled in order starting at off; the result is what ReadAt of
// their concatenation would return. Use ReadvAt to call it on any Backend.
type VectorReaderAt interface {
	ReadvAt(bufs [][]byte, off int64) (int, error)
}

// VectorWriterAt writes several buffers as one request (pwritev), with the
// rules of WriteAt applied to their concatenation. Use WritevAt to call it
// on any Backend.
type VectorWriterAt interface {
	WritevAt(bufs [][]byte, off int64) (int, error)
}

// TryReader is implemented by back-ends that can sometimes serve a read
// at once, without waiting for storage: a file whose data is in the host's
// page cache. A front-end's queue goroutine, which must never wait for a
// disk, serves such reads itself instead of handing them to a worker (one
// thread wake-up less per request), and hands the others on.
//
// TryReadvAt is ReadvAt with one more way out: when serving the read would
// wait (for storage, or for a lock a slow operation holds) it returns an
// error matching ErrWouldBlock, and the caller reads the range again with
// ReadvAt. It may return ErrWouldBlock for any read it prefers not to
// serve this way (one that runs past Size, say), and it may have filled
// part of bufs when it does. It returns an error matching
// errors.ErrUnsupported when it can never serve a read this way (a file
// opened with O_DIRECT, a file system without non-blocking reads): callers
// stop trying. Any other error is the read's; a caller may still retry it
// with ReadvAt. TryReadvAt never sleeps and never waits for I/O; it takes
// the time its copy takes.
//
// An interposer implements TryReader only when it can pass the try on
// honestly: serving the read through it must need nothing that the try
// skips. A throttle, which has to count the read and may have to hold it
// back, does not; filter's views report ErrUnsupported for an interposer
// that does not implement it.
type TryReader interface {
	TryReadvAt(bufs [][]byte, off int64) (int, error)
}

// ErrWouldBlock is returned by TryReadvAt for a read it did not serve
// because serving it would wait: read it with ReadvAt.
var ErrWouldBlock = errors.New("block: the read would wait for storage")

// Drainer is implemented by back-ends that can hold a request back before
// serving it (a throttle) and by interposers above them, which forward it.
// Drain(true) fails every request that is waiting, and every later one that
// would have to wait, with an error matching ErrDrained, until the matching
// Drain(false); requests already being served are not interrupted. Calls
// nest. A front-end drains around a reset, so that the reset, which waits
// for requests in flight, never waits for a rate limit.
type Drainer interface {
	Drain(on bool)
}

// ErrDrained is returned by a request that a Drainer failed instead of
// letting it wait.
var ErrDrained = errors.New("block: request drained by a reset")

// ErrReadOnly is returned by writes to a read-only back-end.
var ErrReadOnly = errors.New("block: read-only")

// ErrOutOfRange is returned by writes, discards or zeroing beyond Size.
var ErrOutOfRange = errors.New("block: beyond end of device")

// ErrClosed is returned by calls on a closed back-end.
var ErrClosed = errors.New("block: back-end closed")

// CheckRange validates a write-like request of n bytes at off against size.
func CheckRange(off, n, size int64) error {
	if off < 0 || n < 0 || off > size || n > size-off {
		return ErrOutOfRange
	}
	return nil
}

// ReadvAt reads into bufs from b at off, using b's VectorReaderAt when it has
// one and a sequence of ReadAt calls otherwise.
func ReadvAt(b io.ReaderAt, bufs [][]byte, off int64) (int, error) {
	if v, ok := b.(VectorReaderAt); ok {
		return v.ReadvAt(bufs, off)
	}
	total := 0
	for _, p := range bufs {
		n, err := b.ReadAt(p, off)
		total += n
		off += int64(n)
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// WritevAt writes bufs to b at off, using b's VectorWriterAt when it has one
// and a sequence of WriteAt calls otherwise. In the fallback the range is
// checked against Size first so that an out-of-range request writes nothing.
func WritevAt(b Backend, bufs [][]byte, off int64) (int, error) {
	if v, ok := b.(VectorWriterAt); ok {
		return v.WritevAt(bufs, off)
	}
	var n int64
	for _, p := range bufs {
		n += int64(len(p))
	}
	if err := CheckRange(off, n, b.Size()); err != nil {
		return 0, err
	}
	total := 0
	for _, p := range bufs {
		m, err := b.WriteAt(p, off)
		total += m
		off += int64(m)
		if err != nil {
			return total, err
		}
	}
	return total, nil
}
