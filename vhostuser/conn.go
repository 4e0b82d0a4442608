package vhostuser

import (
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// Conn carries vhost-user messages over a connected UNIX stream socket.
// Reads and writes must each come from one goroutine at a time.
type Conn struct {
	c *net.UnixConn
}

// NewConn wraps c.
func NewConn(c *net.UnixConn) *Conn { return &Conn{c: c} }

// Close closes the socket.
func (c *Conn) Close() error { return c.c.Close() }

// SetDeadline bounds the reads and writes that follow.
func (c *Conn) SetDeadline(t time.Time) error { return c.c.SetDeadline(t) }

// WriteMessage sends one message; fds go with its first byte as
// SCM_RIGHTS. The caller keeps ownership of fds (the kernel gives the peer
// copies).
func (c *Conn) WriteMessage(h Header, payload []byte, fds []int) error {
	if len(payload) > MaxPayload {
		return fmt.Errorf("vhostuser: %v payload of %d bytes is too large", h.Request, len(payload))
	}
	if len(fds) > MaxFDs {
		return fmt.Errorf("vhostuser: %v with %d descriptors (at most %d)", h.Request, len(fds), MaxFDs)
	}
	h.Size = uint32(len(payload))
	b := make([]byte, HeaderSize+len(payload))
	PutHeader(b, h)
	copy(b[HeaderSize:], payload)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	n, _, err := c.c.WriteMsgUnix(b, oob, nil)
	if err != nil {
		return fmt.Errorf("vhostuser: sending %v: %w", h.Request, err)
	}
	if n < len(b) {
		// A stream socket may take a message in parts; the descriptors
		// went with the first.
		if _, err := c.c.Write(b[n:]); err != nil {
			return fmt.Errorf("vhostuser: sending %v: %w", h.Request, err)
		}
	}
	return nil
}

// ReadMessage receives one message. The header is checked (ParseHeader)
// before the payload is read, and descriptors beyond what the request may
// carry are refused. On any error every descriptor received is closed.
//
// An unknown request with a plausible size (at most MaxPayload) is
// skipped: ReadMessage returns its header (no payload, no descriptors)
// with an error wrapping ErrUnsupported, and the stream stays in step, so
// a back-end can answer it with a failure and carry on. After any other
// error the connection must be dropped.
func (c *Conn) ReadMessage() (*Message, error) {
	var hb [HeaderSize]byte
	var fds []int
	fail := func(err error) (*Message, error) {
		closeFDs(fds)
		return nil, err
	}
	oob := make([]byte, unix.CmsgSpace(4*MaxFDs))
	got := 0
	for got < HeaderSize {
		n, oobn, flags, _, err := c.c.ReadMsgUnix(hb[got:], oob)
		if oobn > 0 {
			f, perr := parseRights(oob[:oobn])
			fds = append(fds, f...)
			if perr != nil {
				return fail(perr)
			}
		}
		if flags&unix.MSG_CTRUNC != 0 {
			return fail(fmt.Errorf("%w: too many descriptors (control data truncated)", ErrMalformed))
		}
		if err != nil {
			if errors.Is(err, io.EOF) && got > 0 {
				err = io.ErrUnexpectedEOF
			}
			return fail(fmt.Errorf("vhostuser: reading a message header: %w", err))
		}
		if n == 0 {
			return fail(fmt.Errorf("vhostuser: reading a message header: %w", io.ErrUnexpectedEOF))
		}
		got += n
	}
	h, err := ParseHeader(hb[:])
	if errors.Is(err, ErrUnsupported) && h.Size <= MaxPayload {
		closeFDs(fds)
		if _, rerr := io.ReadFull(c.c, make([]byte, h.Size)); rerr != nil {
			return nil, fmt.Errorf("vhostuser: skipping the %v payload: %w", h.Request, rerr)
		}
		return &Message{Header: h}, err
	}
	if err != nil {
		return fail(err)
	}
	if len(fds) > FDsAllowed(h.Request, h.Reply()) {
		return fail(fmt.Errorf("%w: %v with %d descriptors", ErrMalformed, h.Request, len(fds)))
	}
	m := &Message{Header: h, FDs: fds, Payload: make([]byte, h.Size)}
	// A plain read: descriptors a peer attaches to payload bytes are
	// discarded (and closed) by the kernel.
	if _, err := io.ReadFull(c.c, m.Payload); err != nil {
		return fail(fmt.Errorf("vhostuser: reading the %v payload: %w", h.Request, err))
	}
	return m, nil
}

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("%w: control data: %v", ErrMalformed, err)
	}
	var fds []int
	var bad error
	for i := range msgs {
		f, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			bad = fmt.Errorf("%w: unexpected control message (level %d type %d)",
				ErrMalformed, msgs[i].Header.Level, msgs[i].Header.Type)
			continue
		}
		fds = append(fds, f...)
	}
	return fds, bad
}

// Close closes the message's descriptors.
func (m *Message) Close() {
	closeFDs(m.FDs)
	m.FDs = nil
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
