package migration

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// A migration's disk copy reaches the destination through the migration's
// own listener (disks.go): no second port to open in a firewall, and the
// migration's TLS covers it. The first connection is the migration
// stream; a migration that copies disks then has its listener accept
// more, each of which must open with a disk preface carrying the token of
// the disks record. Anything else (garbage, a wrong token, a peer that
// says nothing, too many at once) is closed without touching the
// migration.

// Limits on the connections that follow the migration stream.
const (
	// DiskPrefaceTimeout bounds a disk connection's TLS handshake and
	// preface.
	DiskPrefaceTimeout = 10 * time.Second
	// maxPendingDiskConns bounds the connections between accept and a
	// checked preface; more are closed at once.
	maxPendingDiskConns = 8
)

// ErrDiskConn is matched by the reason a connection to the listener was
// refused as a disk connection.
var ErrDiskConn = errors.New("not a disk connection of this migration")

// Listener is a migration's listener once the migration stream is
// accepted: Serve routes the disk connections that follow. Close it when
// the migration ends.
type Listener struct {
	l   net.Listener
	tls *tls.Config
	// Rejected, if set, hears of every connection refused (for the log;
	// tests wait on it). Set it before Serve.
	Rejected func(remote string, err error)

	mu      sync.Mutex
	closed  bool
	serving bool
	pending map[net.Conn]struct{}
	wg      sync.WaitGroup
}

// AcceptMigration waits until ctx ends for the migration stream on l,
// runs the receiver's TLS handshake on it when tlsCfg is set, and returns
// it with l, kept open for the disk connections that may follow. On error
// l is closed.
func AcceptMigration(ctx context.Context, l net.Listener, tlsCfg *tls.Config) (net.Conn, *Listener, error) {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	c, err := l.Accept()
	if !stop() {
		if err == nil {
			c.Close()
		}
		l.Close()
		return nil, nil, fmt.Errorf("no migration arrived: %w", ctx.Err())
	}
	if err != nil {
		l.Close()
		return nil, nil, fmt.Errorf("waiting for the migration: %w", err)
	}
	if tlsCfg != nil {
		if c, err = Secure(ctx, c, tlsCfg, true); err != nil {
			l.Close()
			return nil, nil, err
		}
	}
	return c, &Listener{l: l, tls: tlsCfg, pending: map[net.Conn]struct{}{}}, nil
}

// Serve accepts connections until Close: each that opens with a disk
// preface carrying token (after the TLS handshake, if the migration has
// TLS) within DiskPrefaceTimeout goes to serve, which owns it from then
// on (serve runs on a goroutine of its own); the others are closed. Call
// it once.
func (dl *Listener) Serve(token Token, serve func(net.Conn)) error {
	dl.mu.Lock()
	defer dl.mu.Unlock()
	if dl.closed {
		return errors.New("the migration's listener is closed")
	}
	if dl.serving {
		return errors.New("the migration's listener serves disks already")
	}
	dl.serving = true
	dl.wg.Add(1)
	go dl.accept(token, serve)
	return nil
}

func (dl *Listener) accept(token Token, serve func(net.Conn)) {
	defer dl.wg.Done()
	for {
		c, err := dl.l.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return // closed
		}
		dl.mu.Lock()
		switch {
		case dl.closed:
			dl.mu.Unlock()
			c.Close()
			return
		case len(dl.pending) >= maxPendingDiskConns:
			dl.mu.Unlock()
			c.Close()
			dl.reject(c, fmt.Errorf("%w: %d connections are being checked already", ErrDiskConn, maxPendingDiskConns))
			continue
		}
		dl.pending[c] = struct{}{}
		dl.wg.Add(1)
		dl.mu.Unlock()
		go dl.check(c, token, serve)
	}
}

// check reads a connection's preface and hands it on, or closes it.
func (dl *Listener) check(c net.Conn, token Token, serve func(net.Conn)) {
	defer dl.wg.Done()
	ctx, cancel := context.WithTimeout(context.Background(), DiskPrefaceTimeout)
	defer cancel()
	conn, err := dl.preface(ctx, c, token)
	dl.mu.Lock()
	delete(dl.pending, c)
	closed := dl.closed
	dl.mu.Unlock()
	if err == nil && closed {
		err = fmt.Errorf("%w: the migration's disk copy is over", ErrDiskConn)
	}
	if err != nil {
		c.Close()
		dl.reject(c, err)
		return
	}
	// Not under wg: a served connection lasts as long as its server
	// lets it, and Close must not wait for that.
	go serve(conn)
}

func (dl *Listener) preface(ctx context.Context, c net.Conn, token Token) (net.Conn, error) {
	c.SetDeadline(time.Now().Add(DiskPrefaceTimeout))
	conn := c
	if dl.tls != nil {
		var err error
		if conn, err = Secure(ctx, c, dl.tls, true); err != nil {
			return nil, err
		}
	}
	t, err := ReadDiskPreface(conn)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrDiskConn, err)
	}
	if subtle.ConstantTimeCompare(t[:], token[:]) != 1 {
		return nil, fmt.Errorf("%w: a wrong token", ErrDiskConn)
	}
	c.SetDeadline(time.Time{})
	return conn, nil
}

func (dl *Listener) reject(c net.Conn, err error) {
	if dl.Rejected != nil {
		dl.Rejected(c.RemoteAddr().String(), err)
	}
}

// Close stops accepting, closes the connections not handed on yet and
// waits for the goroutines that checked them; connections handed to
// serve are its own to close. A UNIX socket's file is removed.
func (dl *Listener) Close() error {
	dl.mu.Lock()
	if dl.closed {
		dl.mu.Unlock()
		return nil
	}
	dl.closed = true
	err := dl.l.Close()
	for c := range dl.pending {
		c.Close()
	}
	dl.mu.Unlock()
	dl.wg.Wait()
	return err
}

// DialDisk opens a disk connection to the destination at e: the TCP or
// UNIX connection, TLS when tlsCfg is set (as the migration's), and the
// preface with token. The NBD handshake follows on it.
func DialDisk(ctx context.Context, e Endpoint, tlsCfg *tls.Config, token Token) (net.Conn, error) {
	c, err := Dial(ctx, e)
	if err != nil {
		return nil, err
	}
	if tlsCfg != nil {
		if c, err = Secure(ctx, c, tlsCfg, false); err != nil {
			return nil, err
		}
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetWriteDeadline(dl)
	}
	if err := WriteDiskPreface(c, token); err != nil {
		c.Close()
		return nil, fmt.Errorf("opening a disk connection to %s: %w", e, err)
	}
	c.SetWriteDeadline(time.Time{})
	return c, nil
}
