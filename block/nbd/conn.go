package nbd

import (
	"bufio"
	"net"
	"sync"
	"time"
)

// conn is one transmission-phase connection of a Client. Callers write
// requests on it through a batchWriter; one reader goroutine matches replies to the
// pending calls. Whoever notices a failure calls fail; the reader then
// hands the unanswered calls to the client for re-sending.
type conn struct {
	cl *Client
	nc net.Conn
	br *bufio.Reader

	w batchWriter // requests

	mu      sync.Mutex
	pending map[uint64]*call
	dead    bool

	deadCh     chan struct{} // closed by fail
	handedOver chan struct{} // closed once the client has taken over the calls
}

func (c *Client) newConn(nc net.Conn, br *bufio.Reader) *conn {
	cn := &conn{
		cl:         c,
		nc:         nc,
		br:         br,
		pending:    make(map[uint64]*call),
		deadCh:     make(chan struct{}),
		handedOver: make(chan struct{}),
	}
	cn.w = batchWriter{c: nc, onError: func(error) { cn.fail() }}
	c.bg.Add(1)
	go func() {
		defer c.bg.Done()
		cn.readLoop()
	}()
	if c.opts.RequestTimeout > 0 {
		c.bg.Add(1)
		go func() {
			defer c.bg.Done()
			cn.watchdog(c.opts.RequestTimeout)
		}()
	}
	return cn
}

// send registers cl and writes its request. It returns false if the
// connection was already dead (cl was not taken). Once registered, cl is
// this connection's to answer or to hand over, even if the write fails.
func (cn *conn) send(cl *call) bool {
	cn.mu.Lock()
	if cn.dead {
		cn.mu.Unlock()
		return false
	}
	cl.req.cookie = cn.cl.cookies.Add(1)
	cl.resetReply()
	cl.sentAt = time.Now().UnixNano()
	cn.pending[cl.req.cookie] = cl
	// A fresh header per send: an old connection's writer may still be
	// reading the previous one.
	hdr := make([]byte, requestSize)
	cl.req.encode(hdr)
	cn.mu.Unlock()

	cn.w.write(append([][]byte{hdr}, cl.wbufs...)...)
	return true
}

// fail marks the connection dead and closes the socket, which stops the
// reader.
func (cn *conn) fail() {
	cn.mu.Lock()
	if !cn.dead {
		cn.dead = true
		close(cn.deadCh)
	}
	cn.mu.Unlock()
	cn.nc.Close()
}

func (cn *conn) close() { cn.fail() }

// disconnect ends the session politely: NBD_CMD_DISC, then close.
func (cn *conn) disconnect() {
	var hdr [requestSize]byte
	(&request{typ: cmdDisc}).encode(hdr[:])
	cn.w.locked(func() {
		cn.nc.SetWriteDeadline(time.Now().Add(time.Second))
		cn.nc.Write(hdr[:])
		// Close before another sender can write after the DISC, which
		// the protocol forbids.
		cn.fail()
	})
}

func (cn *conn) readLoop() {
	rr := replyReader{
		r:          cn.br,
		structured: cn.cl.structured,
		lookup: func(cookie uint64) *call {
			cn.mu.Lock()
			defer cn.mu.Unlock()
			return cn.pending[cookie]
		},
		finish: cn.finish,
	}
	var err error
	for err == nil {
		err = rr.next()
	}
	cn.fail()
	cn.mu.Lock()
	calls := make([]*call, 0, len(cn.pending))
	for _, cl := range cn.pending {
		calls = append(calls, cl)
	}
	clear(cn.pending)
	cn.mu.Unlock()
	cn.cl.connLost(cn, calls, err)
}

// finish is the reply reader's completion hook.
func (cn *conn) finish(cookie uint64, cl *call, err error) {
	if isRemoteShutdown(err) {
		// The server is going away: the protocol wants a disconnect from
		// us, and the request deserves another try on the next server.
		// Leave it pending; stopping the reader hands it over.
		go cn.disconnect()
		return
	}
	cn.mu.Lock()
	delete(cn.pending, cookie)
	cn.mu.Unlock()
	if err == nil {
		cn.cl.acked(cl)
	}
	cn.cl.finish(cl, err)
}

// watchdog drops the connection when a request has waited longer than
// timeout for its reply; the reader then hands the calls over for
// re-sending on a new connection.
func (cn *conn) watchdog(timeout time.Duration) {
	t := time.NewTicker(max(timeout/4, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-cn.deadCh:
			return
		case now := <-t.C:
			limit := now.Add(-timeout).UnixNano()
			cn.mu.Lock()
			stale := false
			for _, cl := range cn.pending {
				if cl.sentAt < limit {
					stale = true
					break
				}
			}
			cn.mu.Unlock()
			if stale {
				cn.cl.logf("nbd: a request to %s got no reply in %v; reconnecting", cn.cl.target.addr, timeout)
				cn.fail()
				return
			}
		}
	}
}
