package pci_test

import (
	"encoding/binary"
	"testing"

	"github.com/viovmm/vio/pci"
	"github.com/viovmm/vio/pci/pcitest"
)

// FuzzConfigWrites drives random configuration writes (through both access
// mechanisms), table writes and notifications at a function and checks
// that nothing panics and that the root's registrations stay consistent
// with what the function decodes.
func FuzzConfigWrites(f *testing.F) {
	f.Add([]byte{0x04, 0x02, 0x00, 0x06, 0x10, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0x10, 0x00, 0x00, 0x00, 0xe0, 0x04, 0x03, 0x00, 0x00, 0x00, 0x52, 0x00, 0x80})
	f.Add([]byte{0x04, 0x07, 0x04, 0x00, 0x00, 0x30, 0xff, 0xff, 0xff, 0xff, 0x44, 0xff})
	f.Fuzz(func(t *testing.T, ops []byte) {
		r := newRig(t)
		router := pcitest.NewRouter(1 << 16)
		fn := newTestFn(t, router)
		a := pci.BDF{Device: 1}
		must(t, r.root.Add(a, fn))
		for len(ops) >= 6 {
			op, off, v := ops[0], int(ops[1]), binary.LittleEndian.Uint32(ops[2:6])
			ops = ops[6:]
			n := []int{1, 2, 4}[int(op>>4)%3]
			off &^= n - 1
			switch op % 5 {
			case 0:
				r.cf8.Write(a, off, n, v)
			case 1:
				var b [8]byte
				binary.LittleEndian.PutUint32(b[:], v)
				r.mmio.Write(ecamBase+1<<15+uint64(off)+uint64(op>>6)<<8, b[:n])
			case 2:
				_ = r.cf8.Read(a, off, n)
			case 3:
				// MSI-X table write through BAR2 if mapped.
				for _, reg := range r.root.Mapped(fn) {
					if reg.BAR == 2 {
						var b [4]byte
						binary.LittleEndian.PutUint32(b[:], v)
						r.mmio.Write(reg.Addr+uint64(off)*8, b[:n])
					}
				}
			case 4:
				_ = fn.msix.Notify(int(op>>5) % 4)
			}
			mapped := r.root.Mapped(fn)
			for _, m := range mapped {
				found := false
				for _, w := range fn.Regions() {
					if w.BAR == m.BAR && w.Addr == m.Addr && w.Size == m.Size {
						found = true
					}
				}
				if !found {
					t.Fatalf("registered %+v not decoded by the function", m)
				}
			}
		}
	})
}
