package socket

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/viovmm/vio/netdev"
)

// PrefixSize is the size of the length that precedes every frame on the
// stream: a 32-bit big-endian byte count of the Ethernet frame that
// follows (QEMU's net/stream.c sends htonl(size) before each packet, and
// passt's qemu socket does the same). There is no virtio-net header on
// the wire: QEMU's stream back-end has none.
const PrefixSize = 4

// ErrFrameSize reports a length prefix outside [netdev.MinFrameLen,
// netdev.MaxFrameLen]. The stream cannot be resynchronised after one:
// whoever reads it drops the connection.
var ErrFrameSize = errors.New("socket: frame length out of range")

// AppendFrame appends frame, with its length prefix, to dst.
func AppendFrame(dst, frame []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(frame)))
	return append(dst, frame...)
}

// ReadFrame reads one length-prefixed frame from r into buf at offset
// off (so a caller can leave room for a header in front of it) and
// returns the frame's length. buf must hold off+netdev.MaxFrameLen bytes.
// A length out of range is ErrFrameSize; a stream that ends inside a
// frame is io.ErrUnexpectedEOF, one that ends between frames io.EOF.
func ReadFrame(r io.Reader, buf []byte, off int) (int, error) {
	var p [PrefixSize]byte
	if _, err := io.ReadFull(r, p[:]); err != nil {
		return 0, err
	}
	n := int(binary.BigEndian.Uint32(p[:]))
	if n < netdev.MinFrameLen || n > netdev.MaxFrameLen {
		return 0, fmt.Errorf("%w: %d bytes", ErrFrameSize, n)
	}
	if len(buf) < off+n {
		return 0, fmt.Errorf("socket: a %d-byte buffer cannot hold a %d-byte frame at %d", len(buf), n, off)
	}
	if _, err := io.ReadFull(r, buf[off:off+n]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, err
	}
	return n, nil
}
