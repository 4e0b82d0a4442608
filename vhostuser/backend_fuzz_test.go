package vhostuser

import (
	"encoding/binary"
	"errors"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/block/memdisk"
	"github.com/viovmm/vio/devices/virtio/blk"
)

// FuzzBackendMessages feeds a front-end's message stream to a back-end
// session: headers, payloads, and descriptors where a request takes them
// (memory regions from a real memfd, for SET_MEM_TABLE and ADD_MEM_REG, eventfds for kick/call/err, so that
// rings can really start). Whatever the stream, the session must not
// panic, must answer only in shapes a front-end accepts, and must hold no
// descriptor once torn down.
func FuzzBackendMessages(f *testing.F) {
	const ramSize = 64 << 10
	memfd, err := unix.MemfdCreate("fuzz-guest-ram", unix.MFD_CLOEXEC)
	if err != nil {
		f.Fatal(err)
	}
	defer unix.Close(memfd)
	if err := unix.Ftruncate(memfd, ramSize); err != nil {
		f.Fatal(err)
	}
	// A dirty log as a front-end makes one (a memfd sealed against
	// shrinking), for SET_LOG_BASE.
	logfd, err := unix.MemfdCreate("fuzz-log", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		f.Fatal(err)
	}
	defer unix.Close(logfd)
	if err := unix.Ftruncate(logfd, 4096); err != nil {
		f.Fatal(err)
	}
	if _, err := unix.FcntlInt(uintptr(logfd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW); err != nil {
		f.Fatal(err)
	}
	const ua = 0x7f0000000000
	msg := func(req Request, flags uint32, payload []byte) []byte {
		b := make([]byte, HeaderSize+len(payload))
		PutHeader(b, Header{Request: req, Flags: Version | flags, Size: uint32(len(payload))})
		return append(b[:HeaderSize], payload...)
	}
	var good []byte
	goodMsgs := [][]byte{
		msg(SetOwner, 0, nil),
		msg(GetFeatures, 0, nil),
		msg(SetProtocolFeatures, 0, U64(BackendProtocolFeatures)),
		msg(SetFeatures, FlagNeedReply, U64(FProtocolFeatures|virtioFVersion1)),
		msg(SetMemTable, FlagNeedReply, MemoryTable{Regions: []MemoryRegion{{Size: ramSize, UserAddr: ua}}}.Marshal()),
		msg(SetVringNum, 0, VringState{0, 8}.Marshal()),
		msg(SetVringAddr, 0, VringAddr{Desc: ua + 0x1000, Avail: ua + 0x2000, Used: ua + 0x3000}.Marshal()),
		msg(SetVringKick, 0, U64(0)),
		msg(SetVringCall, 0, U64(0)),
		msg(SetVringEnable, FlagNeedReply, VringState{0, 1}.Marshal()),
		// A migration starts: the log, LOG_ALL, the used ring logged.
		msg(SetLogBase, 0, Log{MmapSize: 4096}.Marshal()),
		msg(SetFeatures, FlagNeedReply, U64(FProtocolFeatures|virtioFVersion1|FLogAll)),
		msg(SetVringAddr, FlagNeedReply, VringAddr{Flags: VringFlagLog, Desc: ua + 0x1000, Avail: ua + 0x2000, Used: ua + 0x3000, Log: 0x3000}.Marshal()),
		msg(GetConfig, 0, Config{Data: make([]byte, 60)}.Marshal()),
		msg(SetConfig, 0, Config{Offset: 32, Data: []byte{0}}.Marshal()),
		msg(GetVringBase, 0, VringState{0, 0}.Marshal()),
		msg(ResetOwner, 0, nil),
	}
	for _, m := range goodMsgs {
		f.Add(m)
		good = append(good, m...)
	}
	f.Add(good)
	f.Add(msg(SetVringKick, FlagNeedReply, U64(VringNoFD)))
	f.Add(append(msg(AddMemReg, FlagNeedReply, MemoryRegion{Size: ramSize, UserAddr: ua}.Marshal()),
		msg(RemMemReg, FlagNeedReply, MemoryRegion{Size: ramSize, UserAddr: ua}.Marshal())...))
	f.Add(msg(SetMemTable, 0, MemoryTable{Regions: []MemoryRegion{{Size: 2 * ramSize}}}.Marshal()))
	// An inflight region: a fresh one, then guest RAM's memfd handed
	// over as a region (its contents are whatever the stream wrote),
	// before the ring starts.
	inflight := append(msg(GetInflightFD, 0, Inflight{NumQueues: 2, QueueSize: 16}.Marshal()),
		msg(SetInflightFD, FlagNeedReply, Inflight{MmapSize: ramSize, NumQueues: 2, QueueSize: 16}.Marshal())...)
	f.Add(inflight)
	// ...with the ring starting on it.
	var withRegion []byte
	for i, m := range goodMsgs {
		if i == 4 {
			withRegion = append(withRegion, inflight...)
		}
		withRegion = append(withRegion, m...)
	}
	f.Add(withRegion)

	f.Fuzz(func(t *testing.T, stream []byte) {
		before := countFDs(t)
		dev, err := blk.New(memdisk.New(make([]byte, 64<<10)), blk.Config{NumQueues: 2, QueueSize: 16})
		if err != nil {
			t.Fatal(err)
		}
		s := newSession(&Backend{}, dev)
		// Bounded: every message consumes at least a header.
		for len(stream) >= HeaderSize {
			h, err := ParseHeader(stream)
			size := int(h.Size)
			if err != nil && (size > MaxPayload || size > len(stream)-HeaderSize) {
				break // a connection would end here
			}
			if size > len(stream)-HeaderSize {
				break
			}
			m := &Message{Header: h, Payload: append([]byte(nil), stream[HeaderSize:HeaderSize+size]...)}
			stream = stream[HeaderSize+size:]
			if err == nil {
				m.FDs = fuzzFDs(t, m, memfd, logfd)
			} else if !errorsIsUnsupported(err) {
				break
			}
			reply, fds, send, fatal := s.respond(m, err)
			closeFDs(fds)
			if fatal != nil {
				break
			}
			if send {
				if err := PayloadSizeOK(h.Request, true, uint32(len(reply))); err != nil {
					t.Fatalf("back-end would answer %v with a reply the front-end refuses: %v", h.Request, err)
				}
			}
		}
		s.shutdown()
		if after := countFDs(t); after != before {
			t.Fatalf("%d descriptors open after the session, %d before", after, before)
		}
	})
}

// fuzzFDs attaches the descriptors a request of m's kind carries: a copy
// of the guest RAM memfd per memory region, of the log's for SET_LOG_BASE,
// an eventfd for a kick, call or err without the no-fd flag.
func fuzzFDs(t *testing.T, m *Message, memfd, logfd int) []int {
	n := 0
	switch m.Request {
	case SetMemTable:
		if len(m.Payload) >= 4 {
			n = min(int(binary.LittleEndian.Uint32(m.Payload)), MaxRegions)
		}
		var fds []int
		for range n {
			fd, err := unix.Dup(memfd)
			if err != nil {
				t.Fatal(err)
			}
			fds = append(fds, fd)
		}
		return fds
	case AddMemReg, SetInflightFD, SetLogBase:
		src := memfd
		if m.Request == SetLogBase {
			src = logfd
		}
		fd, err := unix.Dup(src)
		if err != nil {
			t.Fatal(err)
		}
		return []int{fd}
	case SetVringKick, SetVringCall, SetVringErr:
		if len(m.Payload) == 8 && binary.LittleEndian.Uint64(m.Payload)&VringNoFD == 0 {
			fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
			if err != nil {
				t.Fatal(err)
			}
			return []int{fd}
		}
	}
	return nil
}

func errorsIsUnsupported(err error) bool { return errors.Is(err, ErrUnsupported) }
