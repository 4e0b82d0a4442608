package pcihp_test

import (
	"encoding/binary"
	"slices"
	"testing"

	"github.com/viovmm/vio/devices/pcihp"
)

type recorder struct {
	notifies int
	ejects   []int
}

func newDev() (*pcihp.Device, *recorder) {
	r := &recorder{}
	return pcihp.New(pcihp.Config{
		Notify: func() { r.notifies++ },
		Eject:  func(s int) { r.ejects = append(r.ejects, s) },
	}), r
}

func read32(d *pcihp.Device, off uint64) uint32 {
	var b [4]byte
	d.Read(off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

func write32(d *pcihp.Device, off uint64, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	d.Write(off, b[:])
}

// TestPlugAndEject walks a slot through what the guest's AML does:
// read PCIU/PCID after each notification, then write B0EJ from _EJ0.
func TestPlugAndEject(t *testing.T) {
	d, r := newDev()
	if err := d.Plug(3); err != nil {
		t.Fatal(err)
	}
	if err := d.Plug(31); err != nil {
		t.Fatal(err)
	}
	if r.notifies != 2 {
		t.Fatalf("%d notifications after two plugs, want 2", r.notifies)
	}
	if got := read32(d, pcihp.RegUp); got != 1<<3|1<<31 {
		t.Fatalf("PCIU %#x, want slots 3 and 31", got)
	}
	if got := read32(d, pcihp.RegUp); got != 0 {
		t.Fatalf("PCIU %#x on the second read: reading must clear it", got)
	}
	if got := read32(d, pcihp.RegDown); got != 0 {
		t.Fatalf("PCID %#x with no eject request", got)
	}
	if err := d.RequestEject(3); err != nil {
		t.Fatal(err)
	}
	if got := read32(d, pcihp.RegDown); got != 1<<3 {
		t.Fatalf("PCID %#x, want slot 3", got)
	}
	if len(r.ejects) != 0 {
		t.Fatalf("ejected %v before the guest wrote B0EJ", r.ejects)
	}
	write32(d, pcihp.RegEject, 1<<3)
	if !slices.Equal(r.ejects, []int{3}) {
		t.Fatalf("ejects %v, want [3]", r.ejects)
	}
	// B0EJ is write-only and reading it has no effect.
	if got := read32(d, pcihp.RegEject); got != 0 {
		t.Fatalf("B0EJ reads %#x", got)
	}
	st := d.Stats()
	if st.Plugs != 2 || st.EjectRequests != 1 || st.Ejects != 1 || st.Notifies != 3 || st.BadAccesses != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestPlugWithdrawsEject: a slot replugged before the guest looked at
// the eject request is not ejected (and vice versa).
func TestPlugWithdrawsEject(t *testing.T) {
	d, _ := newDev()
	d.RequestEject(5)
	d.Plug(5)
	if up, down := read32(d, pcihp.RegUp), read32(d, pcihp.RegDown); up != 1<<5 || down != 0 {
		t.Fatalf("PCIU %#x PCID %#x, want only the plug", up, down)
	}
	d.Plug(6)
	d.RequestEject(6)
	if up, down := read32(d, pcihp.RegUp), read32(d, pcihp.RegDown); up != 0 || down != 1<<6 {
		t.Fatalf("PCIU %#x PCID %#x, want only the eject request", up, down)
	}
}

func TestBadSlotsAndAccesses(t *testing.T) {
	d, r := newDev()
	for _, s := range []int{-1, 0, 32, 1 << 20} {
		if d.Plug(s) == nil || d.RequestEject(s) == nil {
			t.Errorf("slot %d accepted", s)
		}
	}
	if r.notifies != 0 {
		t.Errorf("%d notifications for refused slots", r.notifies)
	}
	d.Plug(2)
	// Narrow reads and reads at odd offsets neither see nor clear PCIU.
	var b [2]byte
	d.Read(pcihp.RegUp, b[:])
	var w [4]byte
	d.Read(2, w[:])
	d.Read(1<<40, w[:])
	if b != [2]byte{} || w != [4]byte{} {
		t.Errorf("bad reads returned % x and % x", b, w)
	}
	if got := read32(d, pcihp.RegUp); got != 1<<2 {
		t.Errorf("PCIU %#x after bad reads, want slot 2 still pending", got)
	}
	// Writes elsewhere, narrow writes, and bit 0 eject nothing.
	write32(d, pcihp.RegUp, ^uint32(0))
	d.Write(pcihp.RegEject, []byte{0xff, 0xff})
	write32(d, pcihp.RegEject, 1)
	if len(r.ejects) != 0 {
		t.Errorf("ejected %v", r.ejects)
	}
	if st := d.Stats(); st.BadAccesses != 5 {
		t.Errorf("%d bad accesses counted, want 5", st.BadAccesses)
	}
}

// FuzzRegisters drives the block with arbitrary guest accesses: no
// panic, only slots 1-31 are ever ejected, and each read-clear register
// never shows a bit the host did not set.
func FuzzRegisters(f *testing.F) {
	f.Add([]byte{0, 0, 4, 0xff, 0xff, 0xff, 0xff, 8, 4, 0x08, 0, 0, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		var plugged uint32
		d := pcihp.New(pcihp.Config{Eject: func(s int) {
			if s < 1 || s > 31 {
				t.Fatalf("ejected slot %d", s)
			}
		}})
		for len(ops) >= 3 {
			op, off, n := ops[0], uint64(ops[1]), int(ops[2]%9)
			ops = ops[3:]
			switch op % 4 {
			case 0:
				s := int(off % 40)
				if d.Plug(s) == nil {
					plugged |= 1 << s
				}
			case 1:
				s := int(off % 40)
				if d.RequestEject(s) == nil {
					plugged |= 1 << s
				}
			case 2:
				buf := make([]byte, n)
				d.Read(off, buf)
				if n == 4 && binary.LittleEndian.Uint32(buf)&^plugged != 0 {
					t.Fatalf("read %#x at %#x: bits the host never set (%#x)", buf, off, plugged)
				}
			case 3:
				buf := make([]byte, n)
				copy(buf, ops)
				d.Write(off, buf)
			}
		}
	})
}
