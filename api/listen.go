package api

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// Limits on what one peer can make the server hold.
const (
	// maxConns bounds open API connections; more are closed on accept.
	maxConns = 32
	// maxFDsPerConn bounds the descriptors a connection may have waiting
	// to be taken by a request; more are closed on arrival.
	maxFDsPerConn = 64
	// fdsPerRead is how many descriptors one read can receive; the
	// kernel closes the ones that do not fit (MSG_CTRUNC), which the
	// connection then reports.
	fdsPerRead = 16
)

// Listener is a UNIX stream socket for the API: created with mode 0600,
// and it hands out only connections from peers with this process's uid
// (SO_PEERCRED), each able to receive descriptors (see FDConn).
type Listener struct {
	l     *net.UnixListener
	path  string
	log   *slog.Logger
	conns chan struct{} // a slot per open connection
}

var _ net.Listener = (*Listener)(nil)

// Listen creates the API socket at path. A stale socket there (one no
// process listens on) is replaced; any other file is an error. The socket
// is bound under a temporary name, made 0600, then renamed into place, so
// no other user can connect in between.
func Listen(path string, log *slog.Logger) (*Listener, error) {
	if log == nil {
		log = discard
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("API socket %s exists and is not a socket: remove it or choose another path", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("API socket %s is in use by another process: stop it or choose another path", path)
		}
		os.Remove(path)
	}
	tmp := filepath.Join(filepath.Dir(path), fmt.Sprintf(".%s.%d.tmp", filepath.Base(path), os.Getpid()))
	os.Remove(tmp)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("API socket %s: %w", path, err)
	}
	l.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		l.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("API socket %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		l.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("API socket %s: %w", path, err)
	}
	return &Listener{l: l, path: path, log: log, conns: make(chan struct{}, maxConns)}, nil
}

// Path returns the socket's path.
func (l *Listener) Path() string { return l.path }

// Accept returns the next connection from a peer with our uid. Others are
// closed with a warning and never reach the HTTP server.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.l.AcceptUnix()
		if err != nil {
			return nil, err
		}
		uid, err := peerUID(c)
		if err != nil {
			l.log.Warn("API connection refused: cannot read its credentials", "err", err)
			c.Close()
			continue
		}
		if uid != os.Getuid() {
			l.log.Warn("API connection refused: the peer runs as another user", "peer_uid", uid, "our_uid", os.Getuid())
			c.Close()
			continue
		}
		select {
		case l.conns <- struct{}{}:
		default:
			l.log.Warn("API connection refused: too many open connections", "max", maxConns)
			c.Close()
			continue
		}
		return &FDConn{UnixConn: c, release: func() { <-l.conns }}, nil
	}
}

// Close stops listening and removes the socket file.
func (l *Listener) Close() error {
	path := l.Path()
	err := l.l.Close()
	os.Remove(path)
	return err
}

// Addr implements net.Listener.
func (l *Listener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

func peerUID(c *net.UnixConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := rc.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if credErr != nil {
		return 0, credErr
	}
	return int(cred.Uid), nil
}

// FDConn is an API connection that reads with recvmsg, so descriptors a
// client sends with SCM_RIGHTS (Kata passes a TAP's this way on vm.add-net)
// are received rather than lost, as a plain read would lose them. They
// wait on the connection, in arrival order, until a request takes them
// (TakeFDs) or the connection closes (then they are closed).
//
// A client sends a request's descriptors with the request's first bytes
// and waits for the answer before the next request, so the descriptors
// waiting when a handler runs are that request's.
type FDConn struct {
	*net.UnixConn
	release func()

	mu        sync.Mutex
	fds       []int
	truncated bool // some descriptors were lost: too many in one message
	closed    bool
}

// Read implements io.Reader with recvmsg, keeping any descriptors.
func (c *FDConn) Read(b []byte) (int, error) {
	oob := make([]byte, unix.CmsgSpace(fdsPerRead*4))
	// Go passes MSG_CMSG_CLOEXEC on Linux, so received descriptors do
	// not leak into child processes.
	n, oobn, flags, _, err := c.UnixConn.ReadMsgUnix(b, oob)
	if oobn > 0 {
		c.keep(oob[:oobn], flags&unix.MSG_CTRUNC != 0)
	}
	return n, err
}

// keep parses control messages and queues the descriptors in them.
func (c *FDConn) keep(oob []byte, truncated bool) {
	var fds []int
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err == nil {
		for _, m := range msgs {
			if got, err := unix.ParseUnixRights(&m); err == nil {
				fds = append(fds, got...)
			}
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.truncated = c.truncated || truncated
	for _, fd := range fds {
		if c.closed || len(c.fds) >= maxFDsPerConn {
			unix.Close(fd)
			c.truncated = true
			continue
		}
		c.fds = append(c.fds, fd)
	}
}

// ErrFDsLost reports descriptors the kernel or the connection's limit
// dropped: the client sent more than fdsPerRead in one message or left
// more than maxFDsPerConn untaken.
var ErrFDsLost = errors.New("some descriptors sent on this connection were lost: send at most 16 per request")

// TakeFDs hands every waiting descriptor to the caller, who must close
// them. It reports ErrFDsLost (with the descriptors that did arrive) if
// some were dropped since the last call.
func (c *FDConn) TakeFDs() ([]int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fds := c.fds
	c.fds = nil
	if c.truncated {
		c.truncated = false
		return fds, ErrFDsLost
	}
	return fds, nil
}

// Close closes the connection and any descriptors no request took.
func (c *FDConn) Close() error {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		for _, fd := range c.fds {
			unix.Close(fd)
		}
		c.fds = nil
		if c.release != nil {
			c.release()
		}
	}
	c.mu.Unlock()
	return c.UnixConn.Close()
}

type connKey struct{}

// connContext puts the FDConn into each request's context for TakeFDs.
func connContext(ctx context.Context, c net.Conn) context.Context {
	if fc, ok := c.(*FDConn); ok {
		return context.WithValue(ctx, connKey{}, fc)
	}
	return ctx
}

// RequestFDs takes the descriptors sent with the request whose context
// is ctx (see FDConn). The caller must close them.
func RequestFDs(ctx context.Context) ([]int, error) {
	fc, _ := ctx.Value(connKey{}).(*FDConn)
	if fc == nil {
		return nil, nil
	}
	return fc.TakeFDs()
}
