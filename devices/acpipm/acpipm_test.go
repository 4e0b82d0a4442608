package acpipm_test

import (
	"encoding/binary"
	"testing"

	"github.com/viovmm/vio/bus"
	"github.com/viovmm/vio/devices/acpipm"
)

type counts struct{ off, reset int }

// line records the levels the device drives on the SCI.
type line struct{ levels []bool }

func (l *line) SetLevel(high bool) error { l.levels = append(l.levels, high); return nil }

func (l *line) high() bool { return len(l.levels) > 0 && l.levels[len(l.levels)-1] }

func newDev() (*acpipm.Device, *counts, *bus.Bus, *line) {
	c, l := &counts{}, &line{}
	d := acpipm.New(acpipm.Config{PowerOff: func() { c.off++ }, Reset: func() { c.reset++ }, SCI: l})
	b := bus.New("pio")
	if err := b.Register(acpipm.PortAddr, acpipm.Size, d); err != nil {
		panic(err)
	}
	return d, c, b, l
}

func out(b *bus.Bus, port uint16, v ...byte) bool { return b.Write(uint64(port), v) }

func out16(b *bus.Bus, port uint16, v uint16) bool {
	return b.Write(uint64(port), binary.LittleEndian.AppendUint16(nil, v))
}

func in(b *bus.Bus, port uint16) byte {
	v := []byte{0xee}
	if !b.Read(uint64(port), v) {
		return 0xee
	}
	return v[0]
}

func in16(b *bus.Bus, port uint16) uint16 {
	v := []byte{0xee, 0xee}
	if !b.Read(uint64(port), v) {
		return 0xeeee
	}
	return binary.LittleEndian.Uint16(v)
}

const (
	pm1Status  = acpipm.PM1EventPort
	pm1Enable  = acpipm.PM1EventPort + 2
	pm1Control = acpipm.PM1ControlPort
	gpeStatus  = acpipm.GPE0Port
	gpeEnable  = acpipm.GPE0Port + 1
)

// What ACPICA's legacy sleep path does for S5: clear WAK_STS, write
// SLP_TYP into PM1_CNT (keeping what it read, SCI_EN included), then
// SLP_TYP|SLP_EN, then poll WAK_STS.
func TestPowerOff(t *testing.T) {
	_, c, b, _ := newDev()
	out16(b, pm1Status, acpipm.WakeStatus)
	cnt := in16(b, pm1Control)
	if cnt != acpipm.SCIEnable {
		t.Fatalf("PM1_CNT reads %#x at power-on, want SCI_EN alone", cnt)
	}
	cnt |= acpipm.SleepTypeS5 << acpipm.SleepTypeShift
	out16(b, pm1Control, cnt)
	if c.off != 0 {
		t.Fatal("SLP_TYP without SLP_EN powered off")
	}
	out16(b, pm1Control, cnt|acpipm.SleepEnable)
	if c.off != 1 || c.reset != 0 {
		t.Fatalf("poweroff %d reset %d calls, want 1 and 0", c.off, c.reset)
	}
	if s := in16(b, pm1Status); s&acpipm.WakeStatus != 0 {
		t.Fatalf("PM1_STS %#x after S5: the guest would think it woke up", s)
	}
	if v := in16(b, pm1Control); v != cnt {
		t.Fatalf("PM1_CNT reads %#x, want %#x: SLP_TYP 5 and SCI_EN, without SLP_EN", v, cnt)
	}
}

// SCI_EN reads 1 whatever is written: there is no legacy mode.
func TestSCIEnable(t *testing.T) {
	_, _, b, _ := newDev()
	out16(b, pm1Control, 0)
	out16(b, pm1Control, acpipm.GlobalRelease|acpipm.BusMasterRLD)
	if v := in16(b, pm1Control); v != acpipm.SCIEnable|acpipm.BusMasterRLD {
		t.Fatalf("PM1_CNT reads %#x, want SCI_EN|BM_RLD (GBL_RLS is write-only)", v)
	}
}

// Sleep states other than S5 end at once with WAK_STS set, so a guest
// polling for it goes on; writing 1 clears it, writing 0s does not.
func TestOtherSleepStates(t *testing.T) {
	for typ := uint16(0); typ < 8; typ++ {
		if typ == acpipm.SleepTypeS5 {
			continue
		}
		_, c, b, l := newDev()
		out16(b, pm1Control, typ<<acpipm.SleepTypeShift|acpipm.SleepEnable)
		if c.off != 0 {
			t.Fatalf("SLP_TYP %d powered off", typ)
		}
		if s := in16(b, pm1Status); s != acpipm.WakeStatus {
			t.Fatalf("SLP_TYP %d: PM1_STS %#x, want WAK_STS", typ, s)
		}
		if l.high() {
			t.Fatal("WAK_STS raised the SCI; it has no enable")
		}
		out16(b, pm1Status, 0x7fff) // other bits do not clear it
		if s := in16(b, pm1Status); s != acpipm.WakeStatus {
			t.Fatalf("PM1_STS %#x after writing 0x7fff", s)
		}
		out16(b, pm1Status, acpipm.WakeStatus)
		if s := in16(b, pm1Status); s != 0 {
			t.Fatalf("PM1_STS %#x after clearing WAK_STS", s)
		}
	}
}

func TestReset(t *testing.T) {
	_, c, b, _ := newDev()
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

// The enables ACPICA checks by reading back (GBL_EN for the global lock,
// RTC_EN for rtc-cmos, PWRBTN_EN for the button driver) stick; undefined
// bits read 0.
func TestEnablesStick(t *testing.T) {
	_, _, b, l := newDev()
	out16(b, pm1Enable, 0xffff)
	if v := in16(b, pm1Enable); v != acpipm.PM1EnableBits {
		t.Fatalf("PM1_EN reads %#x after writing 0xffff, want %#x", v, acpipm.PM1EnableBits)
	}
	for _, bit := range []uint16{acpipm.GlobalStatus, acpipm.RTCStatus, acpipm.PowerButton} {
		out16(b, pm1Enable, bit)
		if v := in16(b, pm1Enable); v != bit {
			t.Fatalf("PM1_EN reads %#x after writing %#x", v, bit)
		}
	}
	out(b, gpeEnable, 0xff)
	if v := in(b, gpeEnable); v != 0xff {
		t.Fatalf("GPE0_EN reads %#x", v)
	}
	if l.high() {
		t.Fatal("enables alone raised the SCI")
	}
}

// TestPowerButtonSCI: a press sets PWRBTN_STS; the SCI is high exactly
// while PWRBTN_STS and PWRBTN_EN are both set; writing 1 clears the
// status, writing 0 or other bits does not.
func TestPowerButtonSCI(t *testing.T) {
	d, c, b, l := newDev()
	d.PressPowerButton()
	if s := in16(b, pm1Status); s != acpipm.PowerButton {
		t.Fatalf("PM1_STS %#x after a press", s)
	}
	if l.high() || d.SCILevel() {
		t.Fatal("SCI high with PWRBTN_EN clear")
	}
	out16(b, pm1Enable, acpipm.PowerButton)
	if !l.high() || !d.SCILevel() {
		t.Fatal("SCI low with PWRBTN_STS and PWRBTN_EN set")
	}
	out16(b, pm1Status, 0)
	out16(b, pm1Status, ^uint16(acpipm.PowerButton))
	if !l.high() || in16(b, pm1Status) != acpipm.PowerButton {
		t.Fatalf("PWRBTN_STS cleared by writing other bits (PM1_STS %#x, SCI %v)", in16(b, pm1Status), l.high())
	}
	out16(b, pm1Status, acpipm.PowerButton)
	if l.high() || in16(b, pm1Status) != 0 {
		t.Fatalf("after write-1-to-clear: PM1_STS %#x, SCI %v", in16(b, pm1Status), l.high())
	}
	// Two presses before the guest clears count once.
	d.PressPowerButton()
	d.PressPowerButton()
	if !l.high() {
		t.Fatal("no SCI for a press with PWRBTN_EN set")
	}
	out16(b, pm1Enable, 0) // disabling drops the line; the status stays
	if l.high() || in16(b, pm1Status) != acpipm.PowerButton {
		t.Fatalf("after disabling: PM1_STS %#x, SCI %v", in16(b, pm1Status), l.high())
	}
	if c.off != 0 || c.reset != 0 {
		t.Errorf("the button powered off (%d) or reset (%d) by itself", c.off, c.reset)
	}
	// Each edge of the line is driven once: low→high→low→high→low.
	want := []bool{true, false, true, false}
	if len(l.levels) != len(want) {
		t.Fatalf("SCI driven %v, want %v", l.levels, want)
	}
	for i := range want {
		if l.levels[i] != want[i] {
			t.Fatalf("SCI driven %v, want %v", l.levels, want)
		}
	}
}

// TestGPESCI: a GPE raises the SCI only when enabled; the SCI stays high
// until every enabled status bit, fixed or GPE, is clear.
func TestGPESCI(t *testing.T) {
	d, _, b, l := newDev()
	d.RaiseGPE(1)
	if in(b, gpeStatus) != 1<<1 || l.high() {
		t.Fatalf("GPE0_STS %#x, SCI %v: want bit 1 and a low SCI (GPE disabled)", in(b, gpeStatus), l.high())
	}
	out(b, gpeEnable, 1<<0) // another GPE's enable
	if l.high() {
		t.Fatal("SCI high for a GPE that is not enabled")
	}
	out(b, gpeEnable, 1<<1)
	if !l.high() {
		t.Fatal("SCI low with GPE 1 raised and enabled")
	}
	out16(b, pm1Enable, acpipm.PowerButton)
	d.PressPowerButton()
	out(b, gpeStatus, 1<<1)
	if in(b, gpeStatus) != 0 || !l.high() {
		t.Fatalf("GPE0_STS %#x, SCI %v: want GPE 1 clear and the SCI still high for the button", in(b, gpeStatus), l.high())
	}
	out16(b, pm1Status, acpipm.PowerButton)
	if l.high() {
		t.Fatal("SCI high with nothing pending")
	}
	for _, n := range []int{-1, 8} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("RaiseGPE(%d) accepted", n)
				}
			}()
			d.RaiseGPE(n)
		}()
	}
}

func TestNilCallbacks(t *testing.T) {
	d := acpipm.New(acpipm.Config{})
	d.Write(acpipm.RegPM1Control, binary.LittleEndian.AppendUint16(nil, acpipm.SleepTypeS5<<acpipm.SleepTypeShift|acpipm.SleepEnable))
	d.Write(acpipm.RegReset, []byte{acpipm.ResetValue})
	d.PressPowerButton()
	d.Write(acpipm.RegPM1Enable, []byte{0, 1})
	if !d.SCILevel() {
		t.Fatal("SCI level not tracked without a line")
	}
}

// model is what FuzzDevice checks the device against: the registers as
// the ACPI specification describes them.
type model struct {
	sts, en, cnt uint16
	gsts, gen    uint8
	off, reset   int
}

func (m *model) write(reg uint64, v byte) {
	switch reg {
	case 0, 1:
		m.sts &^= uint16(v) << (8 * reg)
	case 2, 3:
		sh := 8 * (reg - 2)
		m.en = m.en&^(0xff<<sh) | uint16(v)<<sh&acpipm.PM1EnableBits
	case 4:
		m.cnt = m.cnt&0xff00 | uint16(v)&acpipm.BusMasterRLD
	case 5:
		m.cnt = m.cnt&0xff | uint16(v)<<8&acpipm.SleepTypeMask
		if v&(acpipm.SleepEnable>>8) != 0 {
			if (v>>2)&7 == acpipm.SleepTypeS5 {
				m.off++
			} else {
				m.sts |= acpipm.WakeStatus
			}
		}
	case 6:
		if v == acpipm.ResetValue {
			m.reset++
		}
	case 8:
		m.gsts &^= v
	case 9:
		m.gen = v
	}
}

func (m *model) regs() []byte {
	c := m.cnt | acpipm.SCIEnable
	return []byte{byte(m.sts), byte(m.sts >> 8), byte(m.en), byte(m.en >> 8), byte(c), byte(c >> 8), 0, 0, m.gsts, m.gen}
}

func (m *model) sci() bool {
	const events = acpipm.TimerStatus | acpipm.GlobalStatus | acpipm.PowerButton | acpipm.SleepButton | acpipm.RTCStatus
	return m.sts&m.en&events != 0 || m.gsts&m.gen != 0
}

// FuzzDevice drives the registers with arbitrary accesses, presses and
// GPEs, and checks them, the callbacks and the SCI's level against the
// model after every step.
func FuzzDevice(f *testing.F) {
	f.Add([]byte{4, 2, 0, 0x34, 0, 2, 0x80, 0, 6, 1, 0x01})
	f.Add([]byte{2, 2, 0, 1, 0xf0, 0, 0, 2, 0, 1, 9, 1, 2, 0xf1, 1, 8, 1, 2})
	f.Add([]byte{0xf0, 0, 2, 2, 0x20, 0x05, 0, 4, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, ops []byte) {
		d, c, _, l := newDev()
		var m model
		for len(ops) >= 2 {
			op, arg := ops[0], ops[1]
			ops = ops[2:]
			switch {
			case op == 0xf0:
				d.PressPowerButton()
				m.sts |= acpipm.PowerButton
			case op == 0xf1:
				d.RaiseGPE(int(arg % 8))
				m.gsts |= 1 << (arg % 8)
			default:
				off, n := uint64(op%acpipm.Size), int(arg%5)
				if n == 0 || off+uint64(n) > acpipm.Size || len(ops) < n {
					got := make([]byte, acpipm.Size-off)
					d.Read(off, got)
					want := m.regs()[off:]
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
					m.write(off+uint64(i), v)
				}
			}
			if c.off != m.off || c.reset != m.reset {
				t.Fatalf("poweroff %d reset %d, model %d %d", c.off, c.reset, m.off, m.reset)
			}
			if l.high() != m.sci() || d.SCILevel() != m.sci() {
				t.Fatalf("SCI %v (device says %v), model %v", l.high(), d.SCILevel(), m.sci())
			}
		}
		for i := 1; i < len(l.levels); i++ {
			if l.levels[i] == l.levels[i-1] {
				t.Fatalf("SCI driven to the same level twice in a row: %v", l.levels)
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
