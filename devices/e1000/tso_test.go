package e1000_test

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

var (
	srcIP = []byte{10, 0, 0, 1}
	dstIP = []byte{10, 0, 0, 2}
)

// foldSum returns the 16-bit ones'-complement sum (not complemented).
func foldSum(s uint32) uint16 {
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

// tcpPacket builds Ethernet+IPv4+TCP as Linux's e1000_tso leaves it for
// the hardware: IP total length and checksum zero, the TCP checksum
// field holding the pseudo-header sum without the length.
func tcpPacket(payload []byte, flags byte) []byte {
	p := frame([]byte{2, 0, 0, 0, 0, 2}, testMAC, 0x0800, nil)
	ip := []byte{0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0}
	ip = append(append(ip, srcIP...), dstIP...)
	tcp := make([]byte, 20)
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], 5201)
	binary.BigEndian.PutUint32(tcp[4:], 1000)
	binary.BigEndian.PutUint32(tcp[8:], 77)
	tcp[12] = 5 << 4
	tcp[13] = flags
	binary.BigEndian.PutUint16(tcp[14:], 512)
	binary.BigEndian.PutUint16(tcp[16:], foldSum(pseudo4(srcIP, dstIP, 6, 0)))
	return append(append(append(p, ip...), tcp...), payload...)
}

// txContext places a context descriptor at index i.
func (r *rig) txContext(i int, ipcss, ipcso, ipcse, tucss, tucso, tucse int, paylen int, tucmd uint8, hdrLen, mss int) {
	var d [16]byte
	d[0], d[1] = byte(ipcss), byte(ipcso)
	binary.LittleEndian.PutUint16(d[2:], uint16(ipcse))
	d[4], d[5] = byte(tucss), byte(tucso)
	binary.LittleEndian.PutUint16(d[6:], uint16(tucse))
	binary.LittleEndian.PutUint32(d[8:], uint32(paylen)|uint32(tucmd|0x20)<<24)
	d[13] = byte(hdrLen)
	binary.LittleEndian.PutUint16(d[14:], uint16(mss))
	r.mem.WriteAt(d[:], int64(txRing+16*i))
}

// txData places a data descriptor at index i.
func (r *rig) txData(i int, buf uint64, n int, dcmd, popts uint8) {
	r.put64(txRing+16*uint64(i), buf)
	r.put64(txRing+16*uint64(i)+8, uint64(n)|1<<20|uint64(dcmd|0x20)<<24|uint64(popts)<<40)
}

func TestTSO(t *testing.T) {
	r := newRig(t, false)
	r.up(rctlEN)
	payload := make([]byte, 5000)
	for i := range payload {
		payload[i] = byte(rand.IntN(256))
	}
	pkt := tcpPacket(payload, 0x19) // FIN, PSH, ACK
	const hdrLen, mss = 54, 1448
	r.mem.WriteAt(pkt, txBufs)
	// Context: IP checksum over 14..33 into 24; TCP from 34 into 50;
	// TSE, TCP, IPv4.
	r.txContext(0, 14, 24, 33, 34, 50, 0, len(payload), 0x04|0x01|0x02, hdrLen, mss)
	// Headers and payload in three data descriptors: TSE, IXSM|TXSM.
	r.txData(1, txBufs, hdrLen, 0x04, 0x03)
	r.txData(2, txBufs+hdrLen, 2000, 0x04, 0x03)
	r.txData(3, txBufs+hdrLen+2000, len(payload)-2000, 0x04|0x01|0x08, 0x03)
	r.wr(TDT, 4)

	var got []byte
	nseg := (len(payload) + mss - 1) / mss
	for i := range nseg {
		f, _ := r.recv()
		ip, tcp := f[14:34], f[34:]
		last := i == nseg-1
		want := min(mss, len(payload)-i*mss)
		if len(tcp)-20 != want {
			t.Fatalf("segment %d carries %d bytes, want %d", i, len(tcp)-20, want)
		}
		if tl := binary.BigEndian.Uint16(ip[2:]); int(tl) != len(f)-14 {
			t.Errorf("segment %d: IP total length %d, frame has %d", i, tl, len(f)-14)
		}
		if id := binary.BigEndian.Uint16(ip[4:]); id != 0x1234+uint16(i) {
			t.Errorf("segment %d: IP ID %#x", i, id)
		}
		if refChecksum(0, ip) != 0 {
			t.Errorf("segment %d: IP header checksum does not verify", i)
		}
		if refChecksum(pseudo4(srcIP, dstIP, 6, len(tcp)), tcp) != 0 {
			t.Errorf("segment %d: TCP checksum does not verify", i)
		}
		if seq := binary.BigEndian.Uint32(tcp[4:]); seq != 1000+uint32(i*mss) {
			t.Errorf("segment %d: seq %d", i, seq)
		}
		flags := tcp[13]
		if last && flags != 0x19 || !last && flags != 0x10 {
			t.Errorf("segment %d (last %v): flags %#x", i, last, flags)
		}
		got = append(got, tcp[20:]...)
	}
	if !bytes.Equal(got, payload) {
		t.Error("reassembled payload differs")
	}
	if _, _, err := r.tryRecv(0); err == nil {
		t.Error("more segments than expected")
	}
	if r.rd(TSCTC) != 1 {
		t.Error("TSCTC is not 1")
	}
	if s := r.dev.Stats(); s.TxTSO != 1 || s.TxFrames != uint64(nseg) {
		t.Errorf("stats %+v", s)
	}
}

func TestTxChecksumOffloadUDP(t *testing.T) {
	r := newRig(t, false)
	r.up(rctlEN)
	data := []byte("hello, offloaded world")
	p := frame([]byte{2, 0, 0, 0, 0, 2}, testMAC, 0x0800, nil)
	ip := []byte{0x45, 0, 0, byte(20 + 8 + len(data)), 0, 1, 0, 0, 64, 17, 0, 0}
	ip = append(append(ip, srcIP...), dstIP...)
	binary.BigEndian.PutUint16(ip[10:], refChecksum(0, ip))
	udp := make([]byte, 8)
	binary.BigEndian.PutUint16(udp[0:], 1234)
	binary.BigEndian.PutUint16(udp[2:], 53)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(data)))
	// CHECKSUM_PARTIAL: the pseudo-header sum, with the length.
	binary.BigEndian.PutUint16(udp[6:], foldSum(pseudo4(srcIP, dstIP, 17, 8+len(data))))
	pkt := append(append(append(p, ip...), udp...), data...)
	r.mem.WriteAt(pkt, txBufs)
	r.txContext(0, 14, 24, 33, 34, 40, 0, 0, 0, 0, 0) // UDP, no TSE
	r.txData(1, txBufs, len(pkt), 0x01|0x08, 0x02)    // TXSM
	r.wr(TDT, 2)
	f, _ := r.recv()
	if refChecksum(pseudo4(srcIP, dstIP, 17, 8+len(data)), f[34:]) != 0 {
		t.Errorf("UDP checksum %#x does not verify", binary.BigEndian.Uint16(f[40:]))
	}
	if !bytes.Equal(f[42:], data) {
		t.Error("payload changed")
	}
}

// A TSO context the device cannot honour (an MSS of 1) drops the packet
// and moves on.
func TestTSOBadContextDropped(t *testing.T) {
	r := newRig(t, false)
	r.up(rctlEN)
	pkt := tcpPacket(make([]byte, 300), 0x10)
	r.mem.WriteAt(pkt, txBufs)
	r.txContext(0, 14, 24, 33, 34, 50, 0, 300, 0x07, 54, 1)
	r.txData(1, txBufs, len(pkt), 0x04|0x01|0x08, 0x03)
	good := frame(testMAC, testMAC, 0x0800, make([]byte, 46))
	r.mem.WriteAt(good, txBufs+0x1000)
	r.txLegacy(2, txBufs+0x1000, len(good), 0x01|0x08)
	r.wr(TDT, 3)
	f, _ := r.recv()
	if !bytes.Equal(f, good) {
		t.Fatalf("first frame sent is not the good one: %x", f[:20])
	}
	if s := r.dev.Stats(); s.TxErrors != 1 {
		t.Errorf("TxErrors = %d, want 1", s.TxErrors)
	}
}

func TestVLANInsertAndStrip(t *testing.T) {
	r := newRig(t, false)
	r.up(rctlEN)
	r.wr(CTRL, r.rd(CTRL)|1<<30) // VME
	r.wr(VET, 0)                 // as Linux's driver writes on the 82540
	f := frame(testMAC, testMAC, 0x0800, make([]byte, 46))
	r.mem.WriteAt(f, txBufs)
	r.put64(txRing, txBufs)
	r.put64(txRing+8, uint64(len(f))|uint64(0x01|0x08|0x40)<<24|0x0123<<48)
	r.wr(TDT, 1)
	got, _ := r.recv()
	if binary.BigEndian.Uint16(got[12:]) != 0x8100 || binary.BigEndian.Uint16(got[14:]) != 0x0123 ||
		!bytes.Equal(got[16:], f[12:]) {
		t.Fatalf("tagged frame %x", got[:20])
	}
	// And back: the tag is stripped into the descriptor.
	r.wr(RDT, ringSize-1)
	r.send(got)
	n, st, _, special := r.waitRxDesc(0)
	if st&(1<<3) == 0 || special != 0x0123 || int(n) != len(f)+4 {
		t.Errorf("status %#x special %#x length %d", st, special, n)
	}
	if !bytes.Equal(r.bytes(rxBufs, len(f)), f) {
		t.Error("stripped frame differs from the untagged original")
	}
}
