package nbd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/viovmm/vio/block"
)

// Export is one named disk a Server offers.
type Export struct {
	// Name is what clients ask for (NBD_OPT_GO, NBD_OPT_EXPORT_NAME). A
	// client asking for the empty name gets the export named "" if there is
	// one, and the first export otherwise.
	Name string
	// Description is shown by NBD_OPT_LIST / NBD_INFO_DESCRIPTION.
	Description string
	// Backend stores the data. The server never closes it: the caller owns
	// it and closes it after Shutdown or Close returns.
	Backend block.Backend
	// ReadOnly refuses writes even if the back-end accepts them. A back-end
	// that reports itself read-only (block.ReadOnlyReporter) is exported
	// read-only regardless.
	ReadOnly bool
}

func (e *Export) readOnly() bool {
	if e.ReadOnly {
		return true
	}
	r, ok := e.Backend.(block.ReadOnlyReporter)
	return ok && r.ReadOnly()
}

// Server serves exports to any number of clients over any number of
// listeners (TCP or unix sockets), speaking fixed-newstyle NBD with
// NBD_OPT_GO, NBD_OPT_INFO, NBD_OPT_LIST and structured replies. Requests
// on one connection are processed concurrently and answered as they
// complete.
//
// Set the exported fields before the first Serve; they must not change
// afterwards.
type Server struct {
	// Logf, if set, receives one line per connection-level event (a client
	// dropped for a protocol violation, an I/O error writing a reply).
	Logf func(format string, args ...any)
	// HandshakeTimeout bounds the option haggling of one connection
	// (default 30s): a client that never picks an export is dropped.
	HandshakeTimeout time.Duration
	// MaxInFlight bounds the requests of one connection being processed at
	// once (default 64).
	MaxInFlight int
	// MaxBufferedBytes bounds the payload bytes one connection's in-flight
	// requests hold (default 64 MiB; never below one maximal request).
	MaxBufferedBytes int64
	// MaxConns bounds the connections served at once, over all listeners
	// (default DefaultMaxConns): each may hold MaxBufferedBytes and
	// MaxInFlight goroutines. A connection beyond it is closed at once,
	// before the handshake, and logged.
	MaxConns int
	// TLSConfig, if set, makes TLS mandatory (the protocol's FORCEDTLS
	// mode): a client must send NBD_OPT_STARTTLS before anything else;
	// every other option gets NBD_REP_ERR_TLS_REQD until it has, and
	// NBD_OPT_EXPORT_NAME, which cannot be refused, drops the connection.
	// Whether clients need certificates is the config's ClientAuth (see
	// ServerTLSConfig). The TLS handshake counts against HandshakeTimeout.
	TLSConfig *tls.Config

	exports []*Export // in the order given, for NBD_OPT_LIST

	// Test hooks: optFilter refuses options (NBD_REP_ERR_UNSUP) as an
	// older server would; blockSize overrides the advertised (and
	// enforced) minimum, preferred and maximum sizes.
	optFilter func(opt uint32) bool
	blockSize [3]uint32

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*serverConn]struct{}
	shutdown  bool
	done      chan struct{} // closed by Shutdown/Close
	wg        sync.WaitGroup
}

// NewServer returns a server for the given exports. Names must be unique,
// at most 4096 bytes and free of NUL; each export needs a Backend.
func NewServer(exports ...Export) (*Server, error) {
	s := &Server{
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*serverConn]struct{}),
		done:      make(chan struct{}),
	}
	seen := make(map[string]bool)
	for i := range exports {
		e := exports[i]
		switch {
		case e.Backend == nil:
			return nil, fmt.Errorf("nbd: export %q has no back-end", e.Name)
		case len(e.Name) > maxString || strings.IndexByte(e.Name, 0) >= 0:
			return nil, fmt.Errorf("nbd: export name %q is not a valid NBD string", e.Name)
		case len(e.Description) > maxString || strings.IndexByte(e.Description, 0) >= 0:
			return nil, fmt.Errorf("nbd: description of export %q is not a valid NBD string", e.Name)
		case seen[e.Name]:
			return nil, fmt.Errorf("nbd: duplicate export name %q", e.Name)
		}
		seen[e.Name] = true
		s.exports = append(s.exports, &e)
	}
	if len(s.exports) == 0 {
		return nil, errors.New("nbd: a server needs at least one export")
	}
	return s, nil
}

func (s *Server) lookup(name string) *Export {
	for _, e := range s.exports {
		if e.Name == name {
			return e
		}
	}
	if name == "" {
		return s.exports[0]
	}
	return nil
}

func (s *Server) sizes() (minBS, prefBS, maxBS uint32) {
	if s.blockSize[0] != 0 {
		return s.blockSize[0], s.blockSize[1], s.blockSize[2]
	}
	return 1, defaultPrefBS, maxPayload
}

func (s *Server) logf(format string, args ...any) {
	if s.Logf != nil {
		s.Logf(format, args...)
	}
}

// DefaultMaxConns is the connection limit of a Server that sets none.
const DefaultMaxConns = 16

func (s *Server) maxConns() int {
	if s.MaxConns > 0 {
		return s.MaxConns
	}
	return DefaultMaxConns
}

func (s *Server) handshakeTimeout() time.Duration {
	if s.HandshakeTimeout > 0 {
		return s.HandshakeTimeout
	}
	return 30 * time.Second
}

func (s *Server) maxInFlight() int {
	if s.MaxInFlight > 0 {
		return s.MaxInFlight
	}
	return 64
}

func (s *Server) maxBuffered() int64 {
	if s.MaxBufferedBytes <= 0 {
		return 64 << 20
	}
	_, _, maxBS := s.sizes()
	return max(s.MaxBufferedBytes, int64(maxBS))
}

// Listen opens a listener for addr: "unix:PATH" or a path containing a
// slash is a unix socket, anything else a TCP host:port.
func Listen(addr string) (net.Listener, error) {
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		return net.Listen("unix", p)
	}
	if strings.Contains(addr, "/") {
		return net.Listen("unix", addr)
	}
	return net.Listen("tcp", addr)
}

// Serve accepts connections on l until Shutdown or Close, serving each on
// its own goroutine. It closes l when it returns; it returns ErrShutdown
// after Shutdown or Close, or the accept error otherwise.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		l.Close()
		return ErrShutdown
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
		l.Close()
	}()
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			select {
			case <-s.done:
				return ErrShutdown
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// A transient failure (EMFILE and the like): retry
				// after a pause, as net/http does.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				select {
				case <-time.After(backoff):
				case <-s.done:
					return ErrShutdown
				}
				continue
			}
			return err
		}
		backoff = 0
		sc, err := s.track(c)
		if errors.Is(err, errTooMany) {
			s.logf("nbd: refusing a connection from %s: %d connections already (the limit)", c.RemoteAddr(), s.maxConns())
			c.Close()
			continue
		}
		if sc == nil {
			c.Close()
			return ErrShutdown
		}
		go func() {
			defer s.untrack(sc)
			sc.serve()
		}()
	}
}

// ServeConn serves one already-accepted connection and returns when it is
// finished. The connection is closed on return.
func (s *Server) ServeConn(c net.Conn) {
	sc, err := s.track(c)
	if errors.Is(err, errTooMany) {
		s.logf("nbd: refusing a connection from %s: %d connections already (the limit)", c.RemoteAddr(), s.maxConns())
	}
	if sc == nil {
		c.Close()
		return
	}
	defer s.untrack(sc)
	sc.serve()
}

var errTooMany = errors.New("nbd: too many connections")

// track registers a new connection; it returns nil after Shutdown, and
// errTooMany when MaxConns are already being served.
func (s *Server) track(c net.Conn) (*serverConn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown {
		return nil, ErrShutdown
	}
	if len(s.conns) >= s.maxConns() {
		return nil, errTooMany
	}
	sc := newServerConn(s, c)
	s.conns[sc] = struct{}{}
	s.wg.Add(1)
	return sc, nil
}

func (s *Server) untrack(sc *serverConn) {
	s.mu.Lock()
	delete(s.conns, sc)
	s.mu.Unlock()
	s.wg.Done()
}

func (s *Server) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.shutdown {
		s.shutdown = true
		close(s.done)
	}
	for l := range s.listeners {
		l.Close()
	}
}

// Shutdown stops accepting connections, stops reading new requests on every
// connection, lets the requests already read finish and be answered, then
// closes the connections. Clients see a dropped connection (the client in
// this package reconnects and re-sends what was not answered). If ctx ends
// first, the remaining connections are closed at once and ctx's error is
// returned.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stop()
	s.mu.Lock()
	for sc := range s.conns {
		sc.stopReading()
	}
	s.mu.Unlock()
	idle := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(idle)
	}()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		s.Close()
		return ctx.Err()
	}
}

// Close closes every listener and connection at once, without waiting for
// requests in progress (their replies are lost; a write in progress may or
// may not reach the back-end). It waits for the request goroutines to end,
// so that the back-ends are no longer in use when it returns.
func (s *Server) Close() error {
	s.stop()
	s.mu.Lock()
	for sc := range s.conns {
		sc.raw.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}
