package acpipm_test

import (
	"testing"

	"github.com/viovmm/vio/bus"
	"github.com/viovmm/vio/devices/acpipm"
)

type counts struct{ off, reset int }

func newDev() (*acpipm.Device, *counts, *bus.Bus) {
	c := &counts{}
	d := acpipm.New(acpipm.Config{PowerOff: func() { c.off++ }, Reset: func() { c.reset++ }})
	b := bus.New("pio")
	if err := b.Register(acpipm.PortAddr, acpipm.Size, d); err != nil {
		panic(err)
	}
	return d, c, b
}

func out(b *bus.Bus, port uint16, v ...byte) bool { return b.Write(uint64(port), v) }

func in(b *bus.Bus, port uint16) byte {
	v := []byte{0xee}
	if !b.Read(uint64(port), v) {
		return 0xee
	}
	return v[0]
}

// What Linux's acpi_hw_extended_sleep does for S5: clear WAK_STS, write
// SLP_TYP|SLP_EN, then poll WAK_STS.
func TestPowerOff(t *testing.T) {
	_, c, b := newDev()
	out(b, acpipm.SleepStatusPort, acpipm.WakeStatus)
	if c.off != 0 {
		t.Fatal("clearing WAK_STS powered off")
	}
	out(b, acpipm.SleepControlPort, acpipm.SleepTypeS5<<acpipm.SleepTypeShift|acpipm.SleepEnable)
	if c.off != 1 || c.reset != 0 {
		t.Fatalf("poweroff %d reset %d calls, want 1 and 0", c.off, c.reset)
	}
	if s := in(b, acpipm.SleepStatusPort); s&acpipm.WakeStatus != 0 {
		t.Fatalf("status %#x after S5: the guest would think it woke up", s)
	}
	if v := in(b, acpipm.SleepControlPort); v != acpipm.SleepTypeS5<<acpipm.SleepTypeShift {
		t.Fatalf("control reads %#x, want SLP_TYP 5 without SLP_EN", v)
	}
}

func TestSleepWithoutEnable(t *testing.T) {
	_, c, b := newDev()
	out(b, acpipm.SleepControlPort, acpipm.SleepTypeS5<<acpipm.SleepTypeShift)
	if c.off != 0 {
		t.Fatal("SLP_TYP without SLP_EN powered off")
	}
}

// Sleep states other than S5 end at once with WAK_STS set, so a guest
// polling for it goes on; writing 1 clears it.
func TestOtherSleepStates(t *testing.T) {
	for typ := byte(0); typ < 8; typ++ {
		if typ == acpipm.SleepTypeS5 {
			continue
		}
		_, c, b := newDev()
		out(b, acpipm.SleepControlPort, typ<<acpipm.SleepTypeShift|acpipm.SleepEnable)
		if c.off != 0 {
			t.Fatalf("SLP_TYP %d powered off", typ)
		}
		if s := in(b, acpipm.SleepStatusPort); s != acpipm.WakeStatus {
			t.Fatalf("SLP_TYP %d: status %#x, want WAK_STS", typ, s)
		}
		out(b, acpipm.SleepStatusPort, 0x7f) // other bits do not clear it
		if s := in(b, acpipm.SleepStatusPort); s != acpipm.WakeStatus {
			t.Fatalf("status %#x after writing 0x7f", s)
		}
		out(b, acpipm.SleepStatusPort, acpipm.WakeStatus)
		if s := in(b, acpipm.SleepStatusPort); s != 0 {
			t.Fatalf("status %#x after clearing WAK_STS", s)
		}
	}
}

func TestReset(t *testing.T) {
	_, c, b := newDev()
	for v := 0; v < 256; v++ {
		out(b, acpipm.ResetPort, byte(v))
	}
	if c.reset != 1 || c.off != 0 {
		t.Fatalf("256 values written: %d resets, %d poweroffs, want 1 and 0", c.reset, c.off)
	}
	if v := in(b, acpipm.ResetPort); v != 0 {
		t.Fatalf("reset register reads %#x", v)
	}
}

// A 16-bit write at the control port also writes the status port, the
// way the ISA bus splits it.
func TestWideAccess(t *testing.T) {
	_, c, b := newDev()
	out(b, acpipm.SleepControlPort, 1<<acpipm.SleepTypeShift|acpipm.SleepEnable, 0) // S1, then status write of 0
	v := []byte{0, 0, 0}
	if !b.Read(acpipm.PortAddr, v) {
		t.Fatal("3-byte read unclaimed")
	}
	if v[0] != 1<<acpipm.SleepTypeShift || v[1] != acpipm.WakeStatus || v[2] != 0 {
		t.Fatalf("registers read % x", v)
	}
	out(b, acpipm.SleepStatusPort, acpipm.WakeStatus, acpipm.ResetValue) // clears WAK_STS, resets
	if c.reset != 1 || in(b, acpipm.SleepStatusPort) != 0 {
		t.Fatalf("reset %d, status %#x", c.reset, in(b, acpipm.SleepStatusPort))
	}
}

func TestNilCallbacks(t *testing.T) {
	d := acpipm.New(acpipm.Config{})
	d.Write(acpipm.RegSleepControl, []byte{acpipm.SleepTypeS5<<acpipm.SleepTypeShift | acpipm.SleepEnable})
	d.Write(acpipm.RegReset, []byte{acpipm.ResetValue})
}

// FuzzDevice drives the registers with arbitrary accesses and checks them
// against a model of the four registers (the button's reads 0: nobody
// presses it here).
func FuzzDevice(f *testing.F) {
	f.Add([]byte{0, 1, 0x34, 1, 1, 0x80, 2, 1, 0x01})
	f.Add([]byte{0, 2, 0x24, 0x80, 1, 3, 0xff, 0xff, 0xff})
	f.Add([]byte{2, 1, 0x02, 0, 4, 0x34, 0, 0, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		d, c, _ := newDev()
		var wantOff, wantReset int
		var typ, status byte
		for len(ops) >= 2 {
			off, n := uint64(ops[0]%acpipm.Size), int(ops[1]%5)
			ops = ops[2:]
			if n == 0 || off+uint64(n) > acpipm.Size || len(ops) < n {
				// a read of what fits, checked against the model
				k := acpipm.Size - int(off)
				got := make([]byte, k)
				d.Read(off, got)
				want := []byte{typ << 2, status, 0, 0}[off:]
				for i := range got {
					if got[i] != want[i] {
						t.Fatalf("register %d reads %#x, model %#x", int(off)+i, got[i], want[i])
					}
				}
				continue
			}
			data := ops[:n]
			ops = ops[n:]
			d.Write(off, data)
			for i, v := range data {
				switch off + uint64(i) {
				case 0:
					typ = v >> 2 & 7
					if v&0x20 != 0 {
						if typ == 5 {
							wantOff++
						} else {
							status |= 0x80
						}
					}
				case 1:
					status &^= v & 0x80
				case 2:
					if v == 1 {
						wantReset++
					}
				}
			}
			if c.off != wantOff || c.reset != wantReset {
				t.Fatalf("poweroff %d reset %d, model %d %d", c.off, c.reset, wantOff, wantReset)
			}
		}
	})
}

func TestPvPanic(t *testing.T) {
	var got []uint8
	p := acpipm.NewPvPanic(func(ev uint8) { got = append(got, ev) })
	b := bus.New("pio")
	if err := b.Register(acpipm.PvPanicPort, acpipm.PvPanicSize, p); err != nil {
		t.Fatal(err)
	}
	if v := in(b, acpipm.PvPanicPort); v != 0x3 {
		t.Fatalf("pvpanic reads %#x, want PANICKED|CRASH_LOADED", v)
	}
	for _, v := range []byte{0, acpipm.PvPanicPanicked, 0x80, acpipm.PvPanicCrashLoaded, 0xff} {
		out(b, acpipm.PvPanicPort, v)
	}
	if len(got) != 3 || got[0] != 1 || got[1] != 2 || got[2] != 3 {
		t.Fatalf("events %v, want [1 2 3]", got)
	}
	// A wide read returns the bitmap in the low byte only.
	w := []byte{0xaa, 0xaa, 0xaa, 0xaa}
	p.Read(0, w)
	if w[0] != 3 || w[1]|w[2]|w[3] != 0 {
		t.Fatalf("wide read % x", w)
	}
	acpipm.NewPvPanic(nil).Write(0, []byte{1}) // no callback: no crash
}

// TestPowerButton: a press reads 1 once, then 0; presses before the read
// count once; a write changes nothing.
func TestPowerButton(t *testing.T) {
	d, c, b := newDev()
	if v := in(b, acpipm.ButtonPort); v != 0 {
		t.Fatalf("button status %#x before any press", v)
	}
	d.PressPowerButton()
	d.PressPowerButton()
	out(b, acpipm.ButtonPort, 0)
	if v := in(b, acpipm.ButtonPort); v != 1 {
		t.Errorf("button status %#x after a press, want 1", v)
	}
	if v := in(b, acpipm.ButtonPort); v != 0 {
		t.Errorf("button status %#x read twice, want 0", v)
	}
	if c.off != 0 || c.reset != 0 {
		t.Errorf("the button powered off (%d) or reset (%d) by itself", c.off, c.reset)
	}
	d.PressPowerButton()
	s := d.SaveState()
	other := acpipm.New(acpipm.Config{})
	if err := other.RestoreState(s); err != nil {
		t.Fatal(err)
	}
	if !s.ButtonPressed || !other.SaveState().ButtonPressed {
		t.Error("a pending press did not survive save and restore")
	}
}
