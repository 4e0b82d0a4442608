package nbd

import (
	"bufio"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// replayLog keeps the writes the server acknowledged that no completed
// flush covers yet, in acknowledgement order, so that a reconnect can
// re-apply them (see Client).
type replayLog struct {
	limit int64 // bytes of write payload kept; -1: log nothing at all

	mu      sync.Mutex
	entries []logEntry
	bytes   int64
	// lostSeq is the newest acknowledgement whose write is not in entries
	// (0: none). Until a flush covers it, a reconnect means data may be
	// lost.
	lostSeq uint64
	// lost is set by a reconnect with lostSeq pending; the next Flush
	// reports it.
	lost bool
	// used is an unlocked estimate of bytes, so writers can skip copying
	// a payload the log has no room for.
	used atomic.Int64
}

// maxLogEntries bounds the log's length as limit bounds its bytes (trims
// and zeroings carry no payload but still cost an entry each).
const maxLogEntries = 1 << 16

type logEntry struct {
	seq   uint64
	typ   uint16
	flags uint16
	off   uint64
	n     uint32
	data  []byte // a write's payload (from getBuf)
}

func (l *replayLog) init(limit int64) { l.limit = limit }

// wants tells a writer whether to copy a payload of n bytes for the log.
func (l *replayLog) wants(n int64) bool {
	return l.limit > 0 && l.used.Load()+n <= l.limit
}

// add records an acknowledged write-like call, taking its payload copy.
func (l *replayLog) add(seq uint64, cl *call) {
	if l.limit < 0 {
		return
	}
	data := cl.logc
	cl.logc = nil
	l.mu.Lock()
	defer l.mu.Unlock()
	full := l.limit == 0 || len(l.entries) >= maxLogEntries || l.bytes+int64(len(data)) > l.limit
	if full || (cl.req.typ == cmdWrite && data == nil) {
		// No room: forget everything unflushed (a partial log cannot
		// restore the disk anyway) and remember that we did.
		if data != nil {
			putBuf(data)
		}
		l.dropLocked()
		l.lostSeq = seq
		return
	}
	l.entries = append(l.entries, logEntry{seq: seq, typ: cl.req.typ, flags: cl.req.flags, off: cl.req.offset, n: cl.req.length, data: data})
	l.bytes += int64(len(data))
	l.used.Store(l.bytes)
}

func (l *replayLog) dropLocked() {
	for _, e := range l.entries {
		if e.data != nil {
			putBuf(e.data)
		}
	}
	l.entries = l.entries[:0]
	l.bytes = 0
	l.used.Store(0)
}

// flushed records that a flush sent when the acknowledgement counter stood
// at seq has completed. It returns ErrWritesLost once after a reconnect
// that could not replay everything.
func (l *replayLog) flushed(seq uint64) error {
	if l.limit < 0 {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	i := 0
	for i < len(l.entries) && l.entries[i].seq <= seq {
		if d := l.entries[i].data; d != nil {
			putBuf(d)
		}
		l.bytes -= int64(len(l.entries[i].data))
		i++
	}
	l.entries = append(l.entries[:0], l.entries[i:]...)
	l.used.Store(l.bytes)
	if l.lostSeq != 0 && l.lostSeq <= seq {
		l.lostSeq = 0
	}
	if l.lost {
		l.lost = false
		return ErrWritesLost
	}
	return nil
}

// reconnected notes a new connection: writes we could not keep may be gone.
func (l *replayLog) reconnected() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lostSeq != 0 {
		l.lost = true
		l.lostSeq = 0
	}
}

// snapshot returns the entries to replay (their data stays owned by the log).
func (l *replayLog) snapshot() []logEntry {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]logEntry(nil), l.entries...)
}

// replay re-applies the log on a fresh connection, before it carries any
// other request: one command at a time, each awaited, so that overlapping
// writes land in their original order. The entries stay in the log: they
// are as unflushed on the new server as they were on the old.
//
// It holds the log's lock throughout, so no flush can drop an entry's
// buffer under it (none can run anyway: no connection is published yet).
func (c *Client) replay(nc net.Conn, br *bufio.Reader) error {
	entries := c.log.snapshot()
	if len(entries) == 0 {
		return nil
	}
	c.log.mu.Lock()
	defer c.log.mu.Unlock()
	deadline := time.Now().Add(c.opts.DialTimeout + time.Duration(len(entries))*time.Second)
	nc.SetDeadline(deadline)
	defer nc.SetDeadline(time.Time{})
	for _, e := range entries {
		cl := newCall(e.typ, e.flags, e.off, e.n)
		if e.data != nil {
			cl.wbufs = [][]byte{e.data}
		}
		cl.req.cookie = c.cookies.Add(1)
		var hdr [requestSize]byte
		cl.req.encode(hdr[:])
		bufs := append(net.Buffers{hdr[:]}, cl.wbufs...)
		if _, err := bufs.WriteTo(nc); err != nil {
			return fmt.Errorf("nbd: replaying writes: %w", err)
		}
		var result error
		finished := false
		rr := replyReader{
			r:          br,
			structured: c.structured,
			lookup: func(ck uint64) *call {
				if ck == cl.req.cookie && !finished {
					return cl
				}
				return nil
			},
			finish: func(_ uint64, _ *call, err error) { finished, result = true, err },
		}
		for !finished {
			if err := rr.next(); err != nil {
				return fmt.Errorf("nbd: replaying writes: %w", err)
			}
		}
		if result != nil {
			// The server refused the write again: it is not there.
			c.log.lost = true
		}
	}
	return nil
}
