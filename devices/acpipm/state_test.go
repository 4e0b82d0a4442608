package acpipm_test

import (
	"testing"

	"github.com/viovmm/vio/devices/acpipm"
)

func TestStateRoundTrip(t *testing.T) {
	d1 := acpipm.New(acpipm.Config{})
	d1.Write(acpipm.RegSleepControl, []byte{3<<acpipm.SleepTypeShift | acpipm.SleepEnable}) // S3: wakes at once
	b, err := d1.MarshalState()
	if err != nil {
		t.Fatal(err)
	}
	d2 := acpipm.New(acpipm.Config{})
	if err := d2.UnmarshalState(1, b); err != nil {
		t.Fatal(err)
	}
	r1, r2 := make([]byte, acpipm.Size), make([]byte, acpipm.Size)
	d1.Read(0, r1)
	d2.Read(0, r2)
	if string(r1) != string(r2) || r2[acpipm.RegSleepStatus] != acpipm.WakeStatus {
		t.Fatalf("registers %x, original %x", r2, r1)
	}
	if err := d2.UnmarshalState(1, []byte(`{"SleepType":9,"WakeStatus":false}`)); err == nil {
		t.Error("SLP_TYP 9 restored")
	}
}

func FuzzRestoreState(f *testing.F) {
	f.Add([]byte(`{"SleepType":5,"WakeStatus":true}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		d := acpipm.New(acpipm.Config{})
		_ = d.UnmarshalState(1, data)
		r := make([]byte, acpipm.Size)
		d.Read(0, r)
	})
}
