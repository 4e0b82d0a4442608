package cmos_test

import (
	"testing"
	"time"

	"github.com/viovmm/vio/devices/cmos"
)

// TestStateRoundTrip: a guest sets the clock back a year and stores a
// byte of RAM; the restored CMOS (same host clock) reads the same at
// every index, and its clock keeps the guest's offset.
func TestStateRoundTrip(t *testing.T) {
	at := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	r1 := newRig(t, at, 1<<30, 0)
	r1.write(cmos.Year, 0x23)
	r1.write(0x40, 0x77)
	b, err := r1.c.MarshalState()
	if err != nil {
		t.Fatal(err)
	}
	r2 := newRig(t, at, 0, 0) // memory bytes come from the state
	if err := r2.c.UnmarshalState(1, b); err != nil {
		t.Fatal(err)
	}
	for i := range uint8(128) {
		if i == cmos.RegA || i == cmos.RegC {
			continue // time-derived flags
		}
		if a, b := r1.read(i), r2.read(i); a != b {
			t.Errorf("index %#x: restored %#x, original %#x", i, b, a)
		}
	}
	if r2.read(cmos.Year) != 0x23 || r2.read(0x40) != 0x77 {
		t.Error("guest year or RAM byte lost")
	}
	if err := r2.c.UnmarshalState(1, []byte(`{"Index":0,"NMIOff":false,"RAM":"AAAA","Offset":0}`)); err == nil {
		t.Error("3-byte RAM restored")
	}
}

func FuzzRestoreState(f *testing.F) {
	c := cmos.New(cmos.Config{})
	b, _ := c.MarshalState()
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		c := cmos.New(cmos.Config{})
		if c.UnmarshalState(1, data) != nil {
			return
		}
		var v [1]byte
		for i := range byte(128) {
			c.Write(cmos.RegIndex, []byte{i})
			c.Read(cmos.RegData, v[:])
		}
	})
}
