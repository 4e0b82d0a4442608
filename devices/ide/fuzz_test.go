package ide_test

import (
	"encoding/binary"
	"testing"

	"github.com/viovmm/vio/bus"
	"github.com/viovmm/vio/devices/ide"
	"github.com/viovmm/vio/pci/pcitest"
)

// FuzzRegisters drives a controller with a disk and a CD-ROM through
// arbitrary sequences of register accesses (command and control blocks of
// both channels, the bus-master registers, configuration space), with
// guest memory full of the input so PRD tables and packets are hostile
// too. It must never panic, and Close must return: no worker may hang.
func FuzzRegisters(f *testing.F) {
	disk, _ := image(f, 64<<10, false)
	iso, _ := image(f, 20*2048, true)
	mem := newMemory(f)
	// A DMA read of 8 sectors through a PRD at 0x1000 pointing at 0x2000.
	f.Add([]byte{
		0x10, 0x00, 0x10, 0x20, 0, 0, 0x80, 0x00, // a PRD entry written into memory below
		2, 6, 0xe0, 2, 2, 8, 2, 3, 0, 2, 7, 0xc8,
		4, 4, 0x00, 4, 5, 0x10, 4, 0, 0x09,
	})
	// PACKET with INQUIRY on the secondary master, read back.
	f.Add([]byte{3, 6, 0xa0, 3, 4, 0xff, 3, 7, 0xa0, 1, 0, 0x12, 1, 0, 0, 1, 0, 0x24, 1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	// SRST in the middle of a PIO write.
	f.Add([]byte{2, 2, 4, 2, 7, 0x30, 0, 0, 1, 5, 2, 4, 5, 2, 0, 2, 7, 0xec, 0, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		// Guest memory: the input repeated over the first 64 KiB, so
		// that PRD tables anywhere there are the fuzzer's.
		if len(in) > 0 {
			page := make([]byte, 64<<10)
			for i := range page {
				page[i] = in[i%len(in)]
			}
			mem.WriteAt(page, 0)
		}
		c, err := ide.New(mem, ide.Config{Drives: [4]ide.Drive{
			{Kind: ide.Disk, Backend: disk}, 2: {Kind: ide.CDROM, Backend: iso},
		}})
		if err != nil {
			t.Fatal(err)
		}
		c.SetINTxLine(pcitest.NewLine())
		var devs [5]bus.Device
		for i := range devs {
			b, _ := c.BAR(i)
			devs[i] = b.Device
		}
		var buf [4]byte
		for i := 0; i+2 < len(in); i += 3 {
			op, off, v := in[i], uint64(in[i+1]), in[i+2]
			target := op % 6
			write := op&0x80 != 0
			size := []int{1, 2, 4}[(op>>3)%3]
			binary.LittleEndian.PutUint32(buf[:], uint32(v)*0x01010101)
			switch target {
			case 0, 1, 2, 3, 4: // mostly data-port PIO when target is 0
				d := devs[[]int{0, 0, 2, 1, 4}[target]]
				var limit uint64 = 8
				if target == 3 {
					limit = 4
				}
				if target == 4 {
					limit = 16
				}
				if target == 0 {
					off = 0
				}
				off %= limit
				if off+uint64(size) > limit {
					size = 1
				}
				if write || target == 2 {
					d.Write(off, buf[:size])
				} else {
					d.Read(off, buf[:size])
				}
				if target == 2 && !write {
					d.Read(7, buf[:1])
				}
			case 5:
				o := int(off) % 256
				if write {
					c.WriteConfig(o, buf[:1])
				} else {
					c.ReadConfig(o, buf[:1])
				}
			}
		}
		c.Close()
	})
}

// FuzzATAPIPacket sends one arbitrary command packet with an arbitrary
// byte count limit to a CD-ROM and drains its PIO reply: the transfer must
// end (bounded), with the completion reason, no DRQ, and data only within
// what the medium or the reply can hold.
func FuzzATAPIPacket(f *testing.F) {
	iso, _ := image(f, 20*2048, true)
	mem := newMemory(f)
	for _, cdb := range [][]byte{
		{0x12, 0, 0, 0, 36}, {0x03, 0, 0, 0, 18}, {0x25}, {0x28, 0, 0, 0, 0, 1, 0, 0, 4},
		{0xa8, 0, 0, 0, 0, 0, 0, 0, 0, 19}, {0x43, 2, 2, 0, 0, 0, 1, 0xff, 0xff}, {0x46, 2, 0, 0x10, 0, 0, 0, 0xff, 0xff},
		{0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8}, {0x5a, 0, 0x3f, 0, 0, 0, 0, 0xff, 0xff}, {0x1b, 0, 0, 0, 2}, {0x51, 0, 0, 0, 0, 0, 0, 0, 34},
		{0xbd, 0, 0, 0, 0, 0, 0, 0, 0, 8}, {0x2a, 0, 0, 0, 0, 0, 0, 0, 1},
	} {
		b := make([]byte, 14)
		copy(b, cdb)
		b[12], b[13] = 0xfe, 0x7f
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 14 {
			return
		}
		c, err := ide.New(mem, ide.Config{Drives: [4]ide.Drive{{Kind: ide.CDROM, Backend: iso}}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		line := pcitest.NewLine()
		c.SetINTxLine(line)
		b0, _ := c.BAR(0)
		cmd := b0.Device
		rd := func(off uint64) byte {
			var b [1]byte
			cmd.Read(off, b[:])
			return b[0]
		}
		cmd.Write(6, []byte{0xa0})
		cmd.Write(1, []byte{0})
		cmd.Write(4, []byte{in[12]})
		cmd.Write(5, []byte{in[13]})
		cmd.Write(7, []byte{0xa0})
		for i := 0; i < 12; i += 2 {
			cmd.Write(0, in[i:i+2])
		}
		total := 0
		var w [2]byte
		for chunks := 0; ; chunks++ {
			if chunks > 60000 { // 2-byte chunks of the largest reply
				t.Fatal("the reply does not end")
			}
			s, ir := rd(7), rd(2)
			if s&0x80 != 0 {
				t.Fatalf("busy after a PIO packet: %#x", s)
			}
			if s&0x08 == 0 {
				if ir != 3 {
					t.Fatalf("completion with reason %#x", ir)
				}
				break
			}
			n := int(rd(4)) | int(rd(5))<<8
			if n == 0 {
				t.Fatal("DRQ with a zero byte count")
			}
			for j := 0; j < n; j += 2 {
				cmd.Read(0, w[:])
			}
			total += n
		}
		if total > 20*2048+0x10000 {
			t.Fatalf("%d bytes from a 40 KiB medium", total)
		}
	})
}
