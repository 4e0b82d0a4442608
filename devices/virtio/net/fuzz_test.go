package net

import (
	"encoding/binary"
	"testing"
	"time"

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

// FuzzControl feeds arbitrary control commands to the control queue's
// handler of a device with 1 to 8 queue pairs: it must not panic, must
// answer with at most one ack byte of a defined value, and must never
// install a multicast MAC address or an out-of-range pair count. A
// well-formed VQ_PAIRS_SET within range is accepted and sets the count;
// any other MQ command is refused and changes nothing; back-end queues
// that were switched are on exactly for the pairs in use.
func FuzzControl(f *testing.F) {
	f.Add([]byte{1, 1, 0x52, 0x54, 0, 1, 2, 3}, uint32(1), uint8(3), uint8(1))
	f.Add([]byte{4, 0, 2, 0}, uint32(1), uint8(1), uint8(1))
	f.Add([]byte{4, 0, 8, 0}, uint32(1), uint8(2), uint8(7))
	f.Add([]byte{4, 0, 9, 0}, uint32(1), uint8(3), uint8(7))
	f.Add([]byte{4, 0, 0, 0}, uint32(1), uint8(2), uint8(3))
	f.Add([]byte{4, 1, 4, 0, 0, 0}, uint32(1), uint8(2), uint8(3))
	f.Add([]byte{3, 0}, uint32(1), uint8(2), uint8(1))
	f.Add([]byte{1}, uint32(0), uint8(0), uint8(0))
	f.Fuzz(func(t *testing.T, cmd []byte, wlen uint32, cut uint8, maxPairs uint8) {
		wlen %= 64
		npairs := int(maxPairs%8) + 1
		bes := make([]netdev.Backend, npairs)
		sws := make([]*switchBackend, npairs)
		for i := range bes {
			sws[i] = &switchBackend{}
			bes[i] = sws[i]
		}
		d, err := NewMultiQueue(bes, Config{})
		if err != nil {
			t.Fatal(err)
		}
		s := &ctrlServer{d: d, features: d.features, maxPairs: npairs}
		k := int(cut) % (len(cmd) + 1)
		var out virtio.Buffers
		if k > 0 {
			out = append(out, cmd[:k])
		}
		if k < len(cmd) {
			out = append(out, cmd[k:])
		}
		w := make([]byte, wlen)
		for i := range w {
			w[i] = 0xee
		}
		c := &virtio.Chain{Readable: out}
		if wlen > 0 {
			c.Writable = virtio.Buffers{w}
		}
		n := s.handle(c)
		if n > 1 || (wlen > 0) != (n == 1) || (n == 1 && w[0] > 1) {
			t.Fatalf("used %d, ack % x", n, w)
		}
		if d.MAC()[0]&1 != 0 {
			t.Fatalf("multicast MAC %v installed", d.MAC())
		}
		p := int(d.pairs.Load())
		if p < 1 || p > npairs {
			t.Fatalf("%d pairs of %d", p, npairs)
		}
		if len(cmd) >= 2 && cmd[0] == ctrlClassMQ && n == 1 {
			// MQ is offered with more than one pair; the pair count
			// follows the 2-byte class and command.
			valid, want := false, 1 // the count a refused command leaves
			if cmd[1] == ctrlMQPairsSet && len(cmd) >= 4 && npairs > 1 {
				if v := int(binary.LittleEndian.Uint16(cmd[2:])); v >= 1 && v <= npairs {
					valid, want = true, v
				}
			}
			if p != want || (w[0] == ctrlOK) != valid {
				t.Fatalf("MQ command % x on %d pairs: ack %d, %d pairs in use", cmd, npairs, w[0], p)
			}
		}
		for i, sw := range sws {
			if sw.told && sw.on != (i < p) {
				t.Fatalf("queue %d switched %v with %d pairs in use", i, sw.on, p)
			}
		}
	})
}

// switchBackend is a nopBackend that records what it was switched to.
type switchBackend struct {
	nopBackend
	told, on bool
}

func (b *switchBackend) SetQueueEnabled(on bool) error {
	b.told, b.on = true, on
	return nil
}

// nopBackend is a netdev.Backend that carries nothing.
type nopBackend struct{}

func (*nopBackend) ReadFrames([][]byte, []int) (int, error) { return 0, netdev.ErrClosed }
func (*nopBackend) WriteFrames(f [][][]byte) (int, error)   { return len(f), nil }
func (*nopBackend) SetReadDeadline(time.Time) error         { return nil }
func (*nopBackend) Close() error                            { return nil }
