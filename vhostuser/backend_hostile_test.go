package vhostuser

import (
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/viovmm/vio/block/memdisk"
	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/virtio/queuetest"
)

// hostileSetup is a negotiated connection (REPLY_ACK on) to a back-end
// over an in-memory disk, with guest RAM shared.
func hostileSetup(t *testing.T) (*Frontend, *memory.Memory, *refusals, <-chan error) {
	t.Helper()
	var ref refusals
	f, done := serveOnPair(t, blkBackend(memdisk.New(make([]byte, 1<<20)), blk.Config{}, &ref))
	mem := guestRAM(t)
	negotiate(t, f, mem, virtioFVersion1)
	return f, mem, &ref, done
}

func TestBackendRefusesRingsOutsideMemory(t *testing.T) {
	f, mem, ref, _ := hostileSetup(t)
	drv, err := queuetest.New(mem, 0x1000, 64, 4096, false)
	if err != nil {
		t.Fatal(err)
	}
	ua := uint64(mem.Regions()[0].HostAddr())
	cfg := drv.Config()
	cases := []struct {
		name string
		a    VringAddr
	}{
		{"descriptor table below every region", VringAddr{Desc: ua - 4096, Avail: ua + cfg.AvailRing, Used: ua + cfg.UsedRing}},
		{"used ring past the end", VringAddr{Desc: ua + cfg.DescTable, Avail: ua + cfg.AvailRing, Used: ua + (2 << 20) - 16}},
		{"avail ring at a wrapping address", VringAddr{Desc: ua + cfg.DescTable, Avail: ^uint64(0) - 8, Used: ua + cfg.UsedRing}},
		{"guest physical instead of user addresses", VringAddr{Desc: cfg.DescTable, Avail: cfg.AvailRing, Used: cfg.UsedRing}},
	}
	kickFD := eventfd(t)
	if err := f.SetVringNum(0, 64); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := f.SetVringEnable(0, false); err != nil {
				t.Fatal(err)
			}
			if err := f.SetVringAddr(c.a); err != nil {
				t.Fatalf("SET_VRING_ADDR is only checked when the ring starts, got %v", err)
			}
			if err := f.SetVringKick(0, kickFD); err != nil {
				t.Fatalf("kick of a disabled ring: %v", err)
			}
			if err := f.SetVringEnable(0, true); !errors.Is(err, ErrFailed) {
				t.Fatalf("ring started on %s: %v", c.name, err)
			}
			if !ref.has(SetVringEnable, ErrBadAddress) {
				t.Fatalf("no ErrBadAddress reported: %v", ref.errs)
			}
		})
	}
	// The connection is still good: a correct ring starts.
	if err := f.SetVringAddrGPA(0, cfg); err != nil {
		t.Fatal(err)
	}
	if err := f.SetVringKick(0, kickFD); err != nil {
		t.Fatalf("a good ring after bad ones: %v", err)
	}
	if _, err := f.GetVringBase(0); err != nil {
		t.Fatal(err)
	}
}

// TestBackendBadChainsAndBrokenRing: a descriptor outside guest RAM fails
// its request only (returned with length 0); an avail index that runs
// ahead of the ring breaks the ring, which the back-end reports on the
// ring's err eventfd, and the ring reports where it stopped.
func TestBackendBadChainsAndBrokenRing(t *testing.T) {
	f, mem, _, _ := hostileSetup(t)
	q := setupQueue(t, f, mem, 0, 0x1000, false)
	errFD := eventfd(t)
	if err := f.SetVringErr(0, errFD); err != nil {
		t.Fatal(err)
	}
	// Head 0: a header buffer 1 TiB up, chained to a status byte.
	for i := uint16(0); i < 2; i++ {
		if !q.drv.Reserve(i) {
			t.Fatal("descriptor slot taken")
		}
	}
	st, err := q.drv.Alloc(1)
	if err != nil {
		t.Fatal(err)
	}
	q.drv.WriteDesc(0, queuetest.Desc{Addr: 1 << 40, Len: 16, Flags: queuetest.FlagNext, Next: 1})
	q.drv.WriteDesc(1, queuetest.Desc{Addr: st, Len: 1, Flags: queuetest.FlagWrite})
	q.drv.Publish(0)
	// The back-end returns a bad chain without an interrupt of its own
	// (virtio-blk interrupts for completed requests), so a good request
	// goes with it.
	head, err := q.drv.Add([][]byte{blkHeader(blkTIn, 0)}, []uint32{sector, 1})
	if err != nil {
		t.Fatal(err)
	}
	kick(t, q.kickFD)
	for q.drv.UsedIdx() != 2 {
		waitEvent(t, q.callFD)
	}
	var used [16]byte
	if _, err := mem.ReadAt(used[:], int64(q.drv.Config().UsedRing+4)); err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	if id, n := le.Uint32(used[0:]), le.Uint32(used[4:]); id != 0 || n != 0 {
		t.Fatalf("bad chain returned as id %d len %d, want 0 and 0", id, n)
	}
	if id, n := le.Uint32(used[8:]), le.Uint32(used[12:]); id != uint32(head) || n != sector+1 {
		t.Fatalf("good chain returned as id %d len %d, want %d and %d", id, n, head, sector+1)
	}
	// avail.idx 200 entries ahead of a 64-entry ring.
	q.drv.SetAvailIdx(q.drv.UsedIdx() + 200)
	kick(t, q.kickFD)
	waitEvent(t, errFD)
	base, err := f.GetVringBase(0)
	if err != nil {
		t.Fatal(err)
	}
	if base != 2 {
		t.Fatalf("broken ring's base %d, want the 2 entries it took", base)
	}
}

func TestBackendRefusesBadRingState(t *testing.T) {
	f, mem, ref, done := hostileSetup(t)
	drv, err := queuetest.New(mem, 0x1000, 64, 4096, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		call func() error
		req  Request
	}{
		{"size not a power of two", func() error { return f.vringState(SetVringNum, 0, 100) }, SetVringNum},
		{"size above the device's", func() error { return f.vringState(SetVringNum, 0, 512) }, SetVringNum},
		{"ring index beyond the queues", func() error { return f.vringState(SetVringNum, 3, 64) }, SetVringNum},
		{"base above 16 bits", func() error { return f.vringState(SetVringBase, 0, 1<<16) }, SetVringBase},
		{"enable value 2", func() error { return f.vringState(SetVringEnable, 0, 2) }, SetVringEnable},
		{"logging without LOG_SHMFD", func() error { return f.SetVringAddr(VringAddr{Flags: VringFlagLog}) }, SetVringAddr},
		{"features not offered", func() error {
			_, err := f.call(SetFeatures, U64(1<<63), nil, false)
			return err
		}, SetFeatures},
		{"protocol features not offered", func() error {
			_, err := f.call(SetProtocolFeatures, U64(ProtocolBackendReq|ProtocolReplyAck), nil, false)
			return err
		}, SetProtocolFeatures},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := c.call(); !errors.Is(err, ErrFailed) {
				t.Fatalf("accepted: %v", err)
			}
		})
	}
	if !ref.has(SetVringNum, ErrBadRing) || !ref.has(SetVringAddr, ErrNotNegotiated) || !ref.has(SetFeatures, ErrNotNegotiated) {
		t.Fatalf("refusals: %v", ref.errs)
	}
	// A base the used ring does not agree with (requests in flight that
	// only an inflight region could recover) is refused when the ring
	// starts.
	if err := f.SetVringNum(0, 64); err != nil {
		t.Fatal(err)
	}
	if err := f.SetVringBase(0, 5); err != nil {
		t.Fatal(err)
	}
	if err := f.SetVringAddrGPA(0, drv.Config()); err != nil {
		t.Fatal(err)
	}
	kickFD := eventfd(t)
	if err := f.SetVringKick(0, kickFD); err != nil {
		t.Fatal(err)
	}
	if err := f.SetVringEnable(0, true); !errors.Is(err, ErrFailed) {
		t.Fatalf("ring started at base 5 with used.idx 0: %v", err)
	}
	// A kick for a ring the device does not have: refused, and its
	// descriptor closed.
	w, closed := pipeProbe(t)
	if _, err := f.call(SetVringKick, U64(7), []int{w}, false); !errors.Is(err, ErrFailed) {
		t.Fatalf("kick for ring 7: %v", err)
	}
	if !closed() {
		t.Fatal("the back-end kept the descriptor of a refused kick")
	}
	// A call or kick descriptor that is not an eventfd (a pipe, whose
	// writes block once it is full): refused, and closed.
	for _, req := range []Request{SetVringCall, SetVringKick} {
		w, closed := pipeProbe(t)
		if _, err := f.call(req, U64(0), []int{w}, false); !errors.Is(err, ErrFailed) || !ref.has(req, ErrNotEventFD) {
			t.Fatalf("%v with a pipe: %v", req, err)
		}
		if !closed() {
			t.Fatalf("the back-end kept the pipe of a refused %v", req)
		}
	}
	// GET_VRING_BASE for a ring that does not exist has no failure
	// answer: the back-end ends the connection.
	if _, err := f.GetVringBase(9); err == nil {
		t.Fatal("GET_VRING_BASE for ring 9 answered")
	}
	if err := <-done; !errors.Is(err, ErrBadRing) {
		t.Fatalf("connection ended with %v", err)
	}
}

func TestBackendRefusesBadMemoryTables(t *testing.T) {
	f, mem, ref, _ := hostileSetup(t)
	fd, off, _ := mem.Regions()[0].File()
	region := MemoryRegion{GuestAddr: 0, Size: 2 << 20, UserAddr: 1 << 40, MmapOffset: off}
	for _, c := range []struct {
		name string
		t    MemoryTable
		fds  int
		want error
	}{
		{"region past the end of its file", MemoryTable{Regions: []MemoryRegion{{Size: 4 << 20, UserAddr: 1 << 40}}}, 1, memory.ErrBadFile},
		{"offset not page aligned", MemoryTable{Regions: []MemoryRegion{{Size: 4096, UserAddr: 1 << 40, MmapOffset: 100}}}, 1, memory.ErrBadFile},
		{"two regions, one descriptor", MemoryTable{Regions: []MemoryRegion{region, {GuestAddr: 4 << 20, Size: 4096, UserAddr: 2 << 40}}}, 1, ErrMalformed},
		{"user ranges overlap", MemoryTable{Regions: []MemoryRegion{{Size: 4096, UserAddr: 1 << 40}, {GuestAddr: 1 << 30, Size: 4096, UserAddr: 1<<40 + 2048}}}, 2, ErrMalformed},
	} {
		t.Run(c.name, func(t *testing.T) {
			fds := make([]int, c.fds)
			for i := range fds {
				fds[i] = fd
			}
			if _, err := f.call(SetMemTable, c.t.Marshal(), fds, false); !errors.Is(err, ErrFailed) {
				t.Fatalf("accepted: %v", err)
			}
			if !ref.has(SetMemTable, c.want) {
				t.Fatalf("no refusal matching %v: %v", c.want, ref.errs)
			}
		})
	}
	// The table from before is still in force: a ring starts over it.
	q := setupQueue(t, f, mem, 0, 0x1000, false)
	if u := q.do(t, [][]byte{blkHeader(blkTIn, 0)}, []uint32{sector, 1}); u.Data[sector] != blk.StatusOK {
		t.Fatalf("read: status %d", u.Data[sector])
	}
}

// TestBackendEndsConnectionOnFraming: messages the wire layer refuses
// (too many regions, descriptors on a request that takes none, a reply
// where a request belongs) end the connection or are refused, and every
// descriptor that came with them is closed.
func TestBackendEndsConnectionOnFraming(t *testing.T) {
	t.Run("nine regions", func(t *testing.T) {
		f, _, _, done := hostileSetup(t)
		w, closed := pipeProbe(t)
		var tbl MemoryTable
		for i := range 9 {
			tbl.Regions = append(tbl.Regions, MemoryRegion{GuestAddr: uint64(i) << 30, Size: 4096, UserAddr: uint64(i) << 30})
		}
		fds := []int{w, w, w, w, w, w, w, w}
		sendRaw(t, f.conn.c, Header{Request: SetMemTable, Flags: Version, Size: uint32(len(tbl.Marshal()))}, tbl.Marshal(), fds)
		if err := <-done; !errors.Is(err, ErrMalformed) {
			t.Fatalf("connection ended with %v", err)
		}
		if !closed() {
			t.Fatal("descriptors of the refused table stayed open")
		}
	})
	t.Run("descriptor on GET_FEATURES", func(t *testing.T) {
		f, _, _, done := hostileSetup(t)
		w, closed := pipeProbe(t)
		sendRaw(t, f.conn.c, Header{Request: GetFeatures, Flags: Version}, nil, []int{w})
		if err := <-done; !errors.Is(err, ErrMalformed) {
			t.Fatalf("connection ended with %v", err)
		}
		if !closed() {
			t.Fatal("the descriptor stayed open")
		}
	})
	t.Run("reply flag on a request", func(t *testing.T) {
		f, _, ref, _ := hostileSetup(t)
		sendRaw(t, f.conn.c, Header{Request: SetVringNum, Flags: Version | FlagReply, Size: 8}, U64(0), nil)
		// The next exchange is answered: the stream stayed in step.
		if _, err := f.GetFeatures(); err != nil {
			t.Fatal(err)
		}
		if !ref.has(SetVringNum, ErrMalformed) {
			t.Fatalf("refusals: %v", ref.errs)
		}
	})
	t.Run("unknown request", func(t *testing.T) {
		f, _, ref, _ := hostileSetup(t)
		// Raw, since the front-end's decoder refuses unknown requests too.
		sendRaw(t, f.conn.c, Header{Request: 77, Flags: Version | FlagNeedReply, Size: 8}, U64(0), nil)
		var b [HeaderSize + 8]byte
		if _, err := io.ReadFull(f.conn.c, b[:]); err != nil {
			t.Fatal(err)
		}
		le := binary.LittleEndian
		if req, flags, size, status := le.Uint32(b[0:]), le.Uint32(b[4:]), le.Uint32(b[8:]), le.Uint64(b[12:]); req != 77 || flags != Version|FlagReply || size != 8 || status != 1 {
			t.Fatalf("answer to an unknown request: %d %#x %d status %d", req, flags, size, status)
		}
		if !ref.has(Request(77), ErrUnsupported) {
			t.Fatalf("refusals: %v", ref.errs)
		}
	})
}
