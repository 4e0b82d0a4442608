package e1000_test

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"testing"
	"time"

	"github.com/viovmm/vio/pci"
)

func TestPCIIdentityAndBARs(t *testing.T) {
	r := newRig(t, false)
	var b [4]byte
	r.dev.ReadConfig(pci.RegVendorID, b[:])
	if v := binary.LittleEndian.Uint32(b[:]); v != 0x100e8086 {
		t.Errorf("vendor/device = %#x, want 0x100e8086", v)
	}
	r.dev.ReadConfig(0x08, b[:])
	if c := binary.LittleEndian.Uint32(b[:]) >> 8; c != 0x020000 {
		t.Errorf("class = %#x, want 0x020000", c)
	}
	// BAR sizing as firmware does it.
	for i, want := range []uint32{^uint32(128<<10 - 1), ^uint32(64-1) | 1} {
		off := pci.RegBAR0 + 4*i
		binary.LittleEndian.PutUint32(b[:], 0xffffffff)
		r.dev.WriteConfig(off, b[:])
		r.dev.ReadConfig(off, b[:])
		if got := binary.LittleEndian.Uint32(b[:]); got&^0x2 != want&^0x2 && got != want {
			t.Errorf("BAR%d probes as %#x, want %#x", i, got, want)
		}
	}
	r.dev.ReadConfig(pci.RegInterruptPin, b[:1])
	if b[0] != 1 {
		t.Errorf("interrupt pin %d, want 1 (INTA#)", b[0])
	}
}

// e1000_reset_hw issues the reset through the I/O window on this model.
func TestResetThroughIOWindow(t *testing.T) {
	r := newRig(t, false)
	r.wr(IMS, 0xff)
	r.wr(RCTL, rctlEN)
	r.wr(RAL0, 0)
	r.ioWrite(0, CTRL)
	if got := r.ioRead(0); got != CTRL {
		t.Fatalf("IOADDR reads %#x", got)
	}
	r.ioWrite(4, r.ioRead(4)|1<<26)
	if r.rd(IMS) != 0 || r.rd(RCTL) != 0 {
		t.Errorf("after reset IMS=%#x RCTL=%#x, want 0", r.rd(IMS), r.rd(RCTL))
	}
	if r.rd(CTRL)&(1<<26) != 0 {
		t.Error("CTRL.RST did not clear itself")
	}
	if got, want := r.rd(RAL0), binary.LittleEndian.Uint32(testMAC); got != want {
		t.Errorf("RAL0 = %#x after reset, want the EEPROM's %#x", got, want)
	}
	if rah := r.rd(RAH0); rah>>31 != 1 || uint16(rah) != binary.LittleEndian.Uint16(testMAC[4:]) {
		t.Errorf("RAH0 = %#x", rah)
	}
	// An access past the register window through IOADDR is harmless.
	r.ioWrite(0, 0xfffffff0)
	_ = r.ioRead(4)
	r.ioWrite(4, 1)
}

// eepromRead bit-bangs one Microwire READ the way e1000_read_eeprom does
// for a 64-word part.
func eepromRead(r *rig, addr int) uint16 {
	const sk, cs, di, do, req, gnt = 1, 2, 4, 8, 64, 128
	eecd := r.rd(EECD)
	r.wr(EECD, eecd|req)
	if r.rd(EECD)&gnt == 0 {
		r.t.Fatal("EECD grant never set")
	}
	eecd = r.rd(EECD) &^ (di | sk)
	r.wr(EECD, eecd)
	eecd |= cs
	r.wr(EECD, eecd)
	out := func(v, bits int) {
		for i := bits - 1; i >= 0; i-- {
			eecd &^= di
			if v>>i&1 != 0 {
				eecd |= di
			}
			r.wr(EECD, eecd)
			r.wr(EECD, eecd|sk)
			r.wr(EECD, eecd)
		}
		eecd &^= di
		r.wr(EECD, eecd)
	}
	out(0b110, 3)
	out(addr, 6)
	var data uint16
	for range 16 {
		r.wr(EECD, eecd|sk)
		data = data<<1 | uint16(r.rd(EECD)&do>>3)
		r.wr(EECD, eecd)
	}
	// Release: CS low, a clock, REQ off.
	eecd &^= cs | di
	r.wr(EECD, eecd)
	r.wr(EECD, eecd|sk)
	r.wr(EECD, eecd)
	r.wr(EECD, eecd&^req)
	return data
}

func TestEEPROM(t *testing.T) {
	r := newRig(t, false)
	if r.rd(EECD)&(1<<8) == 0 {
		t.Error("EECD.PRES clear: no EEPROM")
	}
	var sum uint16
	words := make([]uint16, 64)
	for i := range words {
		words[i] = eepromRead(r, i)
		sum += words[i]
	}
	if sum != 0xbaba {
		t.Errorf("EEPROM words sum to %#x, want 0xbaba", sum)
	}
	var mac []byte
	for _, w := range words[:3] {
		mac = append(mac, byte(w), byte(w>>8))
	}
	if !bytes.Equal(mac, testMAC) {
		t.Errorf("EEPROM MAC %x, want %x", mac, testMAC)
	}
	// EERD gives the same words.
	for _, i := range []int{0, 1, 2, 0x0d, 0x3f} {
		r.wr(EERD, uint32(i)<<8|1)
		v := r.rd(EERD)
		if v&(1<<4) == 0 || uint16(v>>16) != words[i] {
			t.Errorf("EERD word %#x = %#x, Microwire says %#x", i, v, words[i])
		}
	}
}

func mdio(r *rig, op uint32, reg uint32, data uint16) (uint16, bool) {
	r.wr(MDIC, uint32(data)|reg<<16|1<<21|op<<26)
	v := r.rd(MDIC)
	if v&(1<<28) == 0 {
		r.t.Fatal("MDIC never ready")
	}
	return uint16(v), v&(1<<30) == 0
}

func TestPHYAndLink(t *testing.T) {
	r := newRig(t, false)
	id1, ok1 := mdio(r, 2, 2, 0)
	id2, ok2 := mdio(r, 2, 3, 0)
	if !ok1 || !ok2 || uint32(id1)<<16|uint32(id2)&^0xf != 0x01410c20 {
		t.Errorf("PHY ID %#04x %#04x, want the M88E1011's 0x01410c2x", id1, id2)
	}
	// Autonegotiation restart (what e1000_copper_link_autoneg writes),
	// then the status the watchdog reads twice.
	ctrl, _ := mdio(r, 2, 0, 0)
	mdio(r, 1, 0, ctrl|1<<12|1<<9)
	if v, _ := mdio(r, 2, 0, 0); v&(1<<9) != 0 {
		t.Error("PHY restart-autoneg bit did not self-clear")
	}
	st, _ := mdio(r, 2, 1, 0)
	if st&(1<<2) == 0 || st&(1<<5) == 0 {
		t.Errorf("PHY status %#x: want link up and autoneg complete", st)
	}
	if s := r.rd(STATUS); s&3 != 3 || s>>6&3 != 2 {
		t.Errorf("STATUS %#x: want link up, full duplex, 1000 Mb/s", s)
	}
	// A PHY address other than 1 is an error.
	r.wr(MDIC, 2<<16|2<<21|2<<26)
	if v := r.rd(MDIC); v&(1<<30) == 0 || v&(1<<28) == 0 {
		t.Errorf("MDIC to PHY 2 = %#x, want ready with error", v)
	}
	// Writes to a read-only register do not stick; writable ones do.
	mdio(r, 1, 1, 0)
	if st2, _ := mdio(r, 2, 1, 0); st2 != st {
		t.Errorf("PHY status changed by a write: %#x", st2)
	}
	mdio(r, 1, 4, 0x01e1)
	if v, _ := mdio(r, 2, 4, 0); v != 0x01e1 {
		t.Errorf("autoneg advertisement reads %#x after writing 0x01e1", v)
	}
}

func TestInterruptCauseAndMask(t *testing.T) {
	r := newRig(t, false)
	// e1000_open: a software LSC through ICS, with the mask set.
	r.wr(ICS, icrLSC)
	if l, _ := r.line.Level(); l {
		t.Fatal("line high while every cause is masked")
	}
	r.wr(IMS, icrLSC|icrRXT0)
	if l, _ := r.line.Level(); !l {
		t.Fatal("line low with LSC pending and unmasked")
	}
	if got := r.rd(IMS); got != icrLSC|icrRXT0 {
		t.Errorf("IMS reads %#x", got)
	}
	r.wr(IMC, icrLSC)
	if l, _ := r.line.Level(); l {
		t.Fatal("line high after IMC masked the only pending cause")
	}
	r.wr(IMS, icrLSC)
	if got := r.rd(ICR); got != icrLSC {
		t.Errorf("ICR = %#x, want LSC", got)
	}
	if l, _ := r.line.Level(); l {
		t.Error("reading ICR did not lower the line")
	}
	if got := r.rd(ICR); got != 0 {
		t.Errorf("ICR after read = %#x, want 0 (read-to-clear)", got)
	}
	// INTx disable in the command register holds the line low.
	var cmd [2]byte
	binary.LittleEndian.PutUint16(cmd[:], pci.CommandINTxDisable)
	r.dev.WriteConfig(pci.RegCommand, cmd[:])
	r.wr(ICS, icrLSC)
	if l, _ := r.line.Level(); l {
		t.Error("line high with INTx disabled")
	}
	binary.LittleEndian.PutUint16(cmd[:], 0)
	r.dev.WriteConfig(pci.RegCommand, cmd[:])
	if l, _ := r.line.Level(); !l {
		t.Error("line low after INTx was enabled again with a cause pending")
	}
}

func TestTransmitLegacy(t *testing.T) {
	r := newRig(t, false)
	r.up(rctlEN | rctlBAM)
	f := frame([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, testMAC, 0x0806, bytes.Repeat([]byte{0xab}, 46))
	// The frame spread over two descriptors, RS on the last.
	r.mem.WriteAt(f[:20], txBufs)
	r.mem.WriteAt(f[20:], txBufs+0x1000)
	r.txLegacy(0, txBufs, 20, 0x02)
	r.txLegacy(1, txBufs+0x1000, len(f)-20, 0x01|0x02|0x08)
	r.wr(TDT, 2)
	got, h := r.recv()
	if !bytes.Equal(got, f) {
		t.Fatalf("sent %x\ngot  %x", f, got)
	}
	if h.Flags != 0 || h.GSOType != 0 {
		t.Errorf("header %+v: the device offloads nothing to the back-end", h)
	}
	r.waitLine(true)
	if icr := r.rd(ICR); icr&icrTXDW == 0 {
		t.Errorf("ICR %#x: no TXDW", icr)
	}
	if st := r.bytes(txRing+16+12, 1)[0]; st&1 == 0 {
		t.Error("RS descriptor not written back with DD")
	}
	if r.rd(TDH) != 2 {
		t.Errorf("TDH = %d, want 2", r.rd(TDH))
	}
	if r.rd(GPTC) != 1 || r.rd(GPTC) != 0 {
		t.Error("GPTC is not 1 then 0 (read-to-clear)")
	}
	if s := r.dev.Stats(); s.TxFrames != 1 || s.TxBytes != uint64(len(f)) {
		t.Errorf("stats %+v", s)
	}
}

func TestTransmitLegacyChecksum(t *testing.T) {
	r := newRig(t, false)
	r.up(rctlEN)
	payload := []byte("0123456789abcdefXYZ")
	f := frame(testMAC, testMAC, 0x88b5, append([]byte{0, 0}, payload...))
	r.mem.WriteAt(f, txBufs)
	// CSO 14 (the two zero bytes), CSS 16, IC.
	r.put64(txRing, txBufs)
	r.put64(txRing+8, uint64(len(f))|14<<16|uint64(0x01|0x04|0x08)<<24|16<<40)
	r.wr(TDT, 1)
	got, _ := r.recv()
	if c := refChecksum(0, got[16:]); binary.BigEndian.Uint16(got[14:]) != c {
		t.Errorf("legacy checksum %#x, want %#x", binary.BigEndian.Uint16(got[14:]), c)
	}
}

func TestReceive(t *testing.T) {
	r := newRig(t, false)
	r.up(rctlEN | rctlBAM)
	r.wr(RDT, ringSize-1)
	f := frame(testMAC, []byte{2, 0, 0, 0, 0, 1}, 0x0800, bytes.Repeat([]byte{7}, 100))
	r.send(f)
	n, st, errs, _ := r.waitRxDesc(0)
	if errs != 0 || st&0x03 != 0x03 {
		t.Fatalf("descriptor status %#x errors %#x", st, errs)
	}
	if int(n) != len(f)+4 {
		t.Fatalf("length %d, want %d (frame and FCS)", n, len(f)+4)
	}
	data := r.bytes(rxBufs, int(n))
	if !bytes.Equal(data[:len(f)], f) {
		t.Fatalf("received %x", data)
	}
	if fcs := binary.LittleEndian.Uint32(data[len(f):]); fcs != crc32.ChecksumIEEE(f) {
		t.Errorf("FCS %#x, want %#x", fcs, crc32.ChecksumIEEE(f))
	}
	if r.seen&icrRXT0 == 0 {
		t.Errorf("causes %#x: no RXT0", r.seen)
	}
	if r.rd(RDH) != 1 || r.rd(GPRC) != 1 || r.rd(GORCL) != uint32(len(f)+4) {
		t.Errorf("RDH %d, counters wrong", r.rd(RDH))
	}
	// A short frame is padded to 60 bytes before the FCS.
	short := frame(testMAC, []byte{2, 0, 0, 0, 0, 1}, 0x0806, []byte{1, 2, 3})
	r.send(short)
	n, _, _, _ = r.waitRxDesc(1)
	if n != 64 {
		t.Errorf("short frame received as %d bytes, want 64", n)
	}
}

func TestReceiveLargeFrameSpansDescriptors(t *testing.T) {
	r := newRig(t, false)
	r.up(rctlEN | 1<<5 | 3<<16) // LPE, 256-byte buffers
	for i := range uint64(ringSize) {
		r.put64(rxRing+16*i, rxBufs+256*i)
	}
	r.wr(RDT, ringSize-1)
	f := frame(testMAC, testMAC, 0x0800, bytes.Repeat([]byte{9}, 600))
	r.send(f)
	want := append(append([]byte{}, f...), 0, 0, 0, 0)
	binary.LittleEndian.PutUint32(want[len(f):], crc32.ChecksumIEEE(f))
	var got []byte
	for i := 0; ; i++ {
		n, st, _, _ := r.waitRxDesc(i)
		got = append(got, r.bytes(rxBufs+256*uint64(i), int(n))...)
		if st&2 != 0 {
			break
		}
		if i > 4 {
			t.Fatal("no EOP")
		}
	}
	if !bytes.Equal(got, want) {
		t.Errorf("reassembled %d bytes differ from the %d sent", len(got), len(want))
	}
}

func TestReceiveFilters(t *testing.T) {
	r := newRig(t, false)
	r.up(rctlEN) // no broadcast, no promiscuous modes
	r.wr(RDT, ringSize-1)
	other := []byte{0x52, 0x54, 0, 0, 0, 9}
	mcast := []byte{0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb}
	bcast := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	src := []byte{2, 0, 0, 0, 0, 1}
	send := func(dst []byte, tag byte) { r.send(frame(dst, src, 0x0800, bytes.Repeat([]byte{tag}, 50))) }
	send(other, 1) // dropped: not our address
	send(bcast, 2) // dropped: BAM clear
	send(mcast, 3) // dropped: hash bit clear
	send(testMAC, 4)
	r.waitRxDesc(0)
	if b := r.bytes(rxBufs+14, 1)[0]; b != 4 {
		t.Fatalf("first frame received is %d, want 4 (the others filtered)", b)
	}
	// Multicast hash, filter type 0: bits 47:36 of the address.
	hash := uint32(mcast[4])>>4 | uint32(mcast[5])<<4
	r.wr(MTA+uint64(hash>>5)*4, 1<<(hash&31))
	r.wr(RCTL, rctlEN|rctlBAM)
	send(other, 5)
	send(mcast, 6)
	send(bcast, 7)
	r.waitRxDesc(2)
	if a, b := r.bytes(rxBufs+2048+14, 1)[0], r.bytes(rxBufs+2*2048+14, 1)[0]; a != 6 || b != 7 {
		t.Fatalf("received %d, %d; want 6, 7", a, b)
	}
	r.wr(RCTL, rctlEN|rctlUPE)
	send(other, 8)
	r.waitRxDesc(3)
	if b := r.bytes(rxBufs+3*2048+14, 1)[0]; b != 8 {
		t.Fatalf("promiscuous: received %d, want 8", b)
	}
	if s := r.dev.Stats(); s.RxFiltered != 4 {
		t.Errorf("RxFiltered = %d, want 4", s.RxFiltered)
	}
}

// The device takes frames from the back-end only as the guest posts
// descriptors; the rest wait in the back-end.
func TestReceiveBackpressure(t *testing.T) {
	r := newRig(t, false)
	r.up(rctlEN | rctlBAM)
	r.wr(RDT, 2) // two descriptors
	for i := range 6 {
		r.send(frame(testMAC, testMAC, 0x0800, bytes.Repeat([]byte{byte(i)}, 50)))
	}
	r.waitRxDesc(1)
	if r.rd(RDH) != 2 {
		t.Fatalf("RDH = %d, want 2", r.rd(RDH))
	}
	if st := r.bytes(rxRing+2*16+12, 1)[0]; st != 0 {
		t.Fatal("descriptor 2, not given to the device, was written")
	}
	r.wr(RDT, 6)
	r.waitRxDesc(5)
	for i := range 6 {
		if b := r.bytes(rxBufs+2048*uint64(i)+14, 1)[0]; b != byte(i) {
			t.Errorf("descriptor %d holds frame %d", i, b)
		}
	}
	if s := r.dev.Stats(); s.RxDrops != 0 || s.RxFrames != 6 {
		t.Errorf("stats %+v: want 6 frames and no drops", s)
	}
}

func TestInterruptThrottling(t *testing.T) {
	r := newRig(t, true)
	r.wr(ITR, 1000) // 256 µs between interrupts
	r.wr(IMS, icrLSC)
	r.wr(ICS, icrLSC)
	if l, _ := r.line.Level(); !l {
		t.Fatal("first interrupt held back")
	}
	r.rd(ICR)
	r.wr(ICS, icrLSC)
	if l, _ := r.line.Level(); l {
		t.Fatal("second interrupt within the ITR interval was not held back")
	}
	r.clock.Advance(255 * time.Microsecond)
	if l, _ := r.line.Level(); l {
		t.Fatal("interrupt raised before the interval ended")
	}
	r.clock.Advance(1 * time.Microsecond)
	if l, _ := r.line.Level(); !l {
		t.Fatal("interrupt not raised when the interval ended")
	}
	if s := r.dev.Stats(); s.Interrupts != 2 || s.Throttled == 0 {
		t.Errorf("stats %+v", s)
	}
}

// A guest asking for more than 7813 interrupts a second gets 7813, as
// from a real 8254x: the interval is at least 500 × 256 ns = 128 µs.
func TestInterruptThrottlingFloor(t *testing.T) {
	r := newRig(t, true)
	r.wr(ITR, 55) // Linux's "lowest latency": 70000 a second asked for
	r.wr(IMS, icrLSC)
	r.wr(ICS, icrLSC)
	if l, _ := r.line.Level(); !l {
		t.Fatal("first interrupt held back")
	}
	r.rd(ICR)
	r.wr(ICS, icrLSC)
	r.clock.Advance(55*256*time.Nanosecond + time.Microsecond)
	if l, _ := r.line.Level(); l {
		t.Fatal("interrupt raised after the guest's 14 µs interval, before the adapter's 128 µs floor")
	}
	r.clock.Advance(128*time.Microsecond - 55*256*time.Nanosecond - time.Microsecond)
	if l, _ := r.line.Level(); !l {
		t.Fatal("interrupt not raised when the 128 µs floor ended")
	}
}

func TestReceiveDelayTimers(t *testing.T) {
	r := newRig(t, true)
	r.up(rctlEN | rctlBAM | 2<<8) // RDMTS 1/8: RXDMT0 when 2 of 16 are left
	r.wr(IMC, ^uint32(0))
	// RXDMT0 tells the test that the frame was written back; RXT0 is
	// the cause under test.
	r.wr(IMS, icrRXT0|icrRXDMT0)
	r.wr(RDTR, 100) // 102.4 µs packet timer
	r.wr(RADV, 150) // 153.6 µs absolute timer
	r.wr(RDT, 3)
	r.send(frame(testMAC, testMAC, 0x0800, make([]byte, 50)))
	r.waitLine(true)
	if icr := r.rd(ICR); icr != icrRXDMT0 {
		t.Fatalf("ICR %#x after the first frame, want RXDMT0 alone (RXT0 waits for RDTR)", icr)
	}
	r.clock.Advance(100 * time.Microsecond)
	if l, _ := r.line.Level(); l {
		t.Fatal("RXT0 raised before the packet timer ran out")
	}
	r.clock.Advance(3 * time.Microsecond)
	if l, _ := r.line.Level(); !l {
		t.Fatal("RXT0 not raised when the packet timer ran out")
	}
	if icr := r.rd(ICR); icr != icrRXT0 {
		t.Fatalf("ICR %#x, want RXT0", icr)
	}
	if r.clock.Pending() != 0 {
		t.Errorf("%d timers left after the interrupt", r.clock.Pending())
	}
	// FPD fires a pending delay at once.
	r.wr(RDT, 4) // 3 free: the next frame crosses the threshold again
	r.send(frame(testMAC, testMAC, 0x0800, make([]byte, 50)))
	r.waitLine(true)
	if icr := r.rd(ICR); icr != icrRXDMT0 {
		t.Fatalf("ICR %#x after the second frame, want RXDMT0", icr)
	}
	r.wr(RDTR, 100|1<<31)
	if l, _ := r.line.Level(); !l {
		t.Fatal("RDTR.FPD did not flush the pending interrupt")
	}
}

func TestTransmitDelayTimers(t *testing.T) {
	r := newRig(t, true)
	r.up(rctlEN)
	r.wr(IMC, ^uint32(0))
	// TXQE marks the end of the device's pass; TXDW is under test.
	r.wr(IMS, icrTXDW|icrTXQE)
	r.wr(TIDV, 8)
	r.wr(TADV, 32)
	f := frame(testMAC, testMAC, 0x0800, make([]byte, 50))
	r.mem.WriteAt(f, txBufs)
	r.txLegacy(0, txBufs, len(f), 0x01|0x08|0x80) // EOP, RS, IDE
	r.wr(TDT, 1)
	r.recv()
	r.waitLine(true)
	if icr := r.rd(ICR); icr != icrTXQE {
		t.Fatalf("ICR %#x, want TXQE alone (TXDW waits for TIDV)", icr)
	}
	r.clock.Advance(8 * time.Microsecond)
	if l, _ := r.line.Level(); l {
		t.Fatal("TXDW raised before TIDV ran out")
	}
	r.clock.Advance(time.Microsecond)
	if l, _ := r.line.Level(); !l {
		t.Fatal("TXDW not raised after TIDV")
	}
}
