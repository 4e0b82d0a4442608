package nbd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/viovmm/vio/block"
)

var (
	// ErrProtocol marks a violation of the NBD protocol by the peer. The
	// connection it happened on is dropped.
	ErrProtocol = errors.New("nbd: protocol violation")

	// ErrUnknownExport is returned by Dial when the server has no export of
	// the requested name.
	ErrUnknownExport = errors.New("nbd: unknown export")

	// ErrWritesLost is returned by the first Flush after a reconnect that
	// could not replay every write the old connection had acknowledged but
	// no flush had yet covered: those writes may or may not have survived on
	// the server, so the flush cannot promise they are durable.
	ErrWritesLost = errors.New("nbd: acknowledged writes may have been lost in a reconnect")

	// ErrTimeout is the cause recorded when a request got no reply within
	// Options.RequestTimeout (the connection is then dropped and the request
	// re-sent on a new one).
	ErrTimeout = errors.New("nbd: request timed out")

	// ErrShutdown is returned by Server.Serve after Shutdown or Close.
	ErrShutdown = errors.New("nbd: server shut down")
)

// RemoteError is an error the server reported for one request.
type RemoteError struct {
	Op      string        // the command: "read", "write", ...
	Errno   syscall.Errno // the protocol's error value (NBD_EPERM ... NBD_ESHUTDOWN)
	Message string        // the server's human-readable text, if any
}

func (e *RemoteError) Error() string {
	if e.Message != "" {
		return fmt.Sprintf("nbd: %s: server: %v (%s)", e.Op, e.Errno, e.Message)
	}
	return fmt.Sprintf("nbd: %s: server: %v", e.Op, e.Errno)
}

func (e *RemoteError) Unwrap() error { return e.Errno }

// Is lets callers match a remote EPERM and ENOSPC with the block package's
// errors, which is what they mean on an export.
func (e *RemoteError) Is(target error) bool {
	switch target {
	case block.ErrReadOnly:
		return e.Errno == errPerm
	case block.ErrOutOfRange:
		return e.Errno == errNoSpc
	}
	return false
}

// remoteErrno turns a wire error value into a Go errno. The protocol says a
// client treats an unknown value as EINVAL.
func remoteErrno(v uint32) syscall.Errno {
	switch v {
	case errPerm, errIO, errNoMem, errInval, errNoSpc, errOverflow, errNotSup, errShutdown:
		return syscall.Errno(v)
	}
	return syscall.Errno(errInval)
}

// errnoFor maps a back-end error to the protocol's error value, for a
// server reply.
func errnoFor(err error) uint32 {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, block.ErrReadOnly), errors.Is(err, os.ErrPermission):
		return errPerm
	case errors.Is(err, block.ErrOutOfRange):
		return errNoSpc
	case errors.Is(err, block.ErrClosed):
		return errShutdown
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return errInval
	}
	var en syscall.Errno
	if errors.As(err, &en) {
		switch en {
		case syscall.EPERM, syscall.EACCES, syscall.EROFS:
			return errPerm
		case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG:
			return errNoSpc
		case syscall.ENOMEM:
			return errNoMem
		case syscall.EINVAL:
			return errInval
		case syscall.EOVERFLOW:
			return errOverflow
		}
	}
	return errIO
}

func protoErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrProtocol}, args...)...)
}
