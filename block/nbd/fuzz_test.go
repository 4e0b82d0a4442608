package nbd

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/block/nbd/nbdtest"
)

// fakeConn is a net.Conn that reads a fixed byte stream and swallows
// writes: a peer whose every byte the fuzzer chooses.
type fakeConn struct {
	r    io.Reader
	out  bytes.Buffer // only with keep
	keep bool
}

func (f *fakeConn) Read(p []byte) (int, error) { return f.r.Read(p) }
func (f *fakeConn) Write(p []byte) (int, error) {
	if f.keep {
		f.out.Write(p)
	}
	return len(p), nil
}
func (f *fakeConn) Close() error                       { return nil }
func (f *fakeConn) LocalAddr() net.Addr                { return &net.UnixAddr{Name: "fuzz", Net: "unix"} }
func (f *fakeConn) RemoteAddr() net.Addr               { return &net.UnixAddr{Name: "fuzz", Net: "unix"} }
func (f *fakeConn) SetDeadline(t time.Time) error      { return nil }
func (f *fakeConn) SetReadDeadline(t time.Time) error  { return nil }
func (f *fakeConn) SetWriteDeadline(t time.Time) error { return nil }

// Builders for well-formed client traffic, the seeds of the fuzzers.

func clientHello(flags uint32) []byte { return binary.BigEndian.AppendUint32(nil, flags) }

func clientOpt(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, magicOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func goData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

func clientReq(typ, flags uint16, cookie, off uint64, n uint32, payload []byte) []byte {
	var h [requestSize]byte
	(&request{flags: flags, typ: typ, cookie: cookie, offset: off, length: n}).encode(h[:])
	return append(h[:], payload...)
}

func join(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// FuzzServer feeds the server arbitrary client traffic: handshake and
// requests. It must neither panic nor hang, and must not allocate what a
// client asks blindly (the advertised maximum is lowered to keep each run
// cheap). A valid prefix is prepended for half of the inputs so the fuzzer
// reaches the transmission phase easily.
func FuzzServer(f *testing.F) {
	hs := join(clientHello(flagCFixedNewstyle|flagCNoZeroes), clientOpt(optStructuredReply, nil), clientOpt(optGo, goData("d", infoBlockSize)))
	hsSimple := join(clientHello(flagCFixedNewstyle), clientOpt(optGo, goData("d")))
	f.Add(byte(0), join(clientHello(flagCFixedNewstyle), clientOpt(optList, nil), clientOpt(optInfo, goData("d", infoName, infoDescription)), clientOpt(optAbort, nil)))
	f.Add(byte(0), join(clientHello(0), clientOpt(optExportName, []byte("d")), clientReq(cmdRead, 0, 1, 0, 512, nil)))
	f.Add(byte(0), join(hs, clientReq(cmdWrite, cmdFlagFUA, 1, 100, 5, []byte("hello")), clientReq(cmdRead, cmdFlagDF, 2, 98, 10, nil), clientReq(cmdDisc, 0, 3, 0, 0, nil)))
	f.Add(byte(0), join(hsSimple, clientReq(cmdTrim, 0, 1, 0, 4096, nil), clientReq(cmdWriteZeroes, cmdFlagNoHole, 2, 4096, 4096, nil), clientReq(cmdFlush, 0, 3, 0, 0, nil)))
	f.Add(byte(0), join(clientHello(flagCFixedNewstyle), clientOpt(optStructuredReply, nil), clientOpt(optSetMetaContext, []byte{0, 0, 0, 1, 'd', 0, 0, 0, 1, 0, 0, 0, 15, 'b', 'a', 's', 'e', ':', 'a', 'l', 'l', 'o', 'c', 'a', 't', 'i', 'o', 'n'})))
	f.Add(byte(1), clientReq(cmdRead, 0, 7, 1<<62, 1<<31, nil))
	f.Add(byte(1), clientReq(cmdWrite, 0, 7, 0, 1<<20, []byte("short")))
	f.Add(byte(1), clientReq(cmdRead, 0, 7, 65530, 6, nil))
	f.Add(byte(2), clientReq(cmdRead, 0, 7, 0, 0, nil))
	f.Fuzz(func(t *testing.T, mode byte, in []byte) {
		switch mode % 3 {
		case 1:
			in = join(hs, in)
		case 2:
			in = join(hsSimple, in)
		}
		s, err := NewServer(Export{Name: "d", Backend: blocktest.NewMem(64 << 10), Description: "fuzz"})
		if err != nil {
			t.Fatal(err)
		}
		s.blockSize = [3]uint32{1, 4096, 128 << 10}
		s.MaxBufferedBytes = 1 << 20
		s.ServeConn(&fakeConn{r: bytes.NewReader(in)})
	})
}

// FuzzClientReplies feeds the client's reply decoder arbitrary server
// traffic while a read, a write and a flush are pending. Whatever the
// server sends, the decoder must not panic, must complete each call at most
// once, and may complete a read successfully only if its chunks covered it.
func FuzzClientReplies(f *testing.F) {
	chunk := func(flags, typ uint16, cookie uint64, payload []byte) []byte {
		h := make([]byte, structuredHeaderSize)
		putStructuredHeader(h, flags, typ, cookie, uint32(len(payload)))
		return append(h, payload...)
	}
	simple := func(errno uint32, cookie uint64, payload []byte) []byte {
		h := make([]byte, simpleReplySize)
		putSimpleReply(h, errno, cookie)
		return append(h, payload...)
	}
	data := func(off uint64, p []byte) []byte { return append(binary.BigEndian.AppendUint64(nil, off), p...) }
	hole := func(off uint64, n uint32) []byte {
		return binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(nil, off), n)
	}
	errChunk := func(errno uint32, msg string, off *uint64) []byte {
		b := binary.BigEndian.AppendUint32(nil, errno)
		b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
		b = append(b, msg...)
		if off != nil {
			b = binary.BigEndian.AppendUint64(b, *off)
		}
		return b
	}
	off := uint64(1500)
	f.Add(true, join(
		chunk(0, replyTypeOffsetData, 1, data(1000, bytes.Repeat([]byte{1}, 300))),
		chunk(0, replyTypeOffsetHole, 1, hole(1300, 300)),
		chunk(replyFlagDone, replyTypeNone, 1, nil),
		simple(0, 2, nil),
		chunk(replyFlagDone, replyTypeError, 3, errChunk(errIO, "flush failed", nil))))
	f.Add(true, join(
		chunk(0, replyTypeOffsetHole, 1, hole(1200, 400)),
		chunk(replyFlagDone, replyTypeOffsetData, 1, data(1000, bytes.Repeat([]byte{2}, 200)))))
	f.Add(true, chunk(replyFlagDone, replyTypeErrorOffset, 1, errChunk(errIO, "bad sector", &off)))
	f.Add(true, chunk(replyFlagDone, replyTypeOffsetData, 1, data(999, []byte{1})))
	f.Add(true, chunk(replyFlagDone, replyTypeOffsetHole, 1, hole(1000, 0xffffffff)))
	f.Add(false, join(simple(0, 1, bytes.Repeat([]byte{3}, 600)), simple(errNoSpc, 2, nil), simple(0, 3, nil)))
	f.Add(false, simple(0, 9, nil))
	f.Fuzz(func(t *testing.T, structured bool, in []byte) {
		read := newCall(cmdRead, 0, 1000, 600)
		buf := make([]byte, 600)
		read.rbufs = [][]byte{buf[:123], buf[123:]}
		pending := map[uint64]*call{
			1: read,
			2: newCall(cmdWrite, 0, 0, 4),
			3: newCall(cmdFlush, 0, 0, 0),
		}
		finished := map[uint64]bool{}
		rr := replyReader{
			r:          bufio.NewReader(bytes.NewReader(in)),
			structured: structured,
			lookup:     func(ck uint64) *call { return pending[ck] },
			finish: func(ck uint64, c *call, err error) {
				if finished[ck] {
					t.Fatalf("cookie %d finished twice", ck)
				}
				finished[ck] = true
				delete(pending, ck)
				// A read succeeds with its chunks covering it all, or
				// through a simple reply (none), whose length is ours.
				if ck == 1 && err == nil && c.cov.total != 600 && c.cov.total != 0 {
					t.Fatalf("read completed with %d of 600 bytes covered", c.cov.total)
				}
			},
		}
		for i := 0; i < 1000; i++ {
			if rr.next() != nil {
				break
			}
		}
	})
}

// FuzzClientHandshake feeds the client's handshake arbitrary server bytes.
func FuzzClientHandshake(f *testing.F) {
	greet := func(flags uint16) []byte {
		b := binary.BigEndian.AppendUint64(nil, magicInit)
		b = binary.BigEndian.AppendUint64(b, magicOpt)
		return binary.BigEndian.AppendUint16(b, flags)
	}
	rep := func(opt, typ uint32, data []byte) []byte {
		b := binary.BigEndian.AppendUint64(nil, magicOptReply)
		b = binary.BigEndian.AppendUint32(b, opt)
		b = binary.BigEndian.AppendUint32(b, typ)
		b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
		return append(b, data...)
	}
	export := binary.BigEndian.AppendUint16(nil, infoExport)
	export = binary.BigEndian.AppendUint64(export, 1<<20)
	export = binary.BigEndian.AppendUint16(export, flagHasFlags|flagSendFlush)
	bs := binary.BigEndian.AppendUint16(nil, infoBlockSize)
	bs = binary.BigEndian.AppendUint32(bs, 512)
	bs = binary.BigEndian.AppendUint32(bs, 4096)
	bs = binary.BigEndian.AppendUint32(bs, 1<<20)
	f.Add(join(greet(flagFixedNewstyle|flagNoZeroes), rep(optStructuredReply, repAck, nil), rep(optGo, repInfo, export), rep(optGo, repInfo, bs), rep(optGo, repAck, nil)))
	f.Add(join(greet(flagFixedNewstyle), rep(optStructuredReply, repErrUnsup, nil), rep(optGo, repErrUnsup, nil), make([]byte, 134)))
	f.Add(join(greet(0), make([]byte, 10)))
	f.Add(join(greet(flagFixedNewstyle), rep(optStructuredReply, repAck, nil), rep(optGo, repErrUnknown, []byte("nope"))))
	f.Fuzz(func(t *testing.T, in []byte) {
		fc := &fakeConn{r: bytes.NewReader(in)}
		_, info, err := handshake(fc, bufio.NewReader(fc), "d", nil)
		if err == nil {
			if info.minBS == 0 || info.maxReq == 0 || info.maxReq%info.minBS != 0 || info.maxReq > maxPayload {
				t.Fatalf("handshake accepted unusable block sizes %+v", info)
			}
		}
	})
}

// TestServerAnswersFuzzSeeds makes sure the server seed traffic is
// meaningful: the structured seed must get a data reply back.
func TestServerAnswersFuzzSeeds(t *testing.T) {
	hs := join(clientHello(flagCFixedNewstyle|flagCNoZeroes), clientOpt(optStructuredReply, nil), clientOpt(optGo, goData("d")))
	mem := blocktest.NewMem(64 << 10)
	s, _ := NewServer(Export{Name: "d", Backend: mem})
	fc := &fakeConn{r: bytes.NewReader(join(hs, clientReq(cmdWrite, 0, 1, 100, 5, []byte("hello")), clientReq(cmdFlush, 0, 2, 0, 0, nil))), keep: true}
	s.ServeConn(fc)
	if got := mem.Bytes()[100:105]; string(got) != "hello" {
		t.Fatalf("write in seed traffic stored %q", got)
	}
	if !bytes.Contains(fc.out.Bytes(), binary.BigEndian.AppendUint32(nil, magicSimple)) {
		t.Fatal("no reply in the server's output")
	}
}

// TestReplyReaderValidation checks the decoder's verdict on hand-made
// server traffic for one pending 600-byte read at offset 1000.
func TestReplyReaderValidation(t *testing.T) {
	chunk := func(flags, typ uint16, payload []byte) []byte {
		h := make([]byte, structuredHeaderSize)
		putStructuredHeader(h, flags, typ, 1, uint32(len(payload)))
		return append(h, payload...)
	}
	data := func(off uint64, n int, b byte) []byte {
		return append(binary.BigEndian.AppendUint64(nil, off), bytes.Repeat([]byte{b}, n)...)
	}
	hole := func(off uint64, n uint32) []byte {
		return binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(nil, off), n)
	}
	errc := func(errno uint32, msg string) []byte {
		return append(binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint32(nil, errno), uint16(len(msg))), msg...)
	}
	want := append(bytes.Repeat([]byte{7}, 300), make([]byte, 300)...)
	cases := []struct {
		name     string
		in       []byte
		ok       bool // read completes without error
		protocol bool // stream rejected
		errno    uint32
	}{
		{"data+hole", join(chunk(0, replyTypeOffsetHole, hole(1300, 300)), chunk(replyFlagDone, replyTypeOffsetData, data(1000, 300, 7))), true, false, 0},
		{"overlap", join(chunk(0, replyTypeOffsetData, data(1000, 300, 7)), chunk(0, replyTypeOffsetHole, hole(1299, 300))), false, true, 0},
		{"before request", chunk(0, replyTypeOffsetData, data(999, 10, 7)), false, true, 0},
		{"past request", chunk(0, replyTypeOffsetHole, hole(1500, 101)), false, true, 0},
		{"hole length wraps", chunk(0, replyTypeOffsetHole, hole(^uint64(0)-5, 100)), false, true, 0},
		{"done short", chunk(replyFlagDone, replyTypeOffsetData, data(1000, 599, 7)), false, true, 0},
		{"error", chunk(replyFlagDone, replyTypeError, errc(errIO, "disk on fire")), false, false, errIO},
		{"unknown error type", chunk(replyFlagDone, 1<<15|77, errc(errPerm, "")), false, false, errPerm},
		{"unknown type", chunk(replyFlagDone, 42, nil), false, true, 0},
		{"message too long", chunk(replyFlagDone, replyTypeError, errc(errIO, "x")[:6]), false, true, 0},
		{"block status unasked", chunk(replyFlagDone, replyTypeBlockStatus, make([]byte, 12)), false, true, 0},
	}
	for _, c := range cases {
		buf := make([]byte, 600)
		read := newCall(cmdRead, 0, 1000, 600)
		read.rbufs = [][]byte{buf[:100], buf[100:]}
		var result error
		done := false
		rr := replyReader{
			r: bytes.NewReader(c.in), structured: true,
			lookup: func(ck uint64) *call {
				if ck == 1 && !done {
					return read
				}
				return nil
			},
			finish: func(_ uint64, _ *call, err error) { done, result = true, err },
		}
		var err error
		for err == nil && !done {
			err = rr.next()
		}
		switch {
		case c.protocol:
			if !errors.Is(err, ErrProtocol) {
				t.Errorf("%s: stream error %v, want a protocol violation", c.name, err)
			}
		case c.ok:
			if err != nil || !done || result != nil || !bytes.Equal(buf, want) {
				t.Errorf("%s: err %v, done %v, result %v, data ok %v", c.name, err, done, result, bytes.Equal(buf, want))
			}
		default:
			var re *RemoteError
			if !done || !errors.As(result, &re) || uint32(re.Errno) != c.errno {
				t.Errorf("%s: done %v, result %v; want errno %d", c.name, done, result, c.errno)
			}
		}
	}
}

// TestHostileHandshake: a server announcing huge or malformed replies is
// refused at once, without allocating what it announces.
func TestHostileHandshake(t *testing.T) {
	greet := binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, magicInit), magicOpt), flagFixedNewstyle)
	rep := func(opt, typ, n uint32) []byte {
		b := binary.BigEndian.AppendUint64(nil, magicOptReply)
		b = binary.BigEndian.AppendUint32(b, opt)
		b = binary.BigEndian.AppendUint32(b, typ)
		return binary.BigEndian.AppendUint32(b, n)
	}
	info := func(typ uint16, rest ...byte) []byte {
		d := append(binary.BigEndian.AppendUint16(nil, typ), rest...)
		return append(rep(optGo, repInfo, uint32(len(d))), d...)
	}
	ack := rep(optStructuredReply, repAck, 0)
	cases := map[string][]byte{
		"1 GiB option reply":    join(greet, rep(optStructuredReply, repAck, 1<<30)),
		"reply to other option": join(greet, rep(optGo, repAck, 0)),
		"ack without export":    join(greet, ack, rep(optGo, repAck, 0)),
		"short export info":     join(greet, ack, info(infoExport, 1, 2, 3)),
		"zero block size":       join(greet, ack, info(infoBlockSize, make([]byte, 12)...)),
		"block size not pow2":   join(greet, ack, info(infoBlockSize, 0, 0, 3, 0, 0, 0, 16, 0, 0, 1, 0, 0)),
		"export too big":        join(greet, ack, info(infoExport, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 1), rep(optGo, repAck, 0)),
		"oldstyle":              join(binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, magicInit), magicOldstyle), make([]byte, 140)),
	}
	for name, in := range cases {
		fc := &fakeConn{r: bytes.NewReader(in)}
		_, info, err := handshake(fc, bufio.NewReader(fc), "d", nil)
		if err == nil {
			err = checkInfo(info)
		}
		if err == nil {
			t.Errorf("%s: handshake accepted it: %+v", name, info)
		}
	}
}

// FuzzServerTLS feeds a TLS-only server arbitrary client traffic: the
// option gate before NBD_OPT_STARTTLS, STARTTLS itself (with data, twice,
// followed by injected bytes) and, past the ack, a TLS handshake on bytes
// the fuzzer chooses. Nothing may panic or hang, and no export may be
// entered in the clear.
func FuzzServerTLS(f *testing.F) {
	hello := clientHello(flagCFixedNewstyle | flagCNoZeroes)
	f.Add(join(hello, clientOpt(optList, nil), clientOpt(optGo, goData("d")), clientOpt(optExportName, []byte("d"))))
	f.Add(join(hello, clientOpt(optStartTLS, nil)))
	f.Add(join(hello, clientOpt(optStartTLS, []byte("data")), clientOpt(optStartTLS, nil), clientOpt(optGo, goData("d"))))
	f.Add(join(hello, clientOpt(optAbort, nil)))
	f.Add(join(clientHello(0), clientOpt(optExportName, []byte("d")), clientReq(cmdRead, 0, 1, 0, 512, nil)))
	// A TLS 1.2 ClientHello's record header, truncated.
	f.Add(join(hello, clientOpt(optStartTLS, nil), []byte{0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00, 0x00, 0x3c, 0x03, 0x03}))
	s := tlsOnlyServer(f, nbdtest.MakeCreds(f))
	s.HandshakeTimeout = time.Second
	f.Fuzz(func(t *testing.T, in []byte) {
		fc := &fakeConn{r: bytes.NewReader(in), keep: true}
		sc, err := s.track(fc)
		if err != nil {
			t.Fatal(err)
		}
		defer s.untrack(sc)
		sc.serve()
		if sc.export != nil && !sc.tls {
			t.Fatal("an export was entered without TLS")
		}
	})
}
