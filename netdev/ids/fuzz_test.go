package ids_test

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/viovmm/vio/netdev/ids"
)

// FuzzReadMessage: an inspector's parser never panics or over-allocates
// on any stream.
func FuzzReadMessage(f *testing.F) {
	f.Add([]byte{0, 0, 0, 24, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		for {
			m, err := ids.ReadMessage(r)
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, ids.ErrProtocol) {
					t.Fatal(err)
				}
				return
			}
			if len(m.Frame) < 14 || m.Dir > 1 {
				t.Fatalf("%+v", m)
			}
		}
	})
}
