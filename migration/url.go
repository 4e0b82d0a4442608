package migration

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
)

// ErrBadURL is matched by errors about a migration URL; the error's text
// is the sentence to show.
var ErrBadURL = errors.New("unusable migration URL")

type urlError struct{ msg string }

func (e *urlError) Error() string        { return e.msg }
func (e *urlError) Is(target error) bool { return target == ErrBadURL }

// Endpoint is a parsed migration URL: Cloud Hypervisor's forms
// tcp:HOST:PORT and unix:PATH.
type Endpoint struct {
	Network string // "tcp" or "unix"
	Address string // HOST:PORT or PATH
}

func (e Endpoint) String() string { return e.Network + ":" + e.Address }

// ParseURL parses a migration URL.
func ParseURL(raw string) (Endpoint, error) {
	network, addr, ok := strings.Cut(raw, ":")
	switch {
	case !ok || addr == "":
	case network == "unix":
		if strings.HasPrefix(addr, "//") {
			addr = addr[2:] // unix:///path, a common slip
		}
		if addr != "" && !strings.ContainsRune(addr, 0) {
			return Endpoint{Network: "unix", Address: addr}, nil
		}
	case network == "tcp":
		host, port, err := net.SplitHostPort(addr)
		if err == nil && port != "" && !strings.ContainsAny(host, "/") {
			return Endpoint{Network: "tcp", Address: addr}, nil
		}
	}
	return Endpoint{}, &urlError{fmt.Sprintf("migration URL %q: write tcp:HOST:PORT or unix:/path/to/socket", raw)}
}

// Listen opens the endpoint for one incoming migration. A UNIX socket
// file that exists already is refused, not replaced: it may be another
// receiver's.
//
// The socket file appears only once it is listening: a sender that waits
// for the file (as orchestrators do) would otherwise find it between
// bind and listen and be refused. So the socket is made under a
// temporary name and linked into place (link, unlike rename, never
// replaces a file that appeared meanwhile).
func Listen(e Endpoint) (net.Listener, error) {
	if e.Network != "unix" {
		l, err := net.Listen(e.Network, e.Address)
		if err != nil {
			return nil, &urlError{fmt.Sprintf("cannot receive on %s: %v", e, unwrapNet(err))}
		}
		return l, nil
	}
	exists := &urlError{fmt.Sprintf("cannot receive on %s: the file exists; remove it or name another path", e)}
	if _, err := os.Lstat(e.Address); err == nil {
		return nil, exists
	}
	tmp := fmt.Sprintf("%s.%d.listening", e.Address, os.Getpid())
	l, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, &urlError{fmt.Sprintf("cannot receive on %s: %v", e, unwrapNet(err))}
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	err = os.Link(tmp, e.Address)
	os.Remove(tmp)
	if err != nil {
		l.Close()
		if errors.Is(err, os.ErrExist) {
			return nil, exists
		}
		return nil, &urlError{fmt.Sprintf("cannot receive on %s: %v", e, errors.Unwrap(err))}
	}
	return &unlinkListener{Listener: l, path: e.Address}, nil
}

// unlinkListener removes its socket file when closed.
type unlinkListener struct {
	net.Listener
	path string
	once sync.Once
}

func (l *unlinkListener) Close() error {
	err := l.Listener.Close()
	l.once.Do(func() { os.Remove(l.path) })
	return err
}

// Accept waits for one connection on l until ctx ends, then closes l
// either way.
func Accept(ctx context.Context, l net.Listener) (net.Conn, error) {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	c, err := l.Accept()
	l.Close()
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("no migration arrived: %w", ctx.Err())
		}
		return nil, fmt.Errorf("waiting for the migration: %w", err)
	}
	return c, nil
}

// Dial connects to a receiver.
func Dial(ctx context.Context, e Endpoint) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, e.Network, e.Address)
	if err != nil {
		return nil, &urlError{fmt.Sprintf("cannot reach the migration destination %s: %v (is vm.receive-migration waiting there?)", e, unwrapNet(err))}
	}
	return c, nil
}

// unwrapNet drops net.OpError's repetition of the address.
func unwrapNet(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		var sys *os.SyscallError
		if errors.As(op.Err, &sys) {
			return sys.Err
		}
		return op.Err
	}
	return err
}
