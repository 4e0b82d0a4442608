package uart16550_test

import (
	"io"
	"testing"

	u8250 "github.com/viovmm/vio/devices/uart16550"
)

// FuzzRegisters runs arbitrary register programs, interleaved with host
// input, and checks invariants that hold for any guest: no panic, the IRQ
// line is only high when OUT2 gates it on outside loopback and an
// interrupt is really pending, and host input never overruns the FIFO.
func FuzzRegisters(f *testing.F) {
	f.Add([]byte{0x12, 0x02, 0xc1, 0x14, 0x08, 0x11, 0x0f, 0x80, 0x05, 0x25, 0x60})
	f.Add([]byte{0x14, 0x18, 0x10, 0x41, 0x10, 0x42, 0x05, 0x00, 0x06, 0x02})
	f.Add([]byte{0x13, 0x80, 0x10, 0x01, 0x11, 0x00, 0x13, 0x03, 0xff, 0x07})
	f.Fuzz(func(t *testing.T, prog []byte) {
		l := &line{}
		u := u8250.New(io.Discard, l)
		looped := false
		in := func(off uint64) uint8 {
			var b [1]byte
			u.Read(off, b[:])
			return b[0]
		}
		for i := 0; i < len(prog); i++ {
			op := prog[i]
			switch {
			case op&0xf0 == 0x10 && i+1 < len(prog): // write
				off := uint64(op & 7)
				v := prog[i+1]
				i++
				if off == u8250.RegMCR && v&u8250.MCRLoop != 0 {
					looped = true
				}
				u.Write(off, []byte{v})
			case op&0xf0 == 0x20: // host input
				n := int(op & 0x0f)
				if got := u.Enqueue(make([]byte, n)); got > n {
					t.Fatalf("Enqueue took %d of %d", got, n)
				}
			case op == 0xff:
				var w [4]byte
				u.Read(0, w[:]) // a wide access must be harmless
				u.Write(0, w[:])
			default:
				in(uint64(op & 7))
			}
			mcr := in(u8250.RegMCR)
			gated := mcr&u8250.MCROUT2 != 0 && mcr&u8250.MCRLoop == 0
			if l.get() && !gated {
				t.Fatalf("line high with MCR %#x", mcr)
			}
			if gated {
				high := l.get()
				if pending := in(u8250.RegIIR)&u8250.IIRNone == 0; pending != high {
					t.Fatalf("line high=%v, IIR pending=%v", high, pending)
				}
			}
			if !looped && in(u8250.RegLSR)&u8250.LSROverrun != 0 {
				t.Fatal("overrun without loopback")
			}
		}
	})
}
