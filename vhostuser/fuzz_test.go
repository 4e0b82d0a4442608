package vhostuser

import (
	"bytes"
	"encoding/binary"
	"errors"
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
	seed(SetLogBase, Version, Log{MmapSize: 4096, MmapOffset: 8192}.Marshal(), 1)
	seed(SetLogBase, Version|FlagReply, Log{MmapSize: 4096}.Marshal(), 0)
	seed(SetLogBase, Version|FlagReply, U64(4096), 0)
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
		case Log:
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

// FuzzLogBaseReply feeds a back-end's answer to SET_LOG_BASE to the
// front-end's check: it must not panic, must accept exactly the three
// shapes back-ends send (status 0, the size echoed, the description
// echoed) and call anything else a failure or malformed.
func FuzzLogBaseReply(f *testing.F) {
	sent := Log{MmapSize: 8192, MmapOffset: 4096}
	f.Add(U64(0), sent.MmapSize, sent.MmapOffset)
	f.Add(U64(8192), sent.MmapSize, sent.MmapOffset)
	f.Add(sent.Marshal(), sent.MmapSize, sent.MmapOffset)
	f.Add(U64(1), sent.MmapSize, sent.MmapOffset)
	f.Add([]byte{1, 2, 3}, uint64(4096), uint64(0))
	f.Fuzz(func(t *testing.T, p []byte, size, off uint64) {
		l := Log{MmapSize: size, MmapOffset: off}
		err := CheckLogBaseReply(p, l)
		ok := len(p) == 8 && (binary.LittleEndian.Uint64(p) == 0 || binary.LittleEndian.Uint64(p) == size) ||
			len(p) == 16 && bytes.Equal(p, l.Marshal()) && size != 0 && size <= MaxLogSize && off <= MaxLogSize<<8
		if ok != (err == nil) {
			t.Fatalf("reply %x to a log of %#x at %#x: %v", p, size, off, err)
		}
		if err != nil && !errors.Is(err, ErrFailed) && !errors.Is(err, ErrMalformed) {
			t.Fatalf("reply %x: error %v is neither a failure nor malformed", p, err)
		}
	})
}
