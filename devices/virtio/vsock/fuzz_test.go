package vsock

import (
	"encoding/binary"
	"io"
	"testing"

	"github.com/viovmm/vio/virtio"
)

// fuzzHost is a host side whose sockets are byte counters, so that a fuzz
// run is deterministic: the fuzzer decides when dials, reads and writes
// complete. (The real host side is exercised with real sockets by the
// package's other tests.)
type fuzzHost struct {
	dials   []*conn
	reads   map[*conn]int // outstanding read sizes
	written map[*conn]int // guest bytes queued and not yet "written"
	closed  map[*conn]bool
	t       *testing.T
}

func (h *fuzzHost) dial(c *conn) { h.dials = append(h.dials, c) }
func (h *fuzzHost) open(c *conn, hello []byte) {
	if h.closed[c] {
		h.t.Fatal("open of a closed connection")
	}
}
func (h *fuzzHost) read(c *conn, n int) {
	if _, dup := h.reads[c]; dup {
		h.t.Fatal("second outstanding read")
	}
	if n <= 0 {
		h.t.Fatalf("read of %d bytes", n)
	}
	h.reads[c] = n
}
func (h *fuzzHost) write(c *conn, p virtio.Buffers, off int64, n int) error {
	buf := make([]byte, n)
	if _, err := p.ReadAt(buf, off); err != nil {
		return err
	}
	h.written[c] += n
	return nil
}
func (h *fuzzHost) closeWrite(c *conn) {}
func (h *fuzzHost) close(c *conn) {
	h.closed[c] = true
	delete(h.reads, c)
	delete(h.written, c)
}

// FuzzGuestPackets feeds a hostile guest's packets, interleaved with host
// events the fuzzer picks, to the protocol state machine. It must never
// panic, its invariants (bounded connections, queues and buffers; every
// owed packet queued) must hold after every step, and no data packet it
// sends may exceed the credit the guest last advertised.
func FuzzGuestPackets(f *testing.F) {
	pkt := func(op uint16, src, dst uint32, bufAlloc, fwd uint32, data []byte) []byte {
		b := make([]byte, HeaderSize+len(data))
		Header{SrcCID: 3, DstCID: HostCID, SrcPort: src, DstPort: dst, Len: uint32(len(data)), Type: TypeStream,
			Op: op, BufAlloc: bufAlloc, FwdCnt: fwd}.Encode(b)
		copy(b[HeaderSize:], data)
		return b
	}
	frame := func(events byte, p []byte) []byte {
		b := []byte{events, byte(len(p)), byte(len(p) >> 8)}
		return append(b, p...)
	}
	var seed []byte
	seed = append(seed, frame(1, pkt(OpRequest, 1000, 80, 4096, 0, nil))...)
	seed = append(seed, frame(6, pkt(OpRW, 1000, 80, 4096, 0, []byte("hello")))...)
	seed = append(seed, frame(4, pkt(OpCreditUpdate, 1000, 80, 100, 0, nil))...)
	seed = append(seed, frame(2, pkt(OpShutdown, 1000, 80, 100, 0, nil))...)
	f.Add(seed)
	f.Add(frame(0, pkt(OpRW, 1, 2, 0, 0, make([]byte, 100))))
	f.Add(frame(0xff, pkt(OpRequest, 7, 8, 0xffffffff, 0xffffffff, nil)))
	f.Fuzz(func(t *testing.T, in []byte) {
		h := &fuzzHost{reads: map[*conn]int{}, written: map[*conn]int{}, closed: map[*conn]bool{}, t: t}
		m := newMux(3, h, Config{BufAlloc: 4096, MaxConns: 4, ReadChunk: 1024}, &counters{})
		// What the guest last told the device, per connection.
		told := map[connKey][2]uint32{}
		sent := map[*conn]uint32{}
		host := 0
		for len(in) >= 3 {
			ev := in[0]
			n := int(binary.LittleEndian.Uint16(in[1:]))
			in = in[3:]
			n = min(n, len(in))
			p := in[:n]
			in = in[n:]
			// The packet, split in two buffers as Linux sends it.
			var bufs virtio.Buffers
			if k := min(len(p), HeaderSize); k > 0 {
				bufs = append(bufs, p[:k])
			}
			if len(p) > HeaderSize {
				bufs = append(bufs, p[HeaderSize:])
			}
			var k connKey
			before := false
			if len(p) >= HeaderSize {
				g := DecodeHeader(p)
				k = connKey{host: g.DstPort, guest: g.SrcPort}
				before = m.conns[k] != nil
				if g.SrcCID == 3 && g.DstCID == HostCID && g.Type == TypeStream {
					m.guest(bufs)
					if before || m.conns[k] != nil {
						told[k] = [2]uint32{g.BufAlloc, g.FwdCnt}
					}
				} else {
					m.guest(bufs)
				}
			} else {
				m.guest(bufs)
			}
			// Host events, chosen by the bits of ev.
			if ev&1 != 0 {
				for _, c := range h.dials {
					m.dialed(c, nil)
				}
				h.dials = nil
			}
			if ev&2 != 0 {
				for _, c := range h.dials {
					m.dialed(c, io.ErrClosedPipe)
				}
				h.dials = nil
			}
			if ev&4 != 0 {
				for c, want := range h.reads {
					delete(h.reads, c)
					m.readDone(c, make([]byte, want), nil)
				}
			}
			if ev&8 != 0 {
				for c, k := range h.written {
					delete(h.written, c)
					m.written(c, k, nil)
				}
			}
			if ev&16 != 0 {
				for c := range h.reads {
					delete(h.reads, c)
					m.readDone(c, nil, io.EOF)
				}
			}
			if ev&32 != 0 {
				sock := struct{}{}
				m.hostConnect(uint32(host), sock, nil)
				host++
			}
			if ev&64 != 0 {
				for _, c := range m.conns {
					m.timedOut(c)
					break
				}
			}
			if err := m.check(); err != nil {
				t.Fatal(err)
			}
			// The guest takes what it is owed into buffers of a size the
			// fuzzer picks.
			room := HeaderSize + 1 + int(ev>>4)*300
			for m.owed() {
				w := make([]byte, room)
				got := m.fill(virtio.Buffers{w})
				if got < HeaderSize || int(got) > room {
					t.Fatalf("packet of %d bytes in a %d-byte buffer", got, room)
				}
				o := DecodeHeader(w)
				if o.SrcCID != HostCID || o.DstCID != 3 || o.Len != got-HeaderSize {
					t.Fatalf("bad packet %v", o)
				}
				if o.Op == OpRW {
					k := connKey{host: o.SrcPort, guest: o.DstPort}
					c := m.conns[k]
					if c == nil {
						t.Fatalf("data for no connection: %v", o)
					}
					sent[c] += o.Len
					cr := told[k]
					if o.Len == 0 || sent[c]-cr[1] > cr[0] {
						t.Fatalf("%d bytes sent, guest buf_alloc %d fwd_cnt %d", sent[c], cr[0], cr[1])
					}
				}
				if err := m.check(); err != nil {
					t.Fatal(err)
				}
			}
		}
		m.closeAll()
		if len(m.conns) != 0 || len(h.reads) != 0 {
			t.Fatal("connections left after closeAll")
		}
	})
}
