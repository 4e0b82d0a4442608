package i8042_test

import (
	"testing"

	"github.com/viovmm/vio/devices/i8042"
)

func (r *rig) in(port uint64) byte {
	var b [1]byte
	r.pio.Read(port, b[:])
	return b[0]
}

func (r *rig) out(port uint64, v byte) { r.pio.Write(port, []byte{v}) }

// TestStateRoundTrip: bytes waiting in the output queue, a keyboard
// command awaiting its argument and the command byte survive a restore,
// as the guest sees them through the ports.
func TestStateRoundTrip(t *testing.T) {
	r1 := newRig(t)
	r1.out(i8042.DataPortAddr, 0xf2)    // identify: ACK, 0xab, 0x41 queued
	r1.out(i8042.CommandPortAddr, 0x60) // write CTR: awaits its byte
	b, err := r1.c.MarshalState()
	if err != nil {
		t.Fatal(err)
	}
	r2 := newRig(t)
	if err := r2.c.UnmarshalState(1, b); err != nil {
		t.Fatal(err)
	}
	if r2.irq.level != r1.irq.level {
		t.Errorf("IRQ level %v, original %v", r2.irq.level, r1.irq.level)
	}
	for _, r := range []*rig{r1, r2} {
		r.out(i8042.DataPortAddr, 0x47) // the CTR byte
	}
	for i := range 4 {
		s1, s2 := r1.in(i8042.CommandPortAddr), r2.in(i8042.CommandPortAddr)
		d1, d2 := r1.in(i8042.DataPortAddr), r2.in(i8042.DataPortAddr)
		if s1 != s2 || d1 != d2 {
			t.Errorf("read %d: status/data %#x/%#x, original %#x/%#x", i, s2, d2, s1, d1)
		}
	}
	r2.out(i8042.CommandPortAddr, i8042.CmdReadCTR)
	if v := r2.in(i8042.DataPortAddr); v != 0x47 {
		t.Errorf("CTR %#x after restore", v)
	}
	for _, in := range []string{`{"ScanSet":0}`, `{"ScanSet":2,"Pending":7}`, `{"ScanSet":2,"KeyboardArg":1}`,
		`{"ScanSet":2,"Output":[{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}]}`} {
		if err := r2.c.UnmarshalState(1, []byte(in)); err == nil {
			t.Errorf("%s restored", in)
		}
	}
}

func FuzzRestoreState(f *testing.F) {
	c := i8042.New(i8042.Config{})
	b, _ := c.MarshalState()
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		c := i8042.New(i8042.Config{Reset: func() {}})
		if c.UnmarshalState(1, data) != nil {
			return
		}
		var v [1]byte
		for range 20 {
			c.CommandPort().Read(0, v[:])
			c.DataPort().Read(0, v[:])
			c.DataPort().Write(0, []byte{0xf0})
		}
	})
}
