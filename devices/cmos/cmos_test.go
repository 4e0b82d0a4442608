package cmos_test

import (
	"sync"
	"testing"
	"time"

	"github.com/viovmm/vio/devices/cmos"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type rig struct {
	t   *testing.T
	c   *cmos.CMOS
	clk *clock
}

func newRig(t *testing.T, at time.Time, low, high uint64) *rig {
	clk := &clock{t: at}
	return &rig{t: t, clk: clk, c: cmos.New(cmos.Config{Now: clk.now, LowMem: low, HighMem: high})}
}

func (r *rig) read(i uint8) uint8 {
	r.c.Write(cmos.RegIndex, []byte{i})
	var b [1]byte
	r.c.Read(cmos.RegData, b[:])
	return b[0]
}

func (r *rig) write(i, v uint8) {
	r.c.Write(cmos.RegIndex, []byte{i})
	r.c.Write(cmos.RegData, []byte{v})
}

func (r *rig) expect(name string, i uint8, want uint8) {
	r.t.Helper()
	if got := r.read(i); got != want {
		r.t.Errorf("%s (%#x) = %#02x, want %#02x", name, i, got, want)
	}
}

var sunday = time.Date(2026, 11, 22, 19, 5, 9, 300e6, time.UTC)

func TestTimeBCD24(t *testing.T) {
	r := newRig(t, sunday, 0, 0)
	r.expect("seconds", cmos.Seconds, 0x09)
	r.expect("minutes", cmos.Minutes, 0x05)
	r.expect("hours", cmos.Hours, 0x19)
	r.expect("weekday", cmos.Weekday, 0x01) // Sunday is 1
	r.expect("day", cmos.DayOfMonth, 0x22)
	r.expect("month", cmos.Month, 0x11)
	r.expect("year", cmos.Year, 0x26)
	r.expect("century", cmos.Century, 0x20)
	r.expect("register D", cmos.RegD, cmos.DVRT)
	r.clk.add(51 * time.Second)
	r.expect("seconds later", cmos.Seconds, 0x00)
	r.expect("minutes later", cmos.Minutes, 0x06)
}

func TestTimeBinaryAnd12h(t *testing.T) {
	r := newRig(t, sunday, 0, 0)
	r.write(cmos.RegB, cmos.BDM|cmos.B24h)
	r.expect("binary hours", cmos.Hours, 19)
	r.expect("binary day", cmos.DayOfMonth, 22)
	r.expect("binary year", cmos.Year, 26)
	r.write(cmos.RegB, 0) // BCD, 12-hour
	r.expect("7 pm", cmos.Hours, 0x87)
	for _, tc := range []struct {
		h    int
		want uint8
	}{{0, 0x12}, {1, 0x01}, {11, 0x11}, {12, 0x92}, {23, 0x91}} {
		r := newRig(t, time.Date(2026, 1, 1, tc.h, 0, 0, 0, time.UTC), 0, 0)
		r.write(cmos.RegB, 0)
		r.expect("12h hour", cmos.Hours, tc.want)
	}
}

// TestSetTime plays the way Linux's mc146818_set_time writes the clock:
// SET in register B, the fields, then SET cleared.
func TestSetTime(t *testing.T) {
	r := newRig(t, sunday, 0, 0)
	b := r.read(cmos.RegB)
	r.write(cmos.RegB, b|cmos.BSet)
	r.clk.add(3 * time.Second) // frozen while SET
	r.expect("frozen seconds", cmos.Seconds, 0x09)
	for _, w := range [][2]uint8{{cmos.Year, 0x30}, {cmos.Month, 0x01}, {cmos.DayOfMonth, 0x15},
		{cmos.Hours, 0x10}, {cmos.Minutes, 0x20}, {cmos.Seconds, 0x30}} {
		r.write(w[0], w[1])
	}
	r.write(cmos.RegB, b)
	r.clk.add(5 * time.Second)
	r.expect("seconds", cmos.Seconds, 0x35)
	r.expect("minutes", cmos.Minutes, 0x20)
	r.expect("hours", cmos.Hours, 0x10)
	r.expect("day", cmos.DayOfMonth, 0x15)
	r.expect("month", cmos.Month, 0x01)
	r.expect("year", cmos.Year, 0x30)
	r.expect("weekday", cmos.Weekday, 0x03) // 2030-01-15 is a Tuesday

	// One field written with the clock running moves only that field.
	r.write(cmos.Hours, 0x22)
	r.expect("hours", cmos.Hours, 0x22)
	r.expect("minutes after hour write", cmos.Minutes, 0x20)
	r.expect("day after hour write", cmos.DayOfMonth, 0x15)

	// Garbage from a hostile guest must not break anything.
	r.write(cmos.RegB, b|cmos.BSet)
	r.write(cmos.Month, 0xff)
	r.write(cmos.Seconds, 0x99)
	r.write(cmos.RegB, b)
	r.read(cmos.Seconds)
}

func TestUIPAndRegisterC(t *testing.T) {
	r := newRig(t, time.Date(2026, 1, 1, 0, 0, 0, 999_900_000, time.UTC), 0, 0)
	if a := r.read(cmos.RegA); a&cmos.AUIP == 0 || a&0x7f != 0x26 {
		t.Errorf("register A %#x 100us before the second: want UIP and 0x26", a)
	}
	r.clk.add(200 * time.Microsecond)
	if a := r.read(cmos.RegA); a&cmos.AUIP != 0 {
		t.Errorf("register A %#x just after the second", a)
	}
	r.read(cmos.RegC)
	if c := r.read(cmos.RegC); c&cmos.CUF != 0 {
		t.Errorf("register C %#x: UF without a second passing", c)
	}
	r.clk.add(time.Second)
	if c := r.read(cmos.RegC); c&cmos.CUF == 0 || c&cmos.CIRQF != 0 {
		t.Errorf("register C %#x: want UF, no IRQF (UIE off)", c)
	}
	// Writes to A keep UIP read-only; C and D are read-only.
	r.write(cmos.RegD, 0)
	r.expect("register D", cmos.RegD, cmos.DVRT)
}

func TestMemorySize(t *testing.T) {
	r := newRig(t, sunday, 3<<30, 2<<30)
	word := func(i uint8) int { return int(r.read(i)) | int(r.read(i+1))<<8 }
	if got := word(cmos.BaseMemLo); got != 640 {
		t.Errorf("base memory %d KiB", got)
	}
	if got := word(cmos.ExtMemLo); got != 0xffff {
		t.Errorf("extended memory %#x, want capped 0xffff", got)
	}
	if got := word(cmos.MemAbove16M); got != (3<<30-16<<20)>>16 {
		t.Errorf("above 16M: %#x", got)
	}
	if got := word(cmos.MemAbove4G) | int(r.read(cmos.MemAbove4G+2))<<16; got != 2<<30>>16 {
		t.Errorf("above 4G: %#x", got)
	}
	small := newRig(t, sunday, 8<<20, 0)
	if got := int(small.read(cmos.ExtMemLo)) | int(small.read(cmos.ExtMemLo+1))<<8; got != 7<<10 {
		t.Errorf("8 MiB guest: extended memory %d KiB", got)
	}
}

func TestNMIMaskAndRAM(t *testing.T) {
	r := newRig(t, sunday, 0, 0)
	r.c.Write(cmos.RegIndex, []byte{0x80 | 0x40})
	if !r.c.NMIMasked() {
		t.Error("NMI bit ignored")
	}
	r.c.Write(cmos.RegData, []byte{0x5a})
	r.c.Write(cmos.RegIndex, []byte{0x40})
	if r.c.NMIMasked() {
		t.Error("NMI stays masked")
	}
	var b [1]byte
	r.c.Read(cmos.RegData, b[:])
	if b[0] != 0x5a {
		t.Errorf("CMOS RAM 0x40 = %#x (the NMI bit must not be part of the index)", b[0])
	}
}

func FuzzCMOS(f *testing.F) {
	f.Add([]byte{0x0b, 0x82, 0x09, 0x99, 0x0b, 0x02, 0x89, 0x0c})
	f.Add([]byte{0x0b, 0x86, 0x04, 0xff, 0x32, 0xff, 0x0b, 0x04})
	f.Fuzz(func(t *testing.T, prog []byte) {
		clk := &clock{t: sunday}
		c := cmos.New(cmos.Config{Now: clk.now, LowMem: 1 << 30})
		for i := 0; i+1 < len(prog); i += 2 {
			c.Write(cmos.RegIndex, []byte{prog[i]})
			if prog[i+1]&1 == 0 {
				c.Write(cmos.RegData, []byte{prog[i+1]})
			} else {
				var b [1]byte
				c.Read(cmos.RegData, b[:])
			}
			clk.add(time.Duration(prog[i+1]) * time.Millisecond)
		}
		c.Write(cmos.RegIndex, []byte{cmos.RegD})
		var b [1]byte
		c.Read(cmos.RegData, b[:])
		if b[0] != cmos.DVRT {
			t.Fatalf("register D %#x", b[0])
		}
	})
}
