package i8042_test

import (
	"testing"

	"github.com/viovmm/vio/bus"
	"github.com/viovmm/vio/devices/i8042"
)

type line struct {
	level bool
	edges int
}

func (l *line) SetLevel(high bool) error {
	if high && !l.level {
		l.edges++
	}
	l.level = high
	return nil
}

type rig struct {
	t      *testing.T
	c      *i8042.Controller
	pio    *bus.Bus
	irq    *line
	resets int
}

func newRig(t *testing.T) *rig {
	r := &rig{t: t, irq: &line{}, pio: bus.New("pio")}
	r.c = i8042.New(i8042.Config{Reset: func() { r.resets++ }, KbdIRQ: r.irq})
	if err := r.pio.Register(i8042.DataPortAddr, 1, r.c.DataPort()); err != nil {
		t.Fatal(err)
	}
	if err := r.pio.Register(i8042.CommandPortAddr, 1, r.c.CommandPort()); err != nil {
		t.Fatal(err)
	}
	if err := r.pio.Register(i8042.PortBAddr, 1, &i8042.PortB{}); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *rig) inb(port uint64) uint8 {
	b := []byte{0}
	if !r.pio.Read(port, b) {
		r.t.Fatalf("nothing at port %#x", port)
	}
	return b[0]
}

func (r *rig) outb(port uint64, v uint8) { r.pio.Write(port, []byte{v}) }

// command plays Linux's __i8042_command: the command, its parameter
// bytes, then nret result bytes, each awaited by polling OBF (bounded
// as the driver's I8042_CTL_TIMEOUT is). It returns the status seen
// with each result byte.
func (r *rig) command(cmd uint8, params []uint8, nret int) (ret, status []uint8) {
	r.t.Helper()
	r.outb(0x64, cmd)
	for _, p := range params {
		if r.inb(0x64)&i8042.StatusIBF != 0 {
			r.t.Fatal("input buffer never drains")
		}
		r.outb(0x60, p)
	}
	for i := 0; i < nret; i++ {
		st := r.inb(0x64)
		if st&i8042.StatusOBF == 0 {
			r.t.Fatalf("command %#x: no result byte %d (Linux would time out)", cmd, i)
		}
		status = append(status, st)
		ret = append(ret, r.inb(0x60))
	}
	return ret, status
}

func (r *rig) flush() int {
	n := 0
	for r.inb(0x64)&i8042.StatusOBF != 0 && n < 32 {
		r.inb(0x60)
		n++
	}
	return n
}

// TestLinuxProbe replays drivers/input/serio/i8042.c's probe: controller
// check, self-test, command byte round trip, MUX and AUX detection.
func TestLinuxProbe(t *testing.T) {
	r := newRig(t)
	if r.inb(0x64) == 0xff {
		t.Fatal("status 0xff: Linux says no controller")
	}
	if n := r.flush(); n != 0 {
		t.Errorf("flushed %d stale bytes", n)
	}
	if ret, _ := r.command(i8042.CmdSelfTest, nil, 1); ret[0] != i8042.SelfTestOK {
		t.Fatalf("self-test returned %#x", ret[0])
	}
	a, _ := r.command(i8042.CmdReadCTR, nil, 1)
	b, _ := r.command(i8042.CmdReadCTR, nil, 1)
	if a[0] != b[0] {
		t.Fatalf("CTR reads differ: %#x %#x", a[0], b[0])
	}
	ctr := a[0]&^(i8042.CTRKbdInt|i8042.CTRAuxInt) | i8042.CTRKbdDis
	r.command(i8042.CmdWriteCTR, []uint8{ctr}, 0)
	// Until now KBDINT (set by firmware) made every reply an IRQ 1
	// edge, as on hardware; from here on it is off.
	r.irq.edges = 0
	if got, _ := r.command(i8042.CmdReadCTR, nil, 1); got[0] != ctr {
		t.Fatalf("CTR %#x after writing %#x", got[0], ctr)
	}
	// i8042_set_mux_mode: the first loop byte must come back flagged
	// as aux data for a MUX; here it must not.
	ret, st := r.command(i8042.CmdWriteAuxOut, []uint8{0xf0}, 1)
	if st[0]&i8042.StatusAuxData != 0 && ret[0] == 0xf0 {
		t.Fatal("AUX loop works: Linux would probe a mouse that is not there")
	}
	// i8042_check_aux: loop fails, so the aux test decides, and any
	// answer but 0x00, 0xfa, 0xff means "no aux port".
	r.flush()
	r.command(i8042.CmdWriteAuxOut, []uint8{0x5a}, 1)
	if ret, _ := r.command(i8042.CmdAuxTest, nil, 1); ret[0] == 0 || ret[0] == 0xfa || ret[0] == 0xff {
		t.Fatalf("aux test returned %#x: Linux would assume an aux port", ret[0])
	}
	if ret, _ := r.command(i8042.CmdKbdTest, nil, 1); ret[0] != 0 {
		t.Fatalf("keyboard interface test %#x", ret[0])
	}
	if r.inb(0x64)&i8042.StatusSys == 0 {
		t.Error("system flag clear after self-test")
	}
	if r.irq.edges != 0 {
		t.Errorf("%d keyboard interrupts with KBDINT off", r.irq.edges)
	}
}

// TestKeyboard plays atkbd's probe through the data port with the
// keyboard interrupt enabled: every reply byte arrives with its own edge.
func TestKeyboard(t *testing.T) {
	for _, xlate := range []bool{true, false} {
		r := newRig(t)
		ctr := uint8(i8042.CTRKbdInt | i8042.CTRSys)
		if xlate {
			ctr |= i8042.CTRXlate
		}
		r.command(i8042.CmdWriteCTR, []uint8{ctr}, 0)
		r.outb(0x60, 0xf2) // GETID
		var got []uint8
		for i := 0; i < 3; i++ {
			if !r.irq.level {
				t.Fatalf("byte %d: IRQ 1 low", i)
			}
			got = append(got, r.inb(0x60))
		}
		want := []uint8{0xfa, 0xab, 0x83}
		if xlate {
			want[2] = 0x41
		}
		if string(got) != string(want) || r.irq.edges != 3 || r.irq.level {
			t.Errorf("xlate %v: GETID -> % x with %d edges (level %v)", xlate, got, r.irq.edges, r.irq.level)
		}
		// LEDs with an argument, then scan code set query.
		r.outb(0x60, 0xed)
		r.outb(0x60, 0x07)
		r.outb(0x60, 0xf0)
		r.outb(0x60, 0x00)
		var rest []uint8
		for r.inb(0x64)&i8042.StatusOBF != 0 {
			rest = append(rest, r.inb(0x60))
		}
		if string(rest) != string([]uint8{0xfa, 0xfa, 0xfa, 0xfa, 0x02}) {
			t.Errorf("LED and scan set replies % x", rest)
		}
	}
}

func TestReset(t *testing.T) {
	r := newRig(t)
	r.outb(0x64, 0xff) // pulse nothing
	r.command(i8042.CmdWriteOutPort, []uint8{0x03}, 0)
	if r.resets != 0 {
		t.Fatalf("%d resets from harmless writes", r.resets)
	}
	r.outb(0x64, i8042.CmdPulseReset)
	if r.resets != 1 {
		t.Fatalf("0xfe: %d resets", r.resets)
	}
	r.command(i8042.CmdWriteOutPort, []uint8{0x02}, 0)
	if r.resets != 2 {
		t.Fatalf("output port bit 0 cleared: %d resets", r.resets)
	}
	if ret, _ := r.command(i8042.CmdReadOutPort, nil, 1); ret[0] != 0x02 {
		t.Errorf("output port reads %#x", ret[0])
	}
}

func TestQueueBounded(t *testing.T) {
	r := newRig(t)
	for i := 0; i < 1000; i++ {
		r.outb(0x60, 0xf2)
	}
	if n := r.flush(); n > 16 {
		t.Fatalf("%d bytes queued", n)
	}
}

func TestPortB(t *testing.T) {
	r := newRig(t)
	r.outb(0x61, 0xf3)
	seen := map[uint8]bool{}
	for i := 0; i < 4; i++ {
		v := r.inb(0x61)
		if v&0x0f != 0x03 {
			t.Fatalf("port B %#x: low nibble not what was written", v)
		}
		seen[v&0x20] = true
	}
	if !seen[0] || !seen[0x20] {
		t.Error("timer 2 output never changes: a polling loop would hang")
	}
	high := true
	p := &i8042.PortB{Timer2Out: func() bool { return high }}
	b := []byte{0}
	p.Read(0, b)
	if b[0]&0x20 == 0 {
		t.Error("Timer2Out ignored")
	}
}

func FuzzController(f *testing.F) {
	f.Add([]byte{0x64, 0xaa, 0x60, 0xf2, 0x64, 0x60, 0x60, 0x01})
	f.Add([]byte{0x64, 0xd1, 0x60, 0x00, 0x64, 0xfe})
	f.Fuzz(func(t *testing.T, prog []byte) {
		l := &line{}
		c := i8042.New(i8042.Config{Reset: func() {}, KbdIRQ: l})
		d, cmd := c.DataPort(), c.CommandPort()
		b := []byte{0}
		for i := 0; i+1 < len(prog); i += 2 {
			switch prog[i] & 3 {
			case 0:
				d.Write(0, []byte{prog[i+1]})
			case 1:
				cmd.Write(0, []byte{prog[i+1]})
			case 2:
				d.Read(0, b)
			case 3:
				cmd.Read(0, b)
			}
			cmd.Read(0, b)
			if l.level && b[0]&i8042.StatusOBF == 0 {
				t.Fatal("IRQ 1 high with nothing to read")
			}
		}
	})
}
