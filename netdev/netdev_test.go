package netdev_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/viovmm/vio/netdev"
)

func TestHeaderCheck(t *testing.T) {
	all := netdev.Offloads(0xff)
	tso := netdev.Header{Flags: netdev.FlagNeedsCsum, GSOType: netdev.GSOTCPv4, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}
	for _, c := range []struct {
		name    string
		h       netdev.Header
		n       int
		allowed netdev.Offloads
		ok      bool
	}{
		{"plain", netdev.Header{}, 60, 0, true},
		{"runt", netdev.Header{}, 13, all, false},
		{"giant", netdev.Header{}, netdev.MaxFrameLen + 1, all, false},
		{"largest", netdev.Header{}, netdev.MaxFrameLen, 0, true},
		{"csum", netdev.Header{Flags: netdev.FlagNeedsCsum, CsumStart: 34, CsumOffset: 6}, 60, netdev.OffloadCsum, true},
		{"csum not negotiated", netdev.Header{Flags: netdev.FlagNeedsCsum, CsumStart: 34, CsumOffset: 6}, 60, 0, false},
		{"csum beyond frame", netdev.Header{Flags: netdev.FlagNeedsCsum, CsumStart: 58, CsumOffset: 1}, 60, all, false},
		{"csum max fields", netdev.Header{Flags: netdev.FlagNeedsCsum, CsumStart: 0xffff, CsumOffset: 0xffff}, 60, all, false},
		{"tso4", tso, 65000, all, true},
		{"tso4 not negotiated", tso, 65000, netdev.OffloadCsum | netdev.OffloadTSO6, false},
		{"tso without csum flag", netdev.Header{GSOType: netdev.GSOTCPv4, GSOSize: 1448}, 65000, all, false},
		{"tso size 0", netdev.Header{Flags: 1, GSOType: netdev.GSOTCPv6, CsumStart: 54, CsumOffset: 16}, 65000, all, false},
		{"ecn", netdev.Header{Flags: 1, GSOType: netdev.GSOTCPv4 | netdev.GSOECN, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}, 9000, all, true},
		{"ecn not negotiated", netdev.Header{Flags: 1, GSOType: netdev.GSOTCPv4 | netdev.GSOECN, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}, 9000, all &^ netdev.OffloadTSOECN, false},
		{"ecn alone", netdev.Header{GSOType: netdev.GSOECN}, 60, all, false},
		{"unknown gso", netdev.Header{Flags: 1, GSOType: 2, GSOSize: 100}, 6000, all, false},
		{"hdr_len beyond frame", netdev.Header{Flags: 1, GSOType: netdev.GSOTCPv4, GSOSize: 100, HdrLen: 7000, CsumStart: 34, CsumOffset: 16}, 6000, all, false},
	} {
		err := c.h.Check(c.n, c.allowed)
		if (err == nil) != c.ok {
			t.Errorf("%s: %v", c.name, err)
		}
		if err != nil && !errors.Is(err, netdev.ErrHeader) {
			t.Errorf("%s: error %v does not match ErrHeader", c.name, err)
		}
	}
}

// FuzzHeader: decoding and encoding are inverses, and Check accepts only
// headers whose checksum and segment fields fit the frame.
func FuzzHeader(f *testing.F) {
	f.Add([]byte{1, 1, 54, 0, 0xa8, 5, 34, 0, 16, 0, 0, 0}, 65000, uint8(0xff))
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0}, 60, uint8(0))
	f.Add([]byte{1, 0x84, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0}, 100, uint8(0xff))
	f.Fuzz(func(t *testing.T, b []byte, n int, allowed uint8) {
		if len(b) < netdev.HeaderSize {
			return
		}
		h := netdev.DecodeHeader(b)
		out := make([]byte, netdev.HeaderSize)
		h.Encode(out)
		if !bytes.Equal(out, b[:netdev.HeaderSize]) {
			t.Fatalf("round trip % x -> % x", b[:netdev.HeaderSize], out)
		}
		if h.Check(n, netdev.Offloads(allowed)) != nil {
			return
		}
		if n < netdev.MinFrameLen || n > netdev.MaxFrameLen {
			t.Fatalf("frame length %d accepted", n)
		}
		if h.Flags&netdev.FlagNeedsCsum != 0 && int(h.CsumStart)+int(h.CsumOffset)+2 > n {
			t.Fatalf("checksum outside frame accepted: %+v (%d)", h, n)
		}
		if h.GSOType != 0 && (h.GSOSize == 0 || int(h.HdrLen) >= n) {
			t.Fatalf("bad GSO accepted: %+v (%d)", h, n)
		}
	})
}
