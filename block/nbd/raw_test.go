package nbd

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/viovmm/vio/block"
)

// rawSession is a deliberately simple, independent NBD client used to send
// the server requests our Client would never send. One request at a time.
type rawSession struct {
	c          net.Conn
	br         *bufio.Reader
	structured bool
	cookie     uint64
}

func rawHandshake(t testing.TB, c net.Conn) *bufio.Reader {
	t.Helper()
	br := bufio.NewReader(c)
	var hello [18]byte
	if _, err := io.ReadFull(br, hello[:]); err != nil {
		t.Fatal(err)
	}
	if binary.BigEndian.Uint64(hello[:]) != magicInit || binary.BigEndian.Uint64(hello[8:]) != magicOpt {
		t.Fatalf("bad greeting % x", hello)
	}
	binary.Write(c, binary.BigEndian, uint32(flagCFixedNewstyle|flagCNoZeroes))
	return br
}

func rawOption(t testing.TB, c net.Conn, br *bufio.Reader, opt uint32, data []byte) (replies []rawOptReply) {
	t.Helper()
	if err := sendOption(c, opt, data); err != nil {
		t.Fatal(err)
	}
	for {
		typ, d, err := readOptReply(br, opt)
		if err != nil {
			t.Fatal(err)
		}
		replies = append(replies, rawOptReply{typ, d})
		if typ != repInfo && typ != repServer {
			return replies
		}
	}
}

type rawOptReply struct {
	typ  uint32
	data []byte
}

func rawSessionDial(t testing.TB, sock string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return c, rawHandshake(t, c)
}

func newRawSession(t testing.TB, sock, export string, structured bool) *rawSession {
	t.Helper()
	c, br := rawSessionDial(t, sock)
	if structured {
		if r := rawOption(t, c, br, optStructuredReply, nil); r[0].typ != repAck {
			t.Fatalf("structured reply refused: %#x", r[0].typ)
		}
	}
	req := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
	req = append(req, export...)
	req = binary.BigEndian.AppendUint16(req, 0)
	r := rawOption(t, c, br, optGo, req)
	if last := r[len(r)-1]; last.typ != repAck {
		t.Fatalf("NBD_OPT_GO: reply %#x", last.typ)
	}
	return &rawSession{c: c, br: br, structured: structured}
}

func (s *rawSession) close() {
	var hdr [requestSize]byte
	(&request{typ: cmdDisc}).encode(hdr[:])
	s.c.Write(hdr[:])
	s.c.Close()
}

// do sends one request and returns the error value of its reply.
func (s *rawSession) do(t testing.TB, typ, flags uint16, off uint64, n uint32, payload []byte) uint32 {
	t.Helper()
	s.cookie++
	var hdr [requestSize]byte
	(&request{flags: flags, typ: typ, cookie: s.cookie, offset: off, length: n}).encode(hdr[:])
	if _, err := s.c.Write(append(hdr[:], payload...)); err != nil {
		t.Fatal(err)
	}
	var errno uint32
	rr := replyReader{r: s.br, structured: s.structured}
	done := false
	var cur *call
	rr.lookup = func(ck uint64) *call {
		if ck != s.cookie || done {
			return nil
		}
		if cur == nil {
			cur = newCall(typ, flags, off, n)
			if typ == cmdRead {
				cur.rbufs = [][]byte{make([]byte, n)}
			}
		}
		return cur
	}
	rr.finish = func(_ uint64, _ *call, err error) {
		done = true
		if re, ok := err.(*RemoteError); ok {
			errno = uint32(re.Errno)
		} else if err != nil {
			t.Fatalf("reply: %v", err)
		}
	}
	for !done {
		if err := rr.next(); err != nil {
			t.Fatalf("%s: reading reply: %v", cmdName(typ), err)
		}
	}
	return errno
}

func listExports(t testing.TB, sock string) []string {
	t.Helper()
	c, br := rawSessionDial(t, sock)
	defer c.Close()
	var names []string
	for _, r := range rawOption(t, c, br, optList, nil) {
		if r.typ == repServer {
			n := binary.BigEndian.Uint32(r.data)
			names = append(names, string(r.data[4:4+n]))
		}
	}
	rawOption(t, c, br, optAbort, nil)
	return names
}

// flushCounter counts Flush calls that reached the back-end.
type flushCounter struct {
	block.Backend
	n atomic.Int64
}

func (f *flushCounter) Flush() error {
	f.n.Add(1)
	return f.Backend.Flush()
}
