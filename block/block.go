// Package block defines the storage contract every disk back-end and every
// interposer implements, so that any front-end (virtio-blk, IDE, an NBD
// export) can sit on any stack of back-ends.
package block

import (
	"errors"
	"io"
)

// Backend is a fixed-size, byte-addressed store.
//
// ReadAt and WriteAt follow the io.ReaderAt / io.WriterAt contracts and may be
// called concurrently from several goroutines, including on overlapping
// ranges (the result of overlapping concurrent writes is one of them, as on a
// real disk). A read past Size returns io.EOF for the missing part; a write
// past Size fails. Flush makes every write that completed before it was
// called durable (it is the guest's FLUSH / FUA barrier). Close flushes and
// releases the back-end; no call may follow.
type Backend interface {
	io.ReaderAt
	io.WriterAt
	Flush() error
	Size() int64
	Close() error
}

// Optional capabilities, discovered by type assertion.

// Discarder frees the storage behind a range; reads of it afterwards return
// zeroes or the old data (the guest must not rely on either).
type Discarder interface {
	Discard(off, n int64) error
}

// ZeroWriter writes zeroes to a range without transferring them; with unmap
// set it may also free the storage, provided reads return zeroes.
type ZeroWriter interface {
	WriteZeroes(off, n int64, unmap bool) error
}

// Resizer changes the size of the back-end.
type Resizer interface {
	Resize(size int64) error
}

// ReadOnlyReporter is implemented by back-ends that can be read-only.
type ReadOnlyReporter interface {
	ReadOnly() bool
}

// ErrReadOnly is returned by writes to a read-only back-end.
var ErrReadOnly = errors.New("block: read-only")

// ErrOutOfRange is returned by writes, discards or zeroing beyond Size.
var ErrOutOfRange = errors.New("block: beyond end of device")
