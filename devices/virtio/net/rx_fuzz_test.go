package net

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/state"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/queuetest"
)

// scriptBackend delivers a fixed list of packets (header and frame), at
// most batch per ReadFrames, then reports itself closed.
type scriptBackend struct {
	pkts  [][]byte
	batch int
}

func (b *scriptBackend) ReadFrames(bufs [][]byte, sizes []int) (int, error) {
	if len(b.pkts) == 0 {
		return 0, netdev.ErrClosed
	}
	n := 0
	for n < len(bufs) && n < b.batch && len(b.pkts) > 0 {
		sizes[n] = copy(bufs[n], b.pkts[0])
		b.pkts = b.pkts[1:]
		n++
	}
	return n, nil
}
func (*scriptBackend) WriteFrames(f [][][]byte) (int, error) { return len(f), nil }
func (*scriptBackend) SetReadDeadline(time.Time) error       { return nil }
func (*scriptBackend) Close() error                          { return nil }

// rxFuzzBufs are the receive server's host buffers, and rxFuzzMem the
// guest RAM, reused across inputs (a fuzz worker runs one input at a time,
// and a first touch of a page costs more here than the whole input):
// queuetest.New clears the queue and data area each time.
var (
	rxFuzzBufs [][]byte
	rxFuzzMem  *memory.Memory
)

// rxFuzzPackets turns spec into packets: per packet three bytes, a length
// and a header kind. Each frame carries its index in its first two bytes.
func rxFuzzPackets(spec []byte) [][]byte {
	var pkts [][]byte
	for i := 0; len(spec) >= 3 && i < 24; i++ {
		n := int(binary.LittleEndian.Uint16(spec)) % 3000
		kind := spec[2]
		spec = spec[3:]
		if kind&0x80 != 0 {
			n = n*7 + 1000 // up to ~22 KB: more than the ring's buffers hold
		}
		n += netdev.MinFrameLen - 4 // a few frames too short to be valid
		p := make([]byte, netdev.HeaderSize+n)
		var h netdev.Header
		switch kind & 3 {
		case 1:
			h = netdev.Header{Flags: netdev.FlagNeedsCsum, CsumStart: uint16(kind >> 2), CsumOffset: 16}
		case 2:
			h = netdev.Header{Flags: netdev.FlagNeedsCsum, GSOType: netdev.GSOTCPv4, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}
		case 3:
			h = netdev.Header{Flags: kind, GSOType: kind >> 3, HdrLen: uint16(n), GSOSize: uint16(kind)}
		}
		h.NumBuffers = uint16(kind) // the device must overwrite it
		h.Encode(p)
		for j := netdev.HeaderSize; j < len(p); j++ {
			p[j] = byte(j*7 + i)
		}
		binary.LittleEndian.PutUint16(p[netdev.HeaderSize:], uint16(i))
		pkts = append(pkts, p)
	}
	return pkts
}

// FuzzRxChains delivers frames from a back-end into receive chains a
// hostile driver built (see queuetest.Hostile: writable and read-only
// buffers in any order, chains too short for the header, buffers outside
// RAM, loops, indirect tables), with or without mergeable buffers. The
// receive path must not panic or hang, and:
//   - it writes guest memory only inside the writable buffers of chains it
//     returns (up to the used length) or still holds;
//   - every used entry names a chain in flight, with a length within its
//     writable buffers, and length 0 for a chain the queue refuses;
//   - every frame the guest sees is one the back-end delivered, whole,
//     in order, with a header that passes the negotiated offloads, the
//     flags the guest may see and num_buffers equal to the chains it
//     spans (each of them but the last filled to the brim);
//   - the frame counters match what the guest received, the device's and
//     its queue pair's (other pairs count nothing), and every chain it
//     took is either returned or accounted for as held.
//
// mq makes the device one of up to 4 queue pairs, with the driver using
// up to 4 of them: the receive queue of a pair out of use takes nothing,
// neither a chain nor a frame from its back-end.
func FuzzRxChains(f *testing.F) {
	// Three 1.5 KB writable buffers, one read-only, one header-sized.
	f.Add([]byte{0, 0x61, 0x5d, 0, 0x61, 0x5d, 0, 0x61, 0x5d, 0, 0x10, 0x20, 0, 0xc1, 0}, []byte{0x78, 5, 0, 0x40, 0, 2, 100, 0, 1}, uint8(0x0a), uint8(0))
	// Mergeable: header-only buffers and one indirect chain of four.
	f.Add([]byte{0, 0xc1, 0, 0, 0xc1, 0, 7, 0x01, 0x10, 0x01, 0x10, 0x01, 0x10, 0x01, 0x10, 0, 0xc1, 0}, []byte{0, 0, 0x80, 60, 0, 0}, uint8(0x09), uint8(0x37))
	// Read-only after writable, out of RAM, straddling RAM's end, a loop.
	f.Add([]byte{1, 0x01, 0x40, 0x00, 0x40, 0, 0x05, 0x40, 1, 0x07, 0x40, 0x01, 0x40, 8, 0x01, 0x40, 0, 0x09, 0x40}, []byte{100, 0, 0, 100, 0, 1}, uint8(0x19), uint8(0x15))
	// A read-only chain where a writable one is needed, then a good one.
	f.Add([]byte{0, 0x10, 0x20, 0, 0x61, 0x5d}, []byte{100, 0, 0, 100, 0, 0}, uint8(0), uint8(0x07))
	// A broken avail index.
	f.Add([]byte{0, 0x01, 0x40}, []byte{100, 0, 0}, uint8(0x20), uint8(0x3b))
	f.Fuzz(func(t *testing.T, chains, frames []byte, feat, mq uint8) {
		const size = 16
		if rxFuzzMem == nil {
			m, err := memory.New([]memory.Layout{{GPA: 0x10000, Size: 0x20000}})
			if err != nil {
				t.Fatal(err)
			}
			rxFuzzMem = m
		}
		mem := rxFuzzMem
		eventIdx := feat&0x10 != 0
		drv, err := queuetest.New(mem, 0x10000, size, 0x1f000, eventIdx)
		if err != nil {
			t.Fatal(err)
		}
		var features uint64
		if feat&1 != 0 {
			features |= FeatureMrgRxbuf
		}
		if feat&2 != 0 {
			features |= FeatureGuestCsum
			if feat&4 != 0 {
				features |= FeatureGuestTSO4
			}
		}
		if feat&8 != 0 {
			features |= virtio.FeatureIndirectDesc
		}
		if eventIdx {
			features |= virtio.FeatureEventIdx
		}
		h, err := queuetest.NewHostile(drv, features&virtio.FeatureIndirectDesc != 0)
		if err != nil {
			t.Fatal(err)
		}
		posted := h.Post(chains)
		brokenRing := feat&0x20 != 0
		if brokenRing {
			drv.SetAvailIdx(uint16(len(posted)) + size + 1)
		}
		if err := h.Freeze(); err != nil {
			t.Fatal(err)
		}
		q, err := virtio.NewQueue(mem, drv.Config(), size, features)
		if err != nil {
			t.Fatal(err)
		}

		pkts := rxFuzzPackets(frames)
		sent := make([][]byte, len(pkts))
		for i, p := range pkts {
			sent[i] = append([]byte(nil), p...)
		}
		be := &scriptBackend{pkts: pkts, batch: 1 << (feat >> 6)}
		npairs := int(mq&3) + 1
		pair := int(mq>>2&3) % npairs
		inUse := int(mq>>4&3)%npairs + 1
		bes := make([]netdev.Backend, npairs)
		for i := range bes {
			bes[i] = &nopBackend{}
		}
		bes[pair] = be
		d, err := NewMultiQueue(bes, Config{})
		if err != nil {
			t.Fatal(err)
		}
		d.setPairs(inUse, true)
		if rxFuzzBufs == nil {
			rxFuzzBufs = make([][]byte, rxBatch)
			for i := range rxFuzzBufs {
				rxFuzzBufs[i] = make([]byte, netdev.MaxPacketLen)
			}
		}
		// A stop channel closed from the start makes the server return
		// where the device would wait (for buffers or for frames) instead
		// of blocking, so the whole run happens on this goroutine.
		stop := make(chan struct{})
		close(stop)
		s := newRxServer(d, &d.pairStat[pair], be, rxFuzzBufs, q, stop, state.NewGate(), features)
		s.pair = pair
		s.serve()

		used, err := h.Collect()
		if err != nil {
			t.Fatal(err)
		}
		var held []uint16
		if s.held != nil {
			held = append(held, s.held.Head)
		}
		for _, c := range s.chains {
			held = append(held, c.Head)
		}
		if err := h.CheckWrites(held...); err != nil {
			t.Fatal(err)
		}
		if len(used)+len(held) > len(posted) {
			t.Fatalf("%d chains used and %d held of %d posted", len(used), len(held), len(posted))
		}
		if len(h.InFlight()) != len(posted)-len(used) {
			t.Fatalf("%d chains in flight after %d of %d came back", len(h.InFlight()), len(used), len(posted))
		}
		if pair >= inUse {
			if len(used)+len(held) != 0 || len(be.pkts) != len(pkts) || d.Stats().RxFrames != 0 {
				t.Fatalf("pair %d out of use (%d of %d in use): %d chains used, %d held, %d of %d frames read",
					pair, inUse, npairs, len(used), len(held), len(pkts)-len(be.pkts), len(pkts))
			}
			return
		}
		if brokenRing {
			if _, err := q.Next(); !errors.Is(err, virtio.ErrQueueBroken) || len(used) != 0 {
				t.Fatalf("ring with a bad avail index: %d used, Next says %v", len(used), err)
			}
			return
		}
		// The device stops for one of two reasons: the ring ran dry (it
		// took every chain) or the back-end did (it holds the chain it
		// took to read more).
		if len(be.pkts) > 0 || s.next < s.count {
			if len(used)+len(held) != len(posted) {
				t.Fatalf("frames left but only %d used and %d held of %d chains", len(used), len(held), len(posted))
			}
		}

		// Reassemble what the guest received.
		allowed := rxOffloads(features)
		mergeable := features&FeatureMrgRxbuf != 0
		last := -1
		var frameCount, byteCount uint64
		for i := 0; i < len(used); {
			u := used[i]
			i++
			if u.Len == 0 {
				continue // refused, too short for a header, or a frame that could not fit
			}
			if u.Len < netdev.HeaderSize {
				t.Fatalf("a %d-byte buffer for a packet's start", u.Len)
			}
			got := netdev.DecodeHeader(u.Data)
			pkt := append([]byte(nil), u.Data...)
			if mergeable {
				k := int(got.NumBuffers)
				if k < 1 || k > size || i-1+k > len(used) {
					t.Fatalf("num_buffers %d with %d entries left", k, len(used)-i+1)
				}
				if _, cap := u.Chain.Writable(); k > 1 && uint64(u.Len) != cap {
					t.Fatalf("buffer %d of %d filled with %d of %d bytes", 1, k, u.Len, cap)
				}
				for j := 1; j < k; j++ {
					v := used[i]
					i++
					_, cap := v.Chain.Writable()
					if v.Len == 0 || (j < k-1 && uint64(v.Len) != cap) {
						t.Fatalf("buffer %d of %d filled with %d of %d bytes", j+1, k, v.Len, cap)
					}
					pkt = append(pkt, v.Data...)
				}
			} else if got.NumBuffers != 1 {
				t.Fatalf("num_buffers %d without mergeable buffers", got.NumBuffers)
			}
			if len(pkt) < netdev.HeaderSize+netdev.MinFrameLen {
				t.Fatalf("a %d-byte packet", len(pkt))
			}
			idx := int(binary.LittleEndian.Uint16(pkt[netdev.HeaderSize:]))
			if idx <= last || idx >= len(sent) {
				t.Fatalf("frame %d delivered after frame %d (of %d)", idx, last, len(sent))
			}
			last = idx
			want := sent[idx]
			wh := netdev.DecodeHeader(want)
			if err := wh.Check(len(want)-netdev.HeaderSize, allowed); err != nil {
				t.Fatalf("frame %d delivered with a header the guest cannot take: %v", idx, err)
			}
			if features&FeatureGuestCsum != 0 {
				wh.Flags &= netdev.FlagNeedsCsum | netdev.FlagDataValid
			} else {
				wh.Flags = 0
			}
			wh.NumBuffers = got.NumBuffers
			if got != wh {
				t.Fatalf("frame %d: header %+v, want %+v", idx, got, wh)
			}
			if !bytes.Equal(pkt[netdev.HeaderSize:], want[netdev.HeaderSize:]) {
				t.Fatalf("frame %d: %d bytes differ from the %d sent", idx, len(pkt)-netdev.HeaderSize, len(want)-netdev.HeaderSize)
			}
			frameCount++
			byteCount += uint64(len(want) - netdev.HeaderSize)
		}
		st := d.Stats()
		if st.RxFrames != frameCount || st.RxBytes != byteCount {
			t.Fatalf("counters say %d frames, %d bytes; the guest got %d, %d", st.RxFrames, st.RxBytes, frameCount, byteCount)
		}
		for i, qs := range d.QueueStats() {
			if i == pair && (qs.RxFrames != frameCount || qs.RxBytes != byteCount) || i != pair && qs != (QueueStats{}) {
				t.Fatalf("pair %d (of %d, serving %d) counted %+v; the guest got %d frames, %d bytes", i, npairs, pair, qs, frameCount, byteCount)
			}
		}
	})
}
