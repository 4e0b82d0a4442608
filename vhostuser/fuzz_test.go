package vhostuser

import (
	"reflect"
	"testing"
)

// FuzzParseMessage feeds a peer's bytes (header, payload, and a descriptor
// count) to the decoder: it must refuse or accept without panicking, and
// what it accepts must encode back to something that decodes the same.
func FuzzParseMessage(f *testing.F) {
	seed := func(req Request, flags uint32, payload []byte, nfds int) {
		b := make([]byte, HeaderSize+len(payload))
		PutHeader(b, Header{Request: req, Flags: flags, Size: uint32(len(payload))})
		copy(b[HeaderSize:], payload)
		f.Add(b, uint8(nfds))
	}
	seed(GetFeatures, Version, nil, 0)
	seed(SetFeatures, Version, U64(1<<32), 0)
	seed(GetVringBase, Version|FlagReply, VringState{0, 3}.Marshal(), 0)
	seed(SetVringAddr, Version, VringAddr{Desc: 1, Used: 2, Avail: 3}.Marshal(), 0)
	seed(SetMemTable, Version|FlagNeedReply, MemoryTable{Regions: []MemoryRegion{{Size: 4096}, {GuestAddr: 4096, Size: 4096}}}.Marshal(), 2)
	seed(GetConfig, Version|FlagReply, Config{Data: make([]byte, 8)}.Marshal(), 0)
	seed(SetVringKick, Version, U64(1), 1)
	seed(AddMemReg, Version|FlagNeedReply, MemoryRegion{GuestAddr: 1 << 20, Size: 4096, UserAddr: 1 << 40}.Marshal(), 1)
	seed(RemMemReg, Version, MemoryRegion{GuestAddr: 1 << 20, Size: 4096, UserAddr: 1 << 40}.Marshal(), 0)
	f.Fuzz(func(t *testing.T, b []byte, nfds uint8) {
		h, err := ParseHeader(b)
		if err != nil {
			return
		}
		if uint64(len(b)-HeaderSize) < uint64(h.Size) {
			return
		}
		// Descriptor numbers are never used by the decoder, only counted.
		m := &Message{Header: h, Payload: b[HeaderSize : HeaderSize+int(h.Size)], FDs: make([]int, nfds%(MaxFDs+2))}
		v, err := ParsePayload(m)
		if err != nil {
			return
		}
		var again []byte
		switch x := v.(type) {
		case nil:
			return
		case uint64:
			again = U64(x)
		case uint32:
			return // a vring index from a kick/call word: checked by ParseVringFD
		case VringState:
			again = x.Marshal()
		case VringAddr:
			again = x.Marshal()
		case MemoryTable:
			again = x.Marshal()
		case MemoryRegion:
			again = x.Marshal()
		case Config:
			again = x.Marshal()
		default:
			t.Fatalf("unexpected payload type %T", v)
		}
		m2 := &Message{Header: h, Payload: again, FDs: m.FDs}
		v2, err := ParsePayload(m2)
		if err != nil {
			t.Fatalf("re-encoded %v payload refused: %v", h.Request, err)
		}
		if !reflect.DeepEqual(v, v2) {
			t.Fatalf("%v: %#v re-decoded as %#v", h.Request, v, v2)
		}
	})
}
