package uring

import (
	"errors"
	"fmt"
	"math"
	"syscall"

	"golang.org/x/sys/unix"
)

// Kind is what an Op does.
type Kind uint8

const (
	// Read fills Op.Bufs from the file at Op.Off (IORING_OP_READ, or READV
	// for more than one buffer).
	Read Kind = iota + 1
	// Write writes Op.Bufs to the file at Op.Off.
	Write
	// Fsync flushes the file (fsync, or fdatasync when Op.Datasync).
	Fsync
	// Nop does nothing; it completes with 0. Useful to measure the ring.
	Nop
	// CancelAll asks the kernel to cancel every request in flight on the
	// ring (IORING_ASYNC_CANCEL_ANY); it completes with how many it
	// cancelled, or -ENOENT. Cancelled requests complete with ECANCELED.
	CancelAll
)

func (k Kind) String() string {
	switch k {
	case Read:
		return "read"
	case Write:
		return "write"
	case Fsync:
		return "fsync"
	case Nop:
		return "nop"
	case CancelAll:
		return "cancel"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// maxBuf keeps a buffer length within the SQE's 32-bit len (the kernel
// caps a single transfer below 2 GiB anyway).
const maxBuf = math.MaxInt32

// maxIovecs is the kernel's UIO_MAXIOV: READV/WRITEV reject more.
const maxIovecs = 1024

// Op is one request. The buffers belong to the kernel from submission until
// the completion is reaped: the caller must neither touch nor reuse them in
// between (the Op keeps them reachable for the garbage collector).
type Op struct {
	Kind Kind
	// Fd is the file descriptor, or with Fixed the index into the files
	// registered by Ring.RegisterFiles.
	Fd       int
	Fixed    bool
	Off      int64
	Bufs     [][]byte
	Datasync bool // Fsync only: IORING_FSYNC_DATASYNC

	iov []unix.Iovec // READV/WRITEV vector; must outlive the request
}

// Len is the number of bytes a Read or Write asks for.
func (o *Op) Len() int {
	n := 0
	for _, b := range o.Bufs {
		n += len(b)
	}
	return n
}

// check rejects an Op the kernel would reject less clearly.
func (o *Op) check() error {
	switch o.Kind {
	case Read, Write:
		if o.Off < 0 {
			return fmt.Errorf("uring: %s at negative offset %d", o.Kind, o.Off)
		}
		for _, b := range o.Bufs {
			if len(b) > maxBuf {
				return fmt.Errorf("uring: %s buffer of %d bytes, at most %d per buffer", o.Kind, len(b), maxBuf)
			}
		}
		if len(o.Bufs) > maxIovecs {
			return fmt.Errorf("uring: %s with %d buffers, at most %d are allowed", o.Kind, len(o.Bufs), maxIovecs)
		}
	case Fsync, Nop, CancelAll:
	default:
		return fmt.Errorf("uring: unknown operation %s", o.Kind)
	}
	if o.Fd > math.MaxInt32 {
		return fmt.Errorf("uring: file descriptor %d out of range", o.Fd)
	}
	if o.Fd < 0 && o.Kind != Nop && o.Kind != CancelAll {
		return fmt.Errorf("uring: %s on negative file descriptor %d", o.Kind, o.Fd)
	}
	return nil
}

// ErrRingFull is returned by Ring.Prep when every submission entry is taken;
// Submit the ring and try again.
var ErrRingFull = errors.New("uring: submission queue is full")

// ErrClosed is returned for requests on a closed Queue or Ring.
var ErrClosed = errors.New("uring: ring is closed")

// ErrBroken fails the requests in flight on a Queue whose ring stopped
// delivering completions.
var ErrBroken = errors.New("uring: ring failed")

// result turns a completion's res into (n, error): a negative res is an
// errno, wrapped so errors.Is(err, syscall.EIO) works.
func result(o *Op, res int32) (int, error) {
	if res >= 0 {
		return int(res), nil
	}
	errno := syscall.Errno(-res)
	if o.Kind != Read && o.Kind != Write {
		return 0, fmt.Errorf("uring: %s fd %d: %w", o.Kind, o.Fd, errno)
	}
	return 0, fmt.Errorf("uring: %s fd %d at %d: %w", o.Kind, o.Fd, o.Off, errno)
}
