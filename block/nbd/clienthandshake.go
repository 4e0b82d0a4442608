package nbd

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"net"
	"net/url"
	"strings"
)

// exportInfo is what the handshake learned about the export.
type exportInfo struct {
	size       uint64
	tflags     uint16
	minBS      uint32 // minimum block size: alignment of every request
	prefBS     uint32
	maxReq     uint32 // largest READ/WRITE payload we send
	structured bool
}

// target is a parsed NBD URI.
type target struct {
	network, addr, export string
}

// parseURI accepts nbd://host[:port]/export and
// nbd+unix:///export?socket=PATH (the forms qemu and libnbd use).
func parseURI(s string) (target, error) {
	u, err := url.Parse(s)
	if err != nil {
		return target{}, fmt.Errorf("nbd: %w", err)
	}
	t := target{export: strings.TrimPrefix(u.Path, "/")}
	switch u.Scheme {
	case "nbd", "nbd+tcp":
		if u.Host == "" {
			return target{}, fmt.Errorf("nbd: %q has no host", s)
		}
		t.network, t.addr = "tcp", u.Host
		if u.Port() == "" {
			t.addr = net.JoinHostPort(u.Hostname(), "10809")
		}
	case "nbd+unix":
		if u.Host != "" {
			return target{}, fmt.Errorf("nbd: %q: a unix socket URI has no host", s)
		}
		t.network, t.addr = "unix", u.Query().Get("socket")
		if t.addr == "" {
			return target{}, fmt.Errorf("nbd: %q lacks ?socket=PATH", s)
		}
	default:
		return target{}, fmt.Errorf("nbd: %q: scheme must be nbd or nbd+unix", s)
	}
	if len(t.export) > maxString {
		return target{}, errors.New("nbd: export name longer than 4096 bytes")
	}
	return t, nil
}

// Limits on what a server may make the handshake read.
const (
	maxOptReplyData = 64 << 10
	maxOptReplies   = 256
)

// handshake negotiates fixed newstyle, TLS if tlsCfg is set, structured
// replies and NBD_OPT_GO (falling back to NBD_OPT_EXPORT_NAME for servers
// without it). It returns the connection to use from now on: c, or a TLS
// connection over c (br then reads from it).
func handshake(c net.Conn, br *bufio.Reader, export string, tlsCfg *tls.Config) (net.Conn, exportInfo, error) {
	info, err := handshakeOn(&c, br, export, tlsCfg)
	return c, info, err
}

func handshakeOn(cp *net.Conn, br *bufio.Reader, export string, tlsCfg *tls.Config) (exportInfo, error) {
	c := *cp
	var hello [18]byte
	if _, err := io.ReadFull(br, hello[:]); err != nil {
		return exportInfo{}, fmt.Errorf("nbd: reading server greeting: %w", err)
	}
	if m := binary.BigEndian.Uint64(hello[0:]); m != magicInit {
		return exportInfo{}, protoErrorf("greeting magic %#x", m)
	}
	switch m := binary.BigEndian.Uint64(hello[8:]); m {
	case magicOpt:
	case magicOldstyle:
		return exportInfo{}, errors.New("nbd: server uses oldstyle negotiation, which is not supported")
	default:
		return exportInfo{}, protoErrorf("greeting magic %#x", m)
	}
	hs := binary.BigEndian.Uint16(hello[16:])
	var cflags uint32
	noZeroes := hs&flagNoZeroes != 0
	if noZeroes {
		cflags |= flagCNoZeroes
	}
	fixed := hs&flagFixedNewstyle != 0
	if fixed {
		cflags |= flagCFixedNewstyle
	}
	if err := binary.Write(c, binary.BigEndian, cflags); err != nil {
		return exportInfo{}, err
	}
	info := exportInfo{minBS: 1, prefBS: defaultPrefBS, maxReq: maxPayload}
	if tlsCfg != nil {
		if !fixed {
			return exportInfo{}, errors.New("nbd: TLS asked for, but the server does not speak fixed newstyle, which TLS needs")
		}
		tc, err := startTLS(c, br, tlsCfg)
		if err != nil {
			return exportInfo{}, err
		}
		c, *cp = tc, tc
	}
	if !fixed {
		return exportName(c, br, export, noZeroes, info)
	}

	if err := sendOption(c, optStructuredReply, nil); err != nil {
		return exportInfo{}, err
	}
	typ, _, err := readOptReply(br, optStructuredReply)
	if err != nil {
		return exportInfo{}, err
	}
	switch {
	case typ == repAck:
		info.structured = true
	case typ&repFlagError != 0:
		// Simple replies it is.
	default:
		return exportInfo{}, protoErrorf("reply %#x to NBD_OPT_STRUCTURED_REPLY", typ)
	}

	req := make([]byte, 0, 4+len(export)+4)
	req = binary.BigEndian.AppendUint32(req, uint32(len(export)))
	req = append(req, export...)
	req = binary.BigEndian.AppendUint16(req, 1)
	req = binary.BigEndian.AppendUint16(req, infoBlockSize)
	if err := sendOption(c, optGo, req); err != nil {
		return exportInfo{}, err
	}
	haveExport := false
	for i := 0; i < maxOptReplies; i++ {
		typ, data, err := readOptReply(br, optGo)
		if err != nil {
			return exportInfo{}, err
		}
		switch typ {
		case repInfo:
			if err := parseInfo(data, &info, &haveExport); err != nil {
				return exportInfo{}, err
			}
		case repAck:
			if !haveExport {
				return exportInfo{}, protoErrorf("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT")
			}
			return info, nil
		case repErrUnsup:
			return exportName(c, br, export, noZeroes, info)
		case repErrUnknown:
			return exportInfo{}, fmt.Errorf("%w %q%s", ErrUnknownExport, export, optMessage(data))
		case repErrTLSReqd:
			return exportInfo{}, fmt.Errorf("nbd: the server requires TLS: give the client TLS credentials (the nbd leaf's tls-creds option)%s", optMessage(data))
		default:
			if typ&repFlagError != 0 {
				return exportInfo{}, fmt.Errorf("nbd: server refused export %q: %s%s", export, repName(typ), optMessage(data))
			}
			return exportInfo{}, protoErrorf("reply type %#x to NBD_OPT_GO", typ)
		}
	}
	return exportInfo{}, protoErrorf("more than %d replies to NBD_OPT_GO", maxOptReplies)
}

// startTLS asks for TLS as the first option, as the protocol advises a
// client that insists on it (options before it could be tampered with),
// and runs the TLS handshake. Any refusal ends the session: falling back
// to plain text is what a man in the middle would want.
func startTLS(c net.Conn, br *bufio.Reader, cfg *tls.Config) (net.Conn, error) {
	if err := sendOption(c, optStartTLS, nil); err != nil {
		return nil, err
	}
	typ, data, err := readOptReply(br, optStartTLS)
	if err != nil {
		return nil, err
	}
	if typ != repAck {
		sendOption(c, optAbort, nil)
		if typ&repFlagError != 0 {
			return nil, fmt.Errorf("nbd: the server refused TLS: %s%s", repName(typ), optMessage(data))
		}
		return nil, protoErrorf("reply type %#x to NBD_OPT_STARTTLS", typ)
	}
	if len(data) != 0 {
		return nil, protoErrorf("NBD_OPT_STARTTLS acknowledged with %d bytes of data", len(data))
	}
	if br.Buffered() != 0 {
		// Bytes sent in the clear after the ack: not ours to believe.
		return nil, protoErrorf("%d bytes after the NBD_OPT_STARTTLS ack before the TLS handshake", br.Buffered())
	}
	tc := tls.Client(c, cfg)
	if err := tc.Handshake(); err != nil {
		return nil, fmt.Errorf("nbd: TLS handshake: %w", err)
	}
	br.Reset(tc)
	return tc, nil
}

func parseInfo(data []byte, info *exportInfo, haveExport *bool) error {
	if len(data) < 2 {
		return protoErrorf("NBD_REP_INFO of %d bytes", len(data))
	}
	switch binary.BigEndian.Uint16(data) {
	case infoExport:
		if len(data) != 12 {
			return protoErrorf("NBD_INFO_EXPORT of %d bytes", len(data))
		}
		info.size = binary.BigEndian.Uint64(data[2:])
		info.tflags = binary.BigEndian.Uint16(data[10:])
		*haveExport = true
	case infoBlockSize:
		if len(data) != 14 {
			return protoErrorf("NBD_INFO_BLOCK_SIZE of %d bytes", len(data))
		}
		minBS := binary.BigEndian.Uint32(data[2:])
		pref := binary.BigEndian.Uint32(data[6:])
		mx := binary.BigEndian.Uint32(data[10:])
		if minBS == 0 || minBS > 64<<10 || bits.OnesCount32(minBS) != 1 {
			return protoErrorf("minimum block size %d", minBS)
		}
		// We keep our requests within both limits: the server's maximum
		// and 32 MiB, rounded down to the minimum block size.
		req := min(mx, maxPayload) / minBS * minBS
		if req == 0 {
			return protoErrorf("maximum payload %d below minimum block size %d", mx, minBS)
		}
		if pref < minBS || bits.OnesCount32(pref) != 1 {
			pref = max(minBS, defaultPrefBS)
		}
		info.minBS, info.prefBS, info.maxReq = minBS, pref, req
	}
	// Other information types are ignored, as the protocol asks.
	return nil
}

func exportName(c net.Conn, br *bufio.Reader, export string, noZeroes bool, info exportInfo) (exportInfo, error) {
	if err := sendOption(c, optExportName, []byte(export)); err != nil {
		return exportInfo{}, err
	}
	n := 10
	if !noZeroes {
		n += 124
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(br, b); err != nil {
		// The only way a server refuses NBD_OPT_EXPORT_NAME is by hanging up.
		return exportInfo{}, fmt.Errorf("nbd: server closed the connection on export %q: %w", export, err)
	}
	info.size = binary.BigEndian.Uint64(b)
	info.tflags = binary.BigEndian.Uint16(b[8:])
	return info, nil
}

func sendOption(c net.Conn, opt uint32, data []byte) error {
	b := make([]byte, optHeaderSize, optHeaderSize+len(data))
	binary.BigEndian.PutUint64(b, magicOpt)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], uint32(len(data)))
	_, err := c.Write(append(b, data...))
	return err
}

func readOptReply(br *bufio.Reader, opt uint32) (uint32, []byte, error) {
	var h [optReplyHeaderSize]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return 0, nil, fmt.Errorf("nbd: reading option reply: %w", err)
	}
	if m := binary.BigEndian.Uint64(h[0:]); m != magicOptReply {
		return 0, nil, protoErrorf("option reply magic %#x", m)
	}
	if o := binary.BigEndian.Uint32(h[8:]); o != opt {
		return 0, nil, protoErrorf("reply to option %d while %d was asked", o, opt)
	}
	typ := binary.BigEndian.Uint32(h[12:])
	n := binary.BigEndian.Uint32(h[16:])
	if n > maxOptReplyData {
		return 0, nil, protoErrorf("option reply of %d bytes", n)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(br, data); err != nil {
		return 0, nil, fmt.Errorf("nbd: reading option reply: %w", err)
	}
	return typ, data, nil
}

func optMessage(data []byte) string {
	if len(data) == 0 {
		return ""
	}
	return ": " + sanitize(data)
}

// sanitize makes a server-supplied message safe to print: bounded, and
// without control characters.
func sanitize(b []byte) string {
	if len(b) > 256 {
		b = b[:256]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, strings.ToValidUTF8(string(b), "?"))
}

func repName(typ uint32) string {
	switch typ {
	case repErrUnsup:
		return "unsupported"
	case repErrPolicy:
		return "forbidden by policy"
	case repErrInvalid:
		return "invalid"
	case repErrPlatform:
		return "unsupported on platform"
	case repErrTLSReqd:
		return "TLS required"
	case repErrUnknown:
		return "unknown export"
	case repErrShutdown:
		return "server shutting down"
	case repErrBlockSize:
		return "block size negotiation required"
	case repErrTooBig:
		return "too big"
	}
	return fmt.Sprintf("error %#x", typ)
}

// checkInfo validates what the handshake returned before the client uses it.
func checkInfo(info exportInfo) error {
	if info.size > math.MaxInt64 {
		return protoErrorf("export size %d", info.size)
	}
	return nil
}
