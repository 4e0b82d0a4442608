package acpipm_test

import (
	"errors"
	"testing"

	"github.com/viovmm/vio/devices/acpipm"
	"github.com/viovmm/vio/state"
)

// TestStateRoundTrip: every register survives save and restore, and the
// restored device drives the SCI to the level its registers call for,
// since the new VM's line starts low.
func TestStateRoundTrip(t *testing.T) {
	d1, _, b, _ := newDev()
	out16(b, pm1Control, 3<<acpipm.SleepTypeShift|acpipm.SleepEnable|acpipm.BusMasterRLD) // S3: wakes at once
	out16(b, pm1Enable, acpipm.PowerButton|acpipm.GlobalStatus)
	d1.PressPowerButton() // pending: the SCI is high
	d1.RaiseGPE(3)
	out(b, gpeEnable, 1<<1)
	data, err := d1.MarshalState()
	if err != nil {
		t.Fatal(err)
	}
	l := &line{}
	d2 := acpipm.New(acpipm.Config{SCI: l})
	if err := d2.UnmarshalState(d2.StateVersion(), data); err != nil {
		t.Fatal(err)
	}
	r1, r2 := make([]byte, acpipm.Size), make([]byte, acpipm.Size)
	d1.Read(0, r1)
	d2.Read(0, r2)
	if string(r1) != string(r2) {
		t.Fatalf("registers % x, original % x", r2, r1)
	}
	if len(l.levels) != 1 || !l.levels[0] {
		t.Fatalf("restore drove the SCI %v, want high once", l.levels)
	}
	// A state with nothing pending drives the line low: it may have been
	// left high by what ran before.
	l3 := &line{}
	d3 := acpipm.New(acpipm.Config{SCI: l3})
	if err := d3.RestoreState(acpipm.State{PM1Enable: acpipm.PowerButton}); err != nil {
		t.Fatal(err)
	}
	if len(l3.levels) != 1 || l3.levels[0] {
		t.Fatalf("restore drove the SCI %v, want low once", l3.levels)
	}
}

func TestStateInvalid(t *testing.T) {
	d := acpipm.New(acpipm.Config{})
	for _, s := range []string{
		`{"PM1Status":8}`,     // bit 3 is reserved
		`{"PM1Enable":32768}`, // WAK_STS has no enable
		`{"PM1Control":8192}`, // SLP_EN does not persist
		`{"PM1Control":1}`,    // SCI_EN is implied, not state
		`{"PM1Status":"x"}`,
	} {
		if err := d.UnmarshalState(2, []byte(s)); err == nil {
			t.Errorf("%s restored", s)
		}
	}
}

// A version 1 state is from the hardware-reduced platform: refused,
// saying why, as a mismatch with this machine.
func TestStateVersion1Refused(t *testing.T) {
	d := acpipm.New(acpipm.Config{})
	err := d.UnmarshalState(1, []byte(`{"SleepType":5,"WakeStatus":false}`))
	if !errors.Is(err, state.ErrMismatch) || !errors.Is(err, acpipm.ErrHardwareReduced) {
		t.Fatalf("version 1: %v, want ErrMismatch", err)
	}
	if err := d.UnmarshalState(3, []byte(`{}`)); !errors.Is(err, state.ErrNewer) {
		t.Fatalf("version 3: %v, want ErrNewer", err)
	}
}

func FuzzRestoreState(f *testing.F) {
	f.Add([]byte(`{"PM1Status":256,"PM1Enable":256,"PM1Control":5120,"GPE0Status":2,"GPE0Enable":2}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		l := &line{}
		d := acpipm.New(acpipm.Config{SCI: l})
		if err := d.UnmarshalState(2, data); err != nil {
			return
		}
		// What was restored reads back, and the SCI matches it.
		s := d.SaveState()
		r := make([]byte, acpipm.Size)
		d.Read(0, r)
		if uint16(r[0])|uint16(r[1])<<8 != s.PM1Status || r[8] != s.GPE0Status || r[9] != s.GPE0Enable {
			t.Fatalf("registers % x for %+v", r, s)
		}
		if len(l.levels) != 1 || l.levels[0] != d.SCILevel() {
			t.Fatalf("SCI driven %v, level %v", l.levels, d.SCILevel())
		}
	})
}
