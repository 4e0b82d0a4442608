package ids

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/viovmm/vio/netdev"
)

// The wire protocol between vio and an inspector, over a UNIX stream
// socket. vio sends one message per frame:
//
//	u32 length   big-endian, the bytes that follow (10 + frame length)
//	u64 id       big-endian, increasing
//	u8  dir      0: from the guest, 1: to the guest
//	u8  flags    bit 0: a verdict is wanted (IPS mode)
//	    frame    the Ethernet frame, no virtio-net header
//
// In IPS mode the inspector answers every message with a verdict, in any
// order:
//
//	u64 id       big-endian, the message's id
//	u8  verdict  0: pass, 1: drop
//
// In IDS mode it sends nothing.

// Directions and verdicts on the wire.
const (
	DirFromGuest = 0
	DirToGuest   = 1

	FlagVerdict = 1

	VerdictPass = 0
	VerdictDrop = 1

	msgHeader   = 4 + 8 + 1 + 1
	VerdictSize = 9
)

// Message is one frame as an inspector receives it.
type Message struct {
	ID    uint64
	Dir   uint8
	Flags uint8
	Frame []byte
}

// ErrProtocol reports a malformed message or verdict.
var ErrProtocol = errors.New("ids: protocol error")

func appendMessage(dst []byte, id uint64, dir, flags uint8, frame []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(10+len(frame)))
	dst = binary.BigEndian.AppendUint64(dst, id)
	dst = append(dst, dir, flags)
	return append(dst, frame...)
}

// ReadMessage reads one message (the inspector's side of the protocol).
// The frame must be between netdev.MinFrameLen and netdev.MaxFrameLen
// bytes.
func ReadMessage(r io.Reader) (Message, error) {
	var h [msgHeader]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return Message{}, err
	}
	n := int(binary.BigEndian.Uint32(h[:])) - 10
	if n < netdev.MinFrameLen || n > netdev.MaxFrameLen {
		return Message{}, fmt.Errorf("%w: message of %d frame bytes", ErrProtocol, n)
	}
	m := Message{ID: binary.BigEndian.Uint64(h[4:]), Dir: h[12], Flags: h[13], Frame: make([]byte, n)}
	if m.Dir > DirToGuest {
		return Message{}, fmt.Errorf("%w: direction %d", ErrProtocol, m.Dir)
	}
	if _, err := io.ReadFull(r, m.Frame); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return Message{}, err
	}
	return m, nil
}

// AppendVerdict appends a verdict (the inspector's answer) to dst.
func AppendVerdict(dst []byte, id uint64, drop bool) []byte {
	dst = binary.BigEndian.AppendUint64(dst, id)
	if drop {
		return append(dst, VerdictDrop)
	}
	return append(dst, VerdictPass)
}

// parseVerdict decodes a verdict.
func parseVerdict(b [VerdictSize]byte) (id uint64, drop bool, err error) {
	id = binary.BigEndian.Uint64(b[:])
	switch b[8] {
	case VerdictPass:
		return id, false, nil
	case VerdictDrop:
		return id, true, nil
	}
	return id, false, fmt.Errorf("%w: verdict %d", ErrProtocol, b[8])
}
