package net

import (
	"testing"

	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/virtio"
)

// FuzzParseTx feeds arbitrary transmit chains, split arbitrarily, to the
// header parser: it must not panic, and what it accepts must be a frame
// within bounds whose copied header passes the checks for the negotiated
// offloads, with num_buffers cleared.
func FuzzParseTx(f *testing.F) {
	tso := make([]byte, netdev.HeaderSize+100)
	netdev.Header{Flags: 1, GSOType: netdev.GSOTCPv4, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: 16, NumBuffers: 3}.Encode(tso)
	f.Add(tso, uint64(0x0c0005), uint8(0xff))
	f.Add(make([]byte, 60), uint64(0), uint8(0))
	f.Add(make([]byte, 11), uint64(3), uint8(1))
	f.Add(append([]byte{1, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0}, make([]byte, 50)...), uint64(0), uint8(1))
	f.Fuzz(func(t *testing.T, b []byte, cuts uint64, allowed uint8) {
		var bufs virtio.Buffers
		rest := b
		for i := 0; i < 3 && len(rest) > 0; i++ {
			k := int(cuts>>(16*i)&0xffff) % (len(rest) + 1)
			if k > 0 {
				bufs = append(bufs, rest[:k])
				rest = rest[k:]
			}
		}
		if len(rest) > 0 {
			bufs = append(bufs, rest)
		}
		var hdr [netdev.HeaderSize]byte
		n, err := parseTx(bufs, &hdr, netdev.Offloads(allowed))
		if err != nil {
			return
		}
		if n != len(b)-netdev.HeaderSize || n < netdev.MinFrameLen || n > netdev.MaxFrameLen {
			t.Fatalf("frame length %d of a %d-byte chain", n, len(b))
		}
		h := netdev.DecodeHeader(hdr[:])
		if h.NumBuffers != 0 {
			t.Fatal("num_buffers passed on")
		}
		if err := h.Check(n, netdev.Offloads(allowed)); err != nil {
			t.Fatalf("accepted header fails its check: %v", err)
		}
		g := span(nil, bufs, netdev.HeaderSize, int64(n))
		var total int
		for _, s := range g {
			total += len(s)
		}
		if total != n {
			t.Fatalf("gather list of %d bytes for a %d-byte frame", total, n)
		}
	})
}
