package ide_test

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/viovmm/vio/devices/ide"
)

const isoBlocks = 600 // 1.2 MB: a CD-ROM profile

// cdRig has a CD-ROM at the secondary master holding an image whose
// sectors carry image()'s pattern.
func cdRig(t *testing.T) *rig {
	be, path := image(t, isoBlocks*2048, true)
	r := newRig(t, [4]ide.Drive{2: {Kind: ide.CDROM, Backend: be}})
	r.path = path
	return r
}

// packet issues PACKET with cdb in PIO mode and returns the data, the
// final status and error register.
func (r *rig) packet(cdb []byte, bcl uint16) (data []byte, status, errReg byte) {
	r.t.Helper()
	r.out8(1, regDevice, 0xa0)
	r.out8(1, regFeature, 0)
	r.out8(1, regLBAM, byte(bcl))
	r.out8(1, regLBAH, byte(bcl>>8))
	r.out8(1, regCommand, 0xa0)
	if s, ir := r.altStatus(1), r.in8(1, regNsect); s&stDRQ == 0 || ir != 1 {
		r.t.Fatalf("PACKET: status %#x reason %#x, want DRQ and C/D", s, ir)
	}
	c := make([]byte, 12)
	copy(c, cdb)
	r.writeData(1, c)
	for i := 0; ; i++ {
		if i > 10000 {
			r.t.Fatal("the transfer does not end")
		}
		if !r.level() {
			r.t.Fatalf("no interrupt after %d chunks", i)
		}
		s := r.in8(1, regStatus)
		ir := r.in8(1, regNsect)
		if s&stDRQ == 0 {
			if ir != 3 {
				r.t.Fatalf("completion with interrupt reason %#x", ir)
			}
			return data, s, r.in8(1, regErr)
		}
		if ir != 2 {
			r.t.Fatalf("data phase with interrupt reason %#x", ir)
		}
		n := int(r.in8(1, regLBAM)) | int(r.in8(1, regLBAH))<<8
		if n == 0 || (bcl != 0 && n > int(bcl)) {
			r.t.Fatalf("byte count %d for limit %d", n, bcl)
		}
		data = append(data, r.readData(1, n)...)
	}
}

// sense issues REQUEST SENSE and returns key, ASC, ASCQ.
func (r *rig) sense() (byte, byte, byte) {
	r.t.Helper()
	d, s, _ := r.packet([]byte{0x03, 0, 0, 0, 18}, 0xfffe)
	if s&stERR != 0 || len(d) != 18 {
		r.t.Fatalf("REQUEST SENSE: status %#x, %d bytes", s, len(d))
	}
	return d[2] & 0xf, d[12], d[13]
}

func (r *rig) wantSense(what string, key, asc byte) {
	r.t.Helper()
	if k, a, _ := r.sense(); k != key || a != asc {
		r.t.Errorf("%s: sense %x/%02x, want %x/%02x", what, k, a, key, asc)
	}
}

func TestATAPIIdentify(t *testing.T) {
	r := cdRig(t)
	if m, h, s := r.in8(1, regLBAM), r.in8(1, regLBAH), r.in8(1, regStatus); m != 0x14 || h != 0xeb || s != 0 {
		t.Fatalf("signature %02x%02x status %#x", h, m, s)
	}
	r.out8(1, regDevice, 0xa0)
	r.out8(1, regCommand, 0xec)
	if s, e := r.in8(1, regStatus), r.in8(1, regErr); s&stERR == 0 || e != 0x04 || r.in8(1, regLBAH) != 0xeb {
		t.Fatalf("IDENTIFY DEVICE on ATAPI: status %#x error %#x", s, e)
	}
	r.out8(1, regCommand, 0xa1)
	r.in8(1, regStatus)
	id := r.readData(1, 512)
	w0 := binary.LittleEndian.Uint16(id)
	if w0>>14 != 2 || (w0>>8)&0x1f != 5 || w0&0x80 == 0 || w0&3 != 0 || (w0>>5)&3 == 1 {
		t.Fatalf("word 0 %#x", w0)
	}
	if got := identifyString(id, 27, 47); got != "VIO DVD-ROM" {
		t.Errorf("model %q", got)
	}
}

func TestATAPICommands(t *testing.T) {
	r := cdRig(t)
	d, s, _ := r.packet([]byte{0x12, 0, 0, 0, 36}, 0xfffe)
	if s&stERR != 0 || len(d) != 36 || d[0] != 5 || d[1]&0x80 == 0 {
		t.Fatalf("INQUIRY: status %#x % x", s, d)
	}
	if _, s, _ := r.packet([]byte{0x00}, 0); s&stERR != 0 {
		t.Fatalf("TEST UNIT READY: status %#x", s)
	}
	d, _, _ = r.packet([]byte{0x25}, 0xfffe)
	if last, bs := binary.BigEndian.Uint32(d), binary.BigEndian.Uint32(d[4:]); last != isoBlocks-1 || bs != 2048 {
		t.Fatalf("READ CAPACITY: %d blocks of %d", last+1, bs)
	}
	// READ(10) of 40 blocks with a byte count limit that splits blocks.
	d, s, _ = r.packet([]byte{0x28, 0, 0, 0, 0, 100, 0, 0, 40}, 63*1024)
	if s&stERR != 0 || len(d) != 40*2048 {
		t.Fatalf("READ(10): status %#x, %d bytes", s, len(d))
	}
	checkPattern(t, "READ(10)", d, 100*2048)
	d, _, _ = r.packet([]byte{0xa8, 0, 0, 0, 0x02, 0x50, 0, 0, 0, 2}, 0)
	checkPattern(t, "READ(12)", d, 0x250*2048)
	// Out of range.
	_, s, e := r.packet([]byte{0x28, 0, 0, 0, 0x02, 0x57, 0, 0, 2}, 0)
	if s&stERR == 0 || e>>4 != 5 {
		t.Fatalf("READ past the end: status %#x error %#x", s, e)
	}
	r.wantSense("READ past the end", 5, 0x21)
	// READ TOC: track 1 at 0 and the lead-out at the capacity, in LBA and MSF.
	d, _, _ = r.packet([]byte{0x43, 0, 0, 0, 0, 0, 0, 0, 100}, 0xfffe)
	if len(d) != 20 || d[2] != 1 || d[3] != 1 || d[6] != 1 || d[14] != 0xaa || binary.BigEndian.Uint32(d[16:]) != isoBlocks {
		t.Fatalf("READ TOC: % x", d)
	}
	d, _, _ = r.packet([]byte{0x43, 2, 0, 0, 0, 0, 0, 0, 100}, 0xfffe)
	if d[9] != 0 || d[10] != 2 || d[11] != 0 { // 00:02:00
		t.Fatalf("READ TOC MSF: % x", d)
	}
	d, _, _ = r.packet([]byte{0x43, 0, 1, 0, 0, 0, 0, 0, 12}, 0xfffe)
	if len(d) != 12 || d[2] != 1 || d[3] != 1 {
		t.Fatalf("READ TOC session info: % x", d)
	}
	// GET CONFIGURATION: CD-ROM profile current.
	d, _, _ = r.packet([]byte{0x46, 0, 0, 0, 0, 0, 0, 0x01, 0}, 0xfffe)
	if len(d) < 8 || binary.BigEndian.Uint16(d[6:]) != 0x0008 || int(binary.BigEndian.Uint32(d))+4 != len(d) {
		t.Fatalf("GET CONFIGURATION: % x", d)
	}
	d, _, _ = r.packet([]byte{0x46, 2, 0, 3, 0, 0, 0, 0, 64}, 0xfffe)
	if len(d) != 16 || d[9] != 3 || d[12]&0x08 == 0 {
		t.Fatalf("GET CONFIGURATION of feature 3 only: % x", d)
	}
	// MODE SENSE(10) capabilities page: no write capability.
	d, s, _ = r.packet([]byte{0x5a, 0, 0x2a, 0, 0, 0, 0, 0, 128}, 0xfffe)
	if s&stERR != 0 || len(d) < 8+22 || d[8] != 0x2a || d[11] != 0 {
		t.Fatalf("MODE SENSE 2A: % x", d)
	}
	if _, s, _ := r.packet([]byte{0x5a, 0, 0xc0 | 0x2a, 0, 0, 0, 0, 0, 128}, 0xfffe); s&stERR == 0 {
		t.Fatal("MODE SENSE of saved values succeeded")
	}
	r.wantSense("saved mode page", 5, 0x39)
	// Writes are refused as write-protected.
	for _, op := range []byte{0x2a, 0xaa, 0x0a} {
		if _, s, e := r.packet([]byte{op, 0, 0, 0, 0, 0, 0, 0, 1}, 0xfffe); s&stERR == 0 || e>>4 != 7 {
			t.Fatalf("write %#x: status %#x error %#x", op, s, e)
		}
		r.wantSense("write", 7, 0x27)
	}
	if _, s, _ := r.packet([]byte{0xee}, 0xfffe); s&stERR == 0 {
		t.Fatal("an unknown opcode succeeded")
	}
	r.wantSense("unknown opcode", 5, 0x20)
	// GET EVENT STATUS NOTIFICATION: media present, no event.
	d, _, _ = r.packet([]byte{0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8}, 0xfffe)
	if len(d) != 8 || d[4]&0xf != 0 || d[5] != 2 {
		t.Fatalf("GET EVENT STATUS: % x", d)
	}
	// An allocation length cuts the reply.
	d, _, _ = r.packet([]byte{0x12, 0, 0, 0, 5}, 0xfffe)
	if len(d) != 5 {
		t.Fatalf("INQUIRY with 5 bytes allocated returned %d", len(d))
	}
}

func TestATAPIMedia(t *testing.T) {
	r := cdRig(t)
	// Locked: the guest's eject is refused, and so is the host's.
	r.packet([]byte{0x1e, 0, 0, 0, 1}, 0)
	if _, s, _ := r.packet([]byte{0x1b, 0, 0, 0, 2}, 0); s&stERR == 0 {
		t.Fatal("eject of a locked medium succeeded")
	}
	r.wantSense("locked eject", 5, 0x53)
	if _, err := r.c.Eject(2, false); !errors.Is(err, ide.ErrLocked) {
		t.Fatalf("host eject of a locked medium: %v", err)
	}
	r.packet([]byte{0x1e, 0, 0, 0, 0}, 0)
	// Guest eject: not ready, medium not present, tray open; a load
	// puts the medium back with a unit attention.
	if _, s, _ := r.packet([]byte{0x1b, 0, 0, 0, 2}, 0); s&stERR != 0 {
		t.Fatal("eject failed")
	}
	d, _, _ := r.packet([]byte{0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8}, 0xfffe)
	if d[4] != 3 || d[5] != 1 {
		t.Fatalf("after eject, media event % x, want removal with the tray open", d)
	}
	if _, s, _ := r.packet([]byte{0x00}, 0); s&stERR == 0 {
		t.Fatal("TEST UNIT READY with no medium succeeded")
	}
	r.wantSense("no medium", 2, 0x3a)
	if _, s, _ := r.packet([]byte{0x28, 0, 0, 0, 0, 0, 0, 0, 1}, 0); s&stERR == 0 {
		t.Fatal("READ with no medium succeeded")
	}
	r.packet([]byte{0x1b, 0, 0, 0, 3}, 0)
	if _, s, _ := r.packet([]byte{0x00}, 0); s&stERR == 0 {
		t.Fatal("no unit attention after the medium came back")
	}
	r.wantSense("medium back", 6, 0x28)
	if _, s, _ := r.packet([]byte{0x00}, 0); s&stERR != 0 {
		t.Fatal("TEST UNIT READY after the unit attention failed")
	}
	// Host-side change: another image, seen as a new medium.
	be, _ := image(t, 2048*10, true)
	if _, err := r.c.Insert(2, be); err != nil {
		t.Fatal(err)
	}
	d, _, _ = r.packet([]byte{0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8}, 0xfffe)
	if d[4] != 2 || d[5] != 2 {
		t.Fatalf("media event after insert % x", d)
	}
	r.packet([]byte{0x00}, 0) // the unit attention
	d, _, _ = r.packet([]byte{0x25}, 0xfffe)
	if binary.BigEndian.Uint32(d) != 9 {
		t.Fatalf("capacity of the new medium: % x", d)
	}
	if _, err := r.c.Eject(0, false); !errors.Is(err, ide.ErrNoDrive) {
		t.Fatalf("eject of a position without a CD-ROM: %v", err)
	}
	// An empty drive from the start.
	r2 := newRig(t, [4]ide.Drive{2: {Kind: ide.CDROM}})
	if _, s, _ := r2.packet([]byte{0x25}, 0xfffe); s&stERR == 0 {
		t.Fatal("READ CAPACITY of an empty drive succeeded")
	}
	r2.wantSense("empty drive", 2, 0x3a)
}

func TestATAPIDMA(t *testing.T) {
	r := cdRig(t)
	r.prd([2]uint32{dataBuf, 0x3000}, [2]uint32{dataBuf + 0x8000, 0x1000})
	r.bmOut32(1, bmPRD, prdTable)
	r.bmOut8(1, bmCmd, 0x08)
	r.out8(1, regDevice, 0xa0)
	r.out8(1, regFeature, 0x01) // DMA
	r.out8(1, regCommand, 0xa0)
	r.writeData(1, []byte{0x28, 0, 0, 0, 0, 7, 0, 0, 8, 0, 0, 0})
	r.bmOut8(1, bmCmd, 0x09)
	deadline := 0
	for !r.level() {
		<-r.line.Changes()
		deadline++
		if deadline > 100 {
			t.Fatal("no interrupt")
		}
	}
	if bs := r.bmIn8(1, bmStatus); bs&0x07 != 0x04 {
		t.Fatalf("bus-master status %#x", bs)
	}
	r.bmOut8(1, bmCmd, 0)
	if s, ir := r.in8(1, regStatus), r.in8(1, regNsect); s&(stERR|stDRQ|stBSY) != 0 || ir != 3 {
		t.Fatalf("status %#x reason %#x", s, ir)
	}
	b := make([]byte, 0x3000)
	r.mem.ReadAt(b, dataBuf)
	checkPattern(t, "DMA PRD 0", b, 7*2048)
	b = make([]byte, 0x1000)
	r.mem.ReadAt(b, dataBuf+0x8000)
	checkPattern(t, "DMA PRD 1", b, 7*2048+0x3000)
	if r.c.Stats().ReadBytes != 8*2048 {
		t.Errorf("stats %+v", r.c.Stats())
	}
}
