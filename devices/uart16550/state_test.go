package uart16550_test

import (
	"bytes"
	"testing"

	"github.com/viovmm/vio/devices/uart16550"
	"github.com/viovmm/vio/pci/pcitest"
)

func rd(u *uart16550.UART, reg uint64) byte {
	var b [1]byte
	u.Read(reg, b[:])
	return b[0]
}

func wr(u *uart16550.UART, reg uint64, v byte) { u.Write(reg, []byte{v}) }

// TestStateRoundTrip programs a UART as a driver does, fills its FIFO,
// saves it and restores into a fresh one: every register reads the same,
// the FIFO yields the same bytes, the IRQ line is at the same level.
func TestStateRoundTrip(t *testing.T) {
	l1, l2 := pcitest.NewLine(), pcitest.NewLine()
	u1 := uart16550.New(&bytes.Buffer{}, l1)
	wr(u1, uart16550.RegLCR, uart16550.LCRDLAB)
	wr(u1, uart16550.RegData, 1)
	wr(u1, uart16550.RegIER, 0)
	wr(u1, uart16550.RegLCR, 3)
	wr(u1, uart16550.RegFCR, 0x87) // FIFOs on, trigger 8
	wr(u1, uart16550.RegIER, uart16550.IERRxData)
	wr(u1, uart16550.RegMCR, uart16550.MCROUT2|uart16550.MCRDTR)
	wr(u1, uart16550.RegSCR, 0x5a)
	u1.Enqueue([]byte("abc"))
	b, err := u1.MarshalState()
	if err != nil {
		t.Fatal(err)
	}
	u2 := uart16550.New(&bytes.Buffer{}, l2)
	if err := u2.UnmarshalState(1, b); err != nil {
		t.Fatal(err)
	}
	if h1, _ := l1.Level(); !h1 {
		t.Fatal("test set-up: line not raised")
	}
	if h2, _ := l2.Level(); !h2 {
		t.Error("restored UART's line is low")
	}
	for _, reg := range []uint64{uart16550.RegIER, uart16550.RegIIR, uart16550.RegLCR, uart16550.RegMCR,
		uart16550.RegLSR, uart16550.RegMSR, uart16550.RegSCR} {
		if a, b := rd(u1, reg), rd(u2, reg); a != b {
			t.Errorf("register %d: restored %#x, original %#x", reg, b, a)
		}
	}
	for i := range 4 {
		if a, b := rd(u1, uart16550.RegData), rd(u2, uart16550.RegData); a != b {
			t.Errorf("RBR read %d: restored %#x, original %#x", i, b, a)
		}
	}
	wr(u2, uart16550.RegLCR, uart16550.LCRDLAB)
	if rd(u2, uart16550.RegData) != 1 {
		t.Error("divisor not restored")
	}
}

func TestStateHostile(t *testing.T) {
	u := uart16550.New(&bytes.Buffer{}, pcitest.NewLine())
	for _, in := range []string{
		`{"Trigger":3}`,
		`{"Trigger":1,"RxFIFO":"YWI="}`, // two bytes without FIFOs
		`{"Trigger":1,"IER":255}`,
		`{"Trigger":14,"FIFOEnabled":true,"RxFIFO":"AAAAAAAAAAAAAAAAAAAAAAAAAAAA"}`,
	} {
		if err := u.UnmarshalState(1, []byte(in)); err == nil {
			t.Errorf("%s restored", in)
		}
	}
}

func FuzzRestoreState(f *testing.F) {
	u := uart16550.New(&bytes.Buffer{}, pcitest.NewLine())
	u.Enqueue([]byte("x"))
	b, _ := u.MarshalState()
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		u := uart16550.New(&bytes.Buffer{}, pcitest.NewLine())
		if u.UnmarshalState(1, data) != nil {
			return
		}
		for reg := range uint64(uart16550.Size) {
			rd(u, reg)
		}
		u.Enqueue([]byte("0123456789abcdefghij"))
		for range 20 {
			rd(u, uart16550.RegData)
		}
	})
}
