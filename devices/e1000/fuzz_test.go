package e1000_test

import (
	"encoding/binary"
	"testing"

	"github.com/viovmm/vio/devices/e1000"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/netdev/nettest"
	"github.com/viovmm/vio/pci/pcitest"
)

// FuzzRegisters applies a sequence of register accesses, through both
// BARs and of every width, with the workers running.
func FuzzRegisters(f *testing.F) {
	// Bring-up as the driver does it, then a transmit and a receive
	// ring over small memory.
	var seed []byte
	op := func(kind byte, off uint32, v uint32) {
		seed = append(seed, kind|0x20) // 4-byte accesses
		seed = binary.LittleEndian.AppendUint32(seed, off)
		seed = binary.LittleEndian.AppendUint32(seed, v)
	}
	op(1, 0, 1<<26)
	op(1, 0xd0, 0x9d)
	op(1, 0x3800, 0x1000)
	op(1, 0x3808, 128)
	op(1, 0x400, 2)
	op(1, 0x3818, 3)
	op(1, 0x2800, 0x2000)
	op(1, 0x2808, 256)
	op(1, 0x2818, 9)
	op(1, 0x100, 0x801a)
	op(0, 0xc0, 0)
	op(2, 0, 0x10)
	op(3, 4, 0x47)
	f.Add(seed)
	f.Fuzz(func(t *testing.T, ops []byte) {
		mem, err := memory.New([]memory.Layout{{GPA: 0, Size: 64 << 10}})
		if err != nil {
			t.Fatal(err)
		}
		defer mem.Close()
		a, b := nettest.Pair(16)
		defer b.Close()
		d, err := e1000.New(a, mem, e1000.Config{MAC: []byte{2, 0, 0, 0, 0, 1}})
		if err != nil {
			t.Fatal(err)
		}
		line := pcitest.NewLine()
		d.SetINTxLine(line)
		bar0, _ := d.BAR(0)
		bar1, _ := d.BAR(1)
		for len(ops) >= 9 && len(ops) < 9*512 {
			kind, off, v := ops[0], binary.LittleEndian.Uint32(ops[1:]), binary.LittleEndian.Uint32(ops[5:])
			ops = ops[9:]
			width := 1 << (kind >> 4 & 3) // 1, 2, 4 or 8 bytes
			var b8 [8]byte
			binary.LittleEndian.PutUint32(b8[:], v)
			buf := b8[:width]
			switch kind & 3 {
			case 0:
				bar0.Device.Read(uint64(off%e1000.MMIOSize), buf)
			case 1:
				bar0.Device.Write(uint64(off%e1000.MMIOSize), buf)
			case 2:
				bar1.Device.Read(uint64(off%e1000.IOSize), buf)
			case 3:
				bar1.Device.Write(uint64(off%e1000.IOSize), buf)
			}
		}
		d.Close()
		a.Close()
		if high, _ := line.Level(); high {
			t.Error("INTx still high after Close")
		}
	})
}
