package vhostuser

import (
	"errors"
	"net"
	"os"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"
)

func msg(req Request, reply bool, payload []byte, nfds int) *Message {
	h := Header{Request: req, Flags: Version, Size: uint32(len(payload))}
	if reply {
		h.Flags |= FlagReply
	}
	return &Message{Header: h, Payload: payload, FDs: make([]int, nfds)}
}

func TestPayloadRoundTrip(t *testing.T) {
	table := MemoryTable{Regions: []MemoryRegion{
		{GuestAddr: 0, Size: 1 << 30, UserAddr: 0x7f0000000000, MmapOffset: 0},
		{GuestAddr: 1 << 32, Size: 1 << 30, UserAddr: 0x7f0040000000, MmapOffset: 1 << 30},
	}}
	cases := []struct {
		m    *Message
		want any
	}{
		{msg(SetFeatures, false, U64(1<<32|FProtocolFeatures), 0), uint64(1<<32 | FProtocolFeatures)},
		{msg(GetFeatures, true, U64(5), 0), uint64(5)},
		{msg(GetFeatures, false, nil, 0), nil},
		{msg(SetVringNum, false, VringState{1, 256}.Marshal(), 0), VringState{1, 256}},
		{msg(GetVringBase, true, VringState{1, 7}.Marshal(), 0), VringState{1, 7}},
		{msg(SetVringAddr, false, VringAddr{Index: 2, Desc: 1, Used: 2, Avail: 3, Log: 4}.Marshal(), 0),
			VringAddr{Index: 2, Desc: 1, Used: 2, Avail: 3, Log: 4}},
		{msg(SetMemTable, false, table.Marshal(), 2), table},
		{msg(GetConfig, false, Config{Offset: 8, Data: make([]byte, 4)}.Marshal(), 0),
			Config{Offset: 8, Data: make([]byte, 4)}},
		{msg(SetVringKick, false, U64(3), 1), uint32(3)},
		{msg(SetVringCall, false, U64(4|VringNoFD), 0), uint32(4)},
		{msg(SetMemTable, true, U64(0), 0), uint64(0)},
		{msg(GetInflightFD, false, Inflight{NumQueues: 2, QueueSize: 128}.Marshal(), 0), Inflight{NumQueues: 2, QueueSize: 128}},
		{msg(GetInflightFD, true, Inflight{MmapSize: 8192, NumQueues: 2, QueueSize: 128}.Marshal(), 1),
			Inflight{MmapSize: 8192, NumQueues: 2, QueueSize: 128}},
		{msg(SetInflightFD, false, Inflight{MmapSize: 8192, MmapOffset: 4096, NumQueues: 1, QueueSize: 256}.Marshal(), 1),
			Inflight{MmapSize: 8192, MmapOffset: 4096, NumQueues: 1, QueueSize: 256}},
		{msg(SetInflightFD, true, U64(0), 0), uint64(0)},
	}
	for _, c := range cases {
		got, err := ParsePayload(c.m)
		if err != nil {
			t.Errorf("%v: %v", c.m.Request, err)
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%v: got %#v, want %#v", c.m.Request, got, c.want)
		}
	}
}

func TestPayloadRejects(t *testing.T) {
	region := MemoryRegion{GuestAddr: 0, Size: 4096, UserAddr: 0x1000}
	nine := MemoryTable{Regions: make([]MemoryRegion, 9)}
	for i := range nine.Regions {
		nine.Regions[i] = MemoryRegion{GuestAddr: uint64(i) << 20, Size: 4096}
	}
	lying := MemoryTable{Regions: []MemoryRegion{region}}.Marshal()
	lying[0] = 2 // count says 2, one region follows
	wrapping := MemoryTable{Regions: []MemoryRegion{{GuestAddr: ^uint64(0) - 10, Size: 4096}}}
	overlap := MemoryTable{Regions: []MemoryRegion{region, {GuestAddr: 2048, Size: 4096}}}
	badCfg := Config{Data: make([]byte, 4)}.Marshal()
	badCfg[4] = 8 // inner size says 8, 4 follow
	cases := []struct {
		name string
		m    *Message
	}{
		{"u64 too short", msg(SetFeatures, false, make([]byte, 4), 0)},
		{"GET_FEATURES request with payload", msg(GetFeatures, false, U64(1), 0)},
		{"vring state too long", msg(SetVringNum, false, make([]byte, 12), 0)},
		{"vring addr unknown flag", msg(SetVringAddr, false, VringAddr{Flags: 2}.Marshal(), 0)},
		{"nine regions", msg(SetMemTable, false, nine.Marshal(), 8)},
		{"zero regions", msg(SetMemTable, false, MemoryTable{}.Marshal(), 0)},
		{"count lies", msg(SetMemTable, false, lying, 1)},
		{"region wraps", msg(SetMemTable, false, wrapping.Marshal(), 1)},
		{"regions overlap", msg(SetMemTable, false, overlap.Marshal(), 2)},
		{"fewer fds than regions", msg(SetMemTable, false, MemoryTable{Regions: []MemoryRegion{region}}.Marshal(), 0)},
		{"config size lies", msg(GetConfig, false, badCfg, 0)},
		{"config past 256", msg(GetConfig, false, Config{Offset: 250, Data: make([]byte, 8)}.Marshal(), 0)},
		{"config too big", msg(SetConfig, false, make([]byte, MaxPayload+1), 0)},
		{"kick without fd or flag", msg(SetVringKick, false, U64(0), 0)},
		{"kick with fd and no-fd flag", msg(SetVringKick, false, U64(VringNoFD), 1)},
		{"kick unknown bits", msg(SetVringKick, false, U64(1<<9), 1)},
		{"fd on a u64 request", msg(SetFeatures, false, U64(0), 1)},
		{"fd on a reply", msg(GetFeatures, true, U64(0), 1)},
		{"GET_VRING_BASE reply as u64", msg(GetVringBase, true, make([]byte, 4), 0)},
		{"inflight description packed (20 bytes)", msg(SetInflightFD, false, make([]byte, 20), 1)},
		{"SET_INFLIGHT_FD without fd", msg(SetInflightFD, false, Inflight{}.Marshal(), 0)},
		{"GET_INFLIGHT_FD request with fd", msg(GetInflightFD, false, Inflight{}.Marshal(), 1)},
		{"GET_INFLIGHT_FD reply with two fds", msg(GetInflightFD, true, Inflight{}.Marshal(), 2)},
	}
	for _, c := range cases {
		if _, err := ParsePayload(c.m); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err %v, want ErrMalformed", c.name, err)
		}
	}
}

func TestParseHeaderRejects(t *testing.T) {
	cases := []struct {
		name string
		h    Header
		want error
	}{
		{"version 0", Header{GetFeatures, 0, 0}, ErrMalformed},
		{"version 2", Header{GetFeatures, 2, 0}, ErrMalformed},
		{"unknown flag", Header{GetFeatures, Version | 1<<4, 0}, ErrMalformed},
		{"unknown request", Header{99, Version, 0}, ErrUnsupported},
		{"huge size", Header{SetMemTable, Version, 1 << 31}, ErrMalformed},
		{"mem table size not whole regions", Header{SetMemTable, Version, 8 + 31}, ErrMalformed},
		{"reply of wrong size", Header{GetFeatures, Version | FlagReply, 4}, ErrMalformed},
	}
	var b [HeaderSize]byte
	for _, c := range cases {
		PutHeader(b[:], c.h)
		if _, err := ParseHeader(b[:]); !errors.Is(err, c.want) {
			t.Errorf("%s: err %v, want %v", c.name, err, c.want)
		}
	}
	if _, err := ParseHeader(b[:11]); !errors.Is(err, ErrMalformed) {
		t.Errorf("short header: %v", err)
	}
}

// socketPair returns two connected vhost-user conns.
func socketPair(t testing.TB) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conv := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "sock")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	return conv(fds[0]), conv(fds[1])
}

// sendRaw writes a header (with an arbitrary size) and payload with fds.
func sendRaw(t *testing.T, c *net.UnixConn, h Header, payload []byte, fds []int) {
	t.Helper()
	b := make([]byte, HeaderSize+len(payload))
	PutHeader(b, h)
	copy(b[HeaderSize:], payload)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := c.WriteMsgUnix(b, oob, nil); err != nil {
		t.Fatal(err)
	}
}

// pipeProbe returns a pipe whose write end is to be sent to the receiver;
// closed reports whether every copy of the write end is closed, which is
// how the test sees that the receiver closed the descriptors it refused.
func pipeProbe(t *testing.T) (w int, closed func() bool) {
	t.Helper()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(p[0]) })
	return p[1], func() bool {
		unix.Close(p[1])
		var b [1]byte
		n, err := unix.Read(p[0], b[:])
		return n == 0 && err == nil // EOF; EAGAIN means a writer is still open
	}
}

func TestReadMessageClosesRefusedFDs(t *testing.T) {
	cases := []struct {
		name  string
		h     Header
		nfds  int
		extra []byte
	}{
		{"unknown request", Header{99, Version, 0}, 1, nil},
		{"bad version", Header{SetVringKick, 0, 8}, 1, U64(0)},
		{"fd on a request that takes none", Header{SetFeatures, Version, 8}, 1, U64(0)},
		{"two fds on a kick", Header{SetVringKick, Version, 8}, 2, U64(0)},
		{"more fds than the control buffer holds", Header{SetMemTable, Version, 8 + 32}, MaxFDs + 1, make([]byte, 40)},
		{"payload cut short", Header{SetVringKick, Version, 8}, 1, U64(0)[:4]},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, b := socketPair(t)
			w, closed := pipeProbe(t)
			fds := make([]int, c.nfds)
			for i := range fds {
				fds[i] = w
			}
			sendRaw(t, a, c.h, c.extra, fds)
			a.CloseWrite() // so a short payload ends in EOF, not a wait
			m, err := NewConn(b).ReadMessage()
			if err == nil {
				m.Close()
				t.Fatal("message accepted")
			}
			if !closed() {
				t.Fatalf("refused message (%v) left a descriptor open", err)
			}
		})
	}
}

func TestConnCarriesFDs(t *testing.T) {
	a, b := socketPair(t)
	w, closed := pipeProbe(t)
	if err := NewConn(a).WriteMessage(Header{Request: SetVringCall, Flags: Version}, U64(1), []int{w}); err != nil {
		t.Fatal(err)
	}
	m, err := NewConn(b).ReadMessage()
	if err != nil {
		t.Fatal(err)
	}
	v, err := ParsePayload(m)
	if err != nil || v != uint32(1) || len(m.FDs) != 1 {
		t.Fatalf("got %v %v fds %v", v, err, m.FDs)
	}
	var st unix.Stat_t
	if err := unix.Fstat(m.FDs[0], &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
		t.Fatalf("received fd is not the pipe: mode %o, %v", st.Mode, err)
	}
	m.Close()
	if !closed() {
		t.Fatal("Message.Close left the descriptor open")
	}
}

func TestReadMessageSkipsUnknownRequest(t *testing.T) {
	a, b := socketPair(t)
	w, closed := pipeProbe(t)
	sendRaw(t, a, Header{Request: 77, Flags: Version, Size: 16}, make([]byte, 16), []int{w})
	sendRaw(t, a, Header{Request: GetFeatures, Flags: Version}, nil, nil)
	c := NewConn(b)
	m, err := c.ReadMessage()
	if !errors.Is(err, ErrUnsupported) || m == nil || m.Request != 77 || len(m.FDs) != 0 {
		t.Fatalf("unknown request: %v %+v", err, m)
	}
	if !closed() {
		t.Fatal("descriptor sent with an unknown request left open")
	}
	m, err = c.ReadMessage()
	if err != nil || m.Request != GetFeatures {
		t.Fatalf("next message after the skipped one: %v %+v", err, m)
	}
}

// TestReplySizes: a SET_CONFIG with NEED_REPLY is answered, as every
// request is under REPLY_ACK, with a u64; only GET_CONFIG's reply carries
// a configuration (or nothing, for a failure). The fuzzer found the
// front-end's check refusing the back-end's correct ack.
func TestReplySizes(t *testing.T) {
	for _, c := range []struct {
		req   Request
		reply bool
		size  uint32
		ok    bool
	}{
		{SetConfig, true, sizeU64, true},
		{SetConfig, true, configHeaderSize + 4, false},
		{SetConfig, false, configHeaderSize + 4, true},
		{SetConfig, false, sizeU64, false},
		{GetConfig, true, 0, true},
		{GetConfig, true, configHeaderSize + 4, true},
		{SetVringNum, true, sizeU64, true},
	} {
		if err := PayloadSizeOK(c.req, c.reply, c.size); (err == nil) != c.ok {
			t.Errorf("PayloadSizeOK(%v, reply %v, %d) = %v, want ok %v", c.req, c.reply, c.size, err, c.ok)
		}
	}
}
