package labtest

import (
	"testing"
	"time"
)

// TestSlots: at most n lab slots are held at once; a taker waits until one
// is released; a taker's abandoned waits on the other slots never keep
// them from anyone.
func TestSlots(t *testing.T) {
	dir := t.TempDir()
	x, err := takeSlot(dir, 2)
	if err != nil {
		t.Fatal(err)
	}
	// Both slots were free: x's wait on the other one also succeeded and
	// must have let it go, or y would block.
	y, err := takeSlot(dir, 2)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan func(), 1)
	go func() {
		z, err := takeSlot(dir, 2)
		if err != nil {
			t.Error(err)
			close(got)
			return
		}
		got <- z
	}()
	// A negative check: a correct takeSlot cannot pass this select's
	// first case however long it waits.
	select {
	case <-got:
		t.Fatal("a third lab took a slot while both were held")
	case <-time.After(200 * time.Millisecond):
	}
	y()
	z := <-got
	if z == nil {
		t.FailNow()
	}
	z()
	x()
}

func TestSlotCount(t *testing.T) {
	t.Setenv("VIO_LAB_SLOTS", "3")
	if n, err := slotCount(); n != 3 || err != nil {
		t.Errorf("VIO_LAB_SLOTS=3: %d, %v", n, err)
	}
	for _, bad := range []string{"0", "-1", "two"} {
		t.Setenv("VIO_LAB_SLOTS", bad)
		if _, err := slotCount(); err == nil {
			t.Errorf("VIO_LAB_SLOTS=%s accepted", bad)
		}
	}
	t.Setenv("VIO_LAB_SLOTS", "")
	if n, err := slotCount(); n < 1 || err != nil {
		t.Errorf("default: %d, %v", n, err)
	}
}
