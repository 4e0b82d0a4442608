package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/viovmm/vio/block"
)

// Options configure a Client. The zero value gives the defaults.
type Options struct {
	// DialTimeout bounds one connection attempt, handshake included
	// (default 10s).
	DialTimeout time.Duration
	// RequestTimeout is how long a request may go unanswered before the
	// connection is deemed dead, dropped, and the request re-sent on a new
	// one (default 60s; negative disables the watchdog).
	RequestTimeout time.Duration
	// MaxInFlight bounds the requests outstanding on the connection
	// (default 64).
	MaxInFlight int
	// ReconnectAttempts is how many connection attempts one outage gets
	// before the requests waiting on it fail (default 8; negative means
	// never reconnect). Attempts are spaced by ReconnectBackoff (default
	// 50ms), doubling up to 2s.
	ReconnectAttempts int
	ReconnectBackoff  time.Duration
	// MaxRetries is how many times one request is re-sent after the
	// connection carrying it was lost (default 4).
	MaxRetries int
	// ReplayBuffer bounds the bytes of acknowledged but not yet flushed
	// writes the client keeps to replay after a reconnect (default 64 MiB;
	// negative keeps none). See Client for what this buys.
	ReplayBuffer int64
	// ReadOnly opens the export read-only even if the server allows writes.
	ReadOnly bool
	// Logf, if set, is told about reconnects.
	Logf func(format string, args ...any)
	// Dial, if set, opens each connection (the first and every
	// reconnect's) in place of dialling the URI's address, which then
	// only names the server in messages; the URI still names the export.
	// A live migration's disk copy uses it to reach the destination
	// through the migration's own listener (a tagged connection, under
	// the migration's TLS). The handshake follows on what it returns.
	Dial func(ctx context.Context) (net.Conn, error)
	// TLS, if set, makes the client start TLS before any other option and
	// refuse a server that will not (see ClientTLSConfig). An empty
	// ServerName is taken from a TCP URI's host; a unix socket URI needs
	// it set.
	TLS *tls.Config
}

func (o *Options) setDefaults() {
	if o.DialTimeout <= 0 {
		o.DialTimeout = 10 * time.Second
	}
	if o.RequestTimeout == 0 {
		o.RequestTimeout = 60 * time.Second
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 64
	}
	switch {
	case o.ReconnectAttempts == 0:
		o.ReconnectAttempts = 8
	case o.ReconnectAttempts < 0:
		o.ReconnectAttempts = 0
	}
	if o.ReconnectBackoff <= 0 {
		o.ReconnectBackoff = 50 * time.Millisecond
	}
	if o.MaxRetries <= 0 {
		o.MaxRetries = 4
	}
	switch {
	case o.ReplayBuffer == 0:
		o.ReplayBuffer = 64 << 20
	case o.ReplayBuffer < 0:
		o.ReplayBuffer = 0
	}
}

const maxBackoff = 2 * time.Second

// Client is an NBD export used as a block.Backend. It keeps one connection
// with many requests in flight, matched to their replies by cookie, and
// splits and aligns requests to the server's block size constraints.
//
// # Reconnects and what Flush promises
//
// When the connection drops (or a request times out, or the server breaks
// the protocol or announces shutdown), the client dials again, with
// backoff, and re-sends every request that had not been answered: callers
// see a delay, not an error, unless the outage outlasts ReconnectAttempts
// or a request has been re-sent MaxRetries times. Re-sending is safe
// because every NBD command is idempotent for a single writer.
//
// A write the old server acknowledged but no flush has covered yet may have
// been lost with it (a restarted server loses its cache). So the client
// keeps a copy of such writes (up to ReplayBuffer bytes, dropped as flushes
// complete) and replays them, in acknowledgement order and one at a time,
// on the new connection before anything else is sent. Hence:
//
//   - Flush returning nil means every write that completed before Flush was
//     called is durable on the server, across any number of reconnects.
//   - If the replay buffer overflowed (or was disabled) and a reconnect
//     happened before a flush covered the writes it could not keep, the next
//     Flush returns ErrWritesLost: it cannot vouch for them. So does every
//     later Flush and write, until the client is closed and dialled anew: a
//     guest that retried its FLUSH must not be told that data it will never
//     see again is safe (the fsync lesson). A flush the server answers with
//     an error latches the same way, since the server's disk may have
//     dropped the data.
//
// The replay assumes this client is the export's only writer (another
// client's writes in between could be overwritten by the replay), as does
// any disk with a volatile cache.
type Client struct {
	target target
	opts   Options
	tls    *tls.Config // opts.TLS with the server name filled in

	// Fixed by the first handshake; a reconnect must find the same.
	size       int64
	tflags     uint16
	minBS      uint32
	maxReq     uint32
	structured bool
	readOnly   bool

	slots   chan struct{}
	cookies atomic.Uint64
	acks    atomic.Uint64 // sequence of acknowledged writes, for the log

	log replayLog

	rmw sync.Mutex // serialises read-modify-write of unaligned writes

	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	bg     sync.WaitGroup // reader, watchdog and reconnect goroutines

	mu      sync.Mutex
	cur     *conn
	state   int
	ready   chan struct{} // closed when a reconnect ends
	downErr error
	closed  bool

	// flushErr latches a flush failure that means acknowledged writes may
	// be gone (see Client); every later Flush and write returns it.
	flushErr atomic.Pointer[error]
}

const (
	stateConnected = iota
	stateReconnecting
	stateDown
)

var (
	_ block.Backend          = (*Client)(nil)
	_ block.Discarder        = (*Client)(nil)
	_ block.ZeroWriter       = (*Client)(nil)
	_ block.ReadOnlyReporter = (*Client)(nil)
	_ block.VectorReaderAt   = (*Client)(nil)
	_ block.VectorWriterAt   = (*Client)(nil)
)

// Dial connects to the export named by uri, nbd://host[:port]/export or
// nbd+unix:///export?socket=PATH. ctx bounds the first connection only.
func Dial(ctx context.Context, uri string, opts Options) (*Client, error) {
	t, err := parseURI(uri)
	if err != nil {
		return nil, err
	}
	opts.setDefaults()
	c := &Client{target: t, opts: opts, slots: make(chan struct{}, opts.MaxInFlight)}
	if opts.TLS != nil {
		c.tls = opts.TLS.Clone()
		if c.tls.ServerName == "" {
			if t.network != "tcp" {
				return nil, errors.New("nbd: TLS over a unix socket needs the server's name to check its certificate against (tls-hostname)")
			}
			host, _, err := net.SplitHostPort(t.addr)
			if err != nil {
				return nil, fmt.Errorf("nbd: %w", err)
			}
			c.tls.ServerName = host
		}
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	nc, br, info, err := c.dialOnce(ctx)
	if err != nil {
		c.cancel()
		return nil, err
	}
	c.tflags, c.minBS, c.maxReq, c.structured = info.tflags, info.minBS, info.maxReq, info.structured
	// Bytes past the last whole minimum block cannot be addressed.
	c.size = int64(info.size) / int64(info.minBS) * int64(info.minBS)
	c.readOnly = opts.ReadOnly || info.tflags&flagReadOnly != 0
	limit := opts.ReplayBuffer
	if info.tflags&flagSendFlush == 0 {
		// Without a flush command the server promises nothing beyond
		// its acknowledgement, and we can promise no more: keep no log.
		limit = -1
	}
	c.log.init(limit)
	c.mu.Lock() // the reader may report a loss at once
	c.cur = c.newConn(nc, br)
	c.mu.Unlock()
	return c, nil
}

// dialOnce makes one connection and runs the handshake on it.
func (c *Client) dialOnce(ctx context.Context) (net.Conn, *bufio.Reader, exportInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.DialTimeout)
	defer cancel()
	var raw net.Conn
	var err error
	if c.opts.Dial != nil {
		raw, err = c.opts.Dial(ctx)
	} else {
		var d net.Dialer
		raw, err = d.DialContext(ctx, c.target.network, c.target.addr)
	}
	if err != nil {
		return nil, nil, exportInfo{}, fmt.Errorf("nbd: %w", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		raw.SetDeadline(dl)
	}
	// Cancellation (Close) must also interrupt a handshake in progress
	// (a TLS connection's deadlines are its transport's).
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
	br := bufio.NewReaderSize(raw, 64<<10)
	nc, info, err := handshake(raw, br, c.target.export, c.tls)
	if err == nil {
		err = checkInfo(info)
	}
	if !stop() || err != nil {
		nc.Close()
		if err == nil {
			err = ctx.Err()
		}
		return nil, nil, exportInfo{}, err
	}
	nc.SetDeadline(time.Time{})
	return nc, br, info, nil
}

// Size returns the export's size (rounded down to its minimum block size).
func (c *Client) Size() int64 { return c.size }

// ReadOnly reports whether writes are refused.
func (c *Client) ReadOnly() bool { return c.readOnly }

func (c *Client) logf(format string, args ...any) {
	if c.opts.Logf != nil {
		c.opts.Logf(format, args...)
	}
}

func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// ---- public I/O ----

// ReadAt reads len(p) bytes at off, following io.ReaderAt.
func (c *Client) ReadAt(p []byte, off int64) (int, error) {
	return c.ReadvAt([][]byte{p}, off)
}

// ReadvAt reads into bufs as if they were one buffer, in as few requests as
// the server's maximum payload allows.
func (c *Client) ReadvAt(bufs [][]byte, off int64) (int, error) {
	if c.isClosed() {
		return 0, block.ErrClosed
	}
	total := int64(0)
	for _, b := range bufs {
		total += int64(len(b))
	}
	if off < 0 {
		return 0, fmt.Errorf("nbd: read at negative offset %d: %w", off, block.ErrOutOfRange)
	}
	if total == 0 {
		return 0, nil
	}
	if off >= c.size {
		return 0, io.EOF
	}
	n := min(total, c.size-off)
	if err := c.readRange(limitBufs(bufs, n), off, n); err != nil {
		return 0, err
	}
	if n < total {
		return int(n), io.EOF
	}
	return int(n), nil
}

// WriteAt writes p at off. A write that does not fit within Size writes
// nothing and fails with block.ErrOutOfRange.
func (c *Client) WriteAt(p []byte, off int64) (int, error) {
	return c.WritevAt([][]byte{p}, off)
}

// WritevAt writes bufs as if they were one buffer.
func (c *Client) WritevAt(bufs [][]byte, off int64) (int, error) {
	total := int64(0)
	for _, b := range bufs {
		total += int64(len(b))
	}
	if err := c.checkWrite(off, total); err != nil {
		return 0, err
	}
	if total == 0 {
		return 0, nil
	}
	if err := c.writeRange(bufs, off, total); err != nil {
		return 0, err
	}
	return int(total), nil
}

func (c *Client) checkWrite(off, n int64) error {
	if c.isClosed() {
		return block.ErrClosed
	}
	if p := c.flushErr.Load(); p != nil {
		return *p
	}
	if c.readOnly {
		return block.ErrReadOnly
	}
	if err := block.CheckRange(off, n, c.size); err != nil {
		return fmt.Errorf("nbd: %d bytes at %d on a %d-byte export: %w", n, off, c.size, err)
	}
	return nil
}

// Flush makes every write completed before it durable on the server (see
// Client for the guarantee across reconnects).
func (c *Client) Flush() error {
	if c.isClosed() {
		return block.ErrClosed
	}
	if c.tflags&flagSendFlush == 0 || c.readOnly {
		return nil
	}
	if p := c.flushErr.Load(); p != nil {
		return *p
	}
	seq := c.acks.Load()
	err := c.do(newCall(cmdFlush, 0, 0, 0))
	if err == nil {
		err = c.log.flushed(seq)
	}
	// A lost connection is not a lost write: the replay log still holds
	// what it covered, and the next Flush retries. A server's error reply
	// or writes the log could not keep are.
	var re *RemoteError
	if errors.As(err, &re) || errors.Is(err, ErrWritesLost) {
		c.flushErr.CompareAndSwap(nil, &err)
		return *c.flushErr.Load()
	}
	return err
}

// Discard sends NBD_CMD_TRIM for the whole blocks inside the range (it is
// advisory, so the unaligned edges are left alone). Without server support
// it does nothing.
func (c *Client) Discard(off, n int64) error {
	if err := c.checkWrite(off, n); err != nil {
		return err
	}
	if c.tflags&flagSendTrim == 0 {
		return nil
	}
	bs := int64(c.minBS)
	start, end := (off+bs-1)/bs*bs, (off+n)/bs*bs
	if end <= start {
		return nil
	}
	return c.effect(cmdTrim, 0, start, end-start)
}

// WriteZeroes zeroes the range with NBD_CMD_WRITE_ZEROES (NBD_CMD_FLAG_NO_HOLE
// unless unmap), or by writing zeroes if the server lacks it.
func (c *Client) WriteZeroes(off, n int64, unmap bool) error {
	if err := c.checkWrite(off, n); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	if c.tflags&flagSendWriteZeroes == 0 {
		for n > 0 {
			k := min(n, int64(len(zeroes)))
			if err := c.writeRange([][]byte{zeroes[:k]}, off, k); err != nil {
				return err
			}
			off, n = off+k, n-k
		}
		return nil
	}
	bs := int64(c.minBS)
	start, end := (off+bs-1)/bs*bs, (off+n)/bs*bs
	if end <= start {
		return c.writeRange([][]byte{zeroes[:n]}, off, n) // within one block
	}
	if start > off {
		if err := c.writeRange([][]byte{zeroes[:start-off]}, off, start-off); err != nil {
			return err
		}
	}
	if off+n > end {
		if err := c.writeRange([][]byte{zeroes[:off+n-end]}, end, off+n-end); err != nil {
			return err
		}
	}
	var flags uint16
	if !unmap {
		flags = cmdFlagNoHole
	}
	return c.effect(cmdWriteZeroes, flags, start, end-start)
}

// maxEffect is the largest TRIM or WRITE_ZEROES we send at once: the length
// field has 32 bits, and 1 GiB is a size no server refuses for its cost.
const maxEffect = 1 << 30

// effect sends a payload-less command over an aligned range, split.
func (c *Client) effect(typ, flags uint16, off, n int64) error {
	step := maxEffect / int64(c.minBS) * int64(c.minBS)
	var calls []*call
	for n > 0 {
		k := min(n, step)
		calls = append(calls, newCall(typ, flags, uint64(off), uint32(k)))
		off, n = off+k, n-k
	}
	return c.doAll(calls)
}

// ---- splitting and alignment ----

func (c *Client) aligned(off, n int64) bool {
	bs := int64(c.minBS)
	return off%bs == 0 && n%bs == 0
}

// readRange reads any range: the whole blocks in it go straight into the
// caller's buffers; a partial block at either end goes through a bounce
// buffer of one block.
func (c *Client) readRange(bufs [][]byte, off, n int64) error {
	if c.aligned(off, n) {
		return c.readAligned(bufs, off, n)
	}
	bs := int64(c.minBS)
	start, end := off/bs*bs, (off+n+bs-1)/bs*bs
	if end-start <= 2*bs {
		bounce := make([]byte, end-start)
		if err := c.readAligned([][]byte{bounce}, start, end-start); err != nil {
			return err
		}
		copyToBufs(bufs, bounce[off-start:off-start+n])
		return nil
	}
	// Head block, aligned middle, tail block.
	head, tail := start+bs, end-bs
	pos := int64(0)
	if off > start {
		block := make([]byte, bs)
		if err := c.readAligned([][]byte{block}, start, bs); err != nil {
			return err
		}
		copyToBufs(sliceBufs(bufs, 0, head-off), block[off-start:])
		pos = head - off
	}
	midEnd := tail
	if off+n == end {
		midEnd = end
	}
	if err := c.readAligned(sliceBufs(bufs, pos, midEnd-(off+pos)), off+pos, midEnd-(off+pos)); err != nil {
		return err
	}
	if midEnd < off+n {
		block := make([]byte, bs)
		if err := c.readAligned([][]byte{block}, tail, bs); err != nil {
			return err
		}
		copyToBufs(sliceBufs(bufs, tail-off, off+n-tail), block)
	}
	return nil
}

func (c *Client) readAligned(bufs [][]byte, off, n int64) error {
	var calls []*call
	for pos := int64(0); pos < n; {
		k := min(n-pos, int64(c.maxReq))
		cl := newCall(cmdRead, 0, uint64(off+pos), uint32(k))
		cl.rbufs = sliceBufs(bufs, pos, k)
		calls = append(calls, cl)
		pos += k
	}
	return c.doAll(calls)
}

// writeRange writes any range. Whole blocks go straight from the caller's
// buffers; a partial block at either end is read, patched and written back.
// These read-modify-writes are serialised among themselves, so that two
// unaligned writes sharing a block cannot undo each other; an aligned write
// racing one on the same block is as undefined as overlapping concurrent
// writes always are.
func (c *Client) writeRange(bufs [][]byte, off, n int64) error {
	if c.aligned(off, n) {
		return c.writeAligned(bufs, off, n)
	}
	bs := int64(c.minBS)
	start, end := off/bs*bs, (off+n+bs-1)/bs*bs
	c.rmw.Lock()
	defer c.rmw.Unlock()
	if end-start <= 2*bs {
		bounce := make([]byte, end-start)
		if err := c.readAligned([][]byte{bounce[:bs]}, start, bs); err != nil {
			return err
		}
		if end-bs > start {
			if err := c.readAligned([][]byte{bounce[bs:]}, end-bs, bs); err != nil {
				return err
			}
		}
		gatherBufs(bounce[off-start:off-start+n], bufs)
		return c.writeAligned([][]byte{bounce}, start, end-start)
	}
	var out [][]byte // head block, the caller's middle, tail block
	pos := int64(0)
	if off > start {
		block := make([]byte, bs)
		if err := c.readAligned([][]byte{block}, start, bs); err != nil {
			return err
		}
		gatherBufs(block[off-start:], sliceBufs(bufs, 0, start+bs-off))
		out = append(out, block)
		pos = start + bs - off
	}
	midEnd := (off + n) / bs * bs
	out = append(out, sliceBufs(bufs, pos, midEnd-(off+pos))...)
	if midEnd < off+n {
		block := make([]byte, bs)
		if err := c.readAligned([][]byte{block}, midEnd, bs); err != nil {
			return err
		}
		gatherBufs(block, sliceBufs(bufs, midEnd-off, off+n-midEnd))
		out = append(out, block)
	}
	return c.writeAligned(out, start, end-start)
}

func (c *Client) writeAligned(bufs [][]byte, off, n int64) error {
	var calls []*call
	for pos := int64(0); pos < n; {
		k := min(n-pos, int64(c.maxReq))
		cl := newCall(cmdWrite, 0, uint64(off+pos), uint32(k))
		cl.wbufs = sliceBufs(bufs, pos, k)
		if c.log.wants(k) {
			cl.logc = getBuf(int(k))
			gatherBufs(cl.logc, cl.wbufs)
		}
		calls = append(calls, cl)
		pos += k
	}
	return c.doAll(calls)
}

// doAll runs calls concurrently and returns the first error.
func (c *Client) doAll(calls []*call) error {
	if len(calls) == 1 {
		return c.do(calls[0])
	}
	errs := make(chan error, len(calls))
	for _, cl := range calls {
		go func() { errs <- c.do(cl) }()
	}
	var first error
	for range calls {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// limitBufs returns the first n bytes of bufs.
func limitBufs(bufs [][]byte, n int64) [][]byte { return sliceBufs(bufs, 0, n) }

// sliceBufs returns bytes [pos, pos+n) of the concatenation of bufs.
func sliceBufs(bufs [][]byte, pos, n int64) [][]byte {
	var out [][]byte
	for _, b := range bufs {
		if n == 0 {
			break
		}
		if pos >= int64(len(b)) {
			pos -= int64(len(b))
			continue
		}
		k := min(int64(len(b))-pos, n)
		out = append(out, b[pos:pos+k])
		pos, n = 0, n-k
	}
	return out
}

func copyToBufs(bufs [][]byte, src []byte) {
	for _, b := range bufs {
		src = src[copy(b, src):]
	}
}

func gatherBufs(dst []byte, bufs [][]byte) {
	for _, b := range bufs {
		dst = dst[copy(dst, b):]
	}
}

// ---- request life cycle ----

// do sends cl and waits for its final result, across reconnects.
func (c *Client) do(cl *call) error {
	select {
	case c.slots <- struct{}{}:
	case <-c.ctx.Done():
		return block.ErrClosed
	}
	defer func() { <-c.slots }()
	if err := c.submit(cl, true); err != nil {
		c.finish(cl, err)
	}
	<-cl.done
	return cl.err
}

// submit puts cl on the current connection, waiting out a reconnect. With
// trigger set, a client whose last reconnect failed tries again.
func (c *Client) submit(cl *call, trigger bool) error {
	for {
		cn, err := c.conn(trigger)
		if err != nil {
			return err
		}
		if cn.send(cl) {
			return nil
		}
		// The connection died before taking the call: wait until its
		// loss has been handled, then pick up the next one.
		select {
		case <-cn.handedOver:
		case <-c.ctx.Done():
		}
	}
}

// conn returns the live connection, waiting for a reconnect in progress.
func (c *Client) conn(trigger bool) (*conn, error) {
	waited := false
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, block.ErrClosed
		}
		switch c.state {
		case stateConnected:
			cn := c.cur
			c.mu.Unlock()
			return cn, nil
		case stateDown:
			if !trigger || waited {
				err := c.downErr
				c.mu.Unlock()
				return nil, err
			}
			c.state, c.ready = stateReconnecting, make(chan struct{})
			cause := c.downErr
			c.bg.Add(1)
			go func() {
				defer c.bg.Done()
				c.reconnect(nil, cause)
			}()
		}
		ready := c.ready
		c.mu.Unlock()
		select {
		case <-ready:
		case <-c.ctx.Done():
		}
		waited = true
	}
}

// finish completes a call for good.
func (c *Client) finish(cl *call, err error) {
	if cl.logc != nil {
		putBuf(cl.logc)
		cl.logc = nil
	}
	cl.err = err
	close(cl.done)
}

// acked is the reader's hook for a successful reply: an acknowledged write
// enters the replay log before its caller can see it completed.
func (c *Client) acked(cl *call) {
	switch cl.req.typ {
	case cmdWrite, cmdTrim, cmdWriteZeroes:
		c.log.add(c.acks.Add(1), cl)
	}
}

// connLost is run by a connection's reader when it has stopped, with the
// calls still unanswered on it.
func (c *Client) connLost(cn *conn, calls []*call, cause error) {
	defer close(cn.handedOver)
	c.mu.Lock()
	if c.cur == cn {
		c.cur = nil
	}
	if c.closed {
		c.mu.Unlock()
		for _, cl := range calls {
			c.finish(cl, block.ErrClosed)
		}
		return
	}
	c.state, c.ready = stateReconnecting, make(chan struct{})
	c.mu.Unlock()
	c.logf("nbd: connection to %s lost: %v; %d requests in flight", c.target.addr, cause, len(calls))
	c.bg.Add(1)
	go func() {
		defer c.bg.Done()
		c.reconnect(calls, cause)
	}()
}

// reconnect dials until it gets a connection, replays the write log, and
// re-sends calls; or gives up and fails them.
func (c *Client) reconnect(calls []*call, cause error) {
	backoff := c.opts.ReconnectBackoff
	for attempt := 0; attempt < c.opts.ReconnectAttempts; attempt++ {
		if attempt > 0 {
			select {
			case <-time.After(backoff):
			case <-c.ctx.Done():
			}
			backoff = min(2*backoff, maxBackoff)
		}
		if c.ctx.Err() != nil {
			break
		}
		nc, br, info, err := c.dialOnce(c.ctx)
		if err != nil {
			cause = err
			if errors.Is(err, ErrUnknownExport) {
				break
			}
			continue
		}
		if err := c.sameExport(info); err != nil {
			nc.Close()
			cause = err
			break
		}
		c.log.reconnected()
		if err := c.replay(nc, br); err != nil {
			nc.Close()
			cause = err
			continue
		}
		cn := c.newConn(nc, br)
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			cn.close()
			cause = block.ErrClosed
			break
		}
		c.cur, c.state = cn, stateConnected
		close(c.ready)
		c.mu.Unlock()
		c.logf("nbd: reconnected to %s; re-sending %d requests", c.target.addr, len(calls))
		for _, cl := range calls {
			cl.retries++
			if cl.retries > c.opts.MaxRetries {
				c.finish(cl, fmt.Errorf("nbd: %s: connection lost %d times: %w", cmdName(cl.req.typ), cl.retries, cause))
				continue
			}
			if err := c.submit(cl, false); err != nil {
				c.finish(cl, err)
			}
		}
		return
	}
	if c.ctx.Err() != nil {
		cause = block.ErrClosed
	}
	err := fmt.Errorf("nbd: connection to %s lost: %w", c.target.addr, cause)
	c.mu.Lock()
	c.state, c.downErr = stateDown, err
	close(c.ready)
	c.mu.Unlock()
	for _, cl := range calls {
		c.finish(cl, err)
	}
}

// sameExport checks that a reconnect reached the export we had.
func (c *Client) sameExport(info exportInfo) error {
	size := int64(info.size) / int64(info.minBS) * int64(info.minBS)
	if size != c.size || info.minBS != c.minBS || info.structured != c.structured {
		return fmt.Errorf("nbd: export %q changed across a reconnect (size %d, block %d)", c.target.export, info.size, info.minBS)
	}
	if info.tflags&flagReadOnly != 0 && !c.readOnly {
		return fmt.Errorf("nbd: export %q became read-only across a reconnect", c.target.export)
	}
	if (info.tflags^c.tflags)&(flagSendFlush|flagSendTrim|flagSendWriteZeroes) != 0 {
		return fmt.Errorf("nbd: export %q changed its capabilities across a reconnect", c.target.export)
	}
	return nil
}

// Close flushes, disconnects politely (NBD_CMD_DISC) and releases the
// connection. It returns the flush error, if any.
func (c *Client) Close() error {
	if c.isClosed() {
		return block.ErrClosed
	}
	ferr := c.Flush()
	c.mu.Lock()
	c.closed = true
	cn := c.cur
	c.mu.Unlock()
	if cn != nil {
		cn.disconnect()
	}
	c.cancel()
	c.bg.Wait()
	if errors.Is(ferr, block.ErrClosed) {
		ferr = nil
	}
	return ferr
}
