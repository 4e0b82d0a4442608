package socket_test

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/socket"
)

// FuzzReadFrame: any byte stream yields frames within bounds, or a
// defined error, never a panic; and what AppendFrame writes reads back.
func FuzzReadFrame(f *testing.F) {
	f.Add(socket.AppendFrame(nil, make([]byte, 60)))
	f.Add([]byte{0, 0, 0, 13, 1, 2})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add(append(socket.AppendFrame(nil, make([]byte, 14)), 0, 0, 5))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		buf := make([]byte, 2+netdev.MaxFrameLen)
		var re []byte
		for {
			n, err := socket.ReadFrame(r, buf, 2)
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, socket.ErrFrameSize) {
					t.Fatalf("unexpected error %v", err)
				}
				if errors.Is(err, io.EOF) && !bytes.Equal(re, data) {
					t.Fatalf("clean EOF but frames re-encode to %d of %d bytes", len(re), len(data))
				}
				return
			}
			if n < netdev.MinFrameLen || n > netdev.MaxFrameLen {
				t.Fatalf("frame of %d bytes", n)
			}
			re = socket.AppendFrame(re, buf[2:2+n])
		}
	})
}
