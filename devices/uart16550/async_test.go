package uart16550_test

import (
	"bytes"
	"testing"

	u8250 "github.com/viovmm/vio/devices/uart16550"
)

// The UART's output through an AsyncWriter arrives complete and in order
// when the writer keeps up.
func TestAsyncWriterWithUART(t *testing.T) {
	var out syncBuf
	a := u8250.NewAsyncWriter(&out, 1<<16)
	r := &rig{t: t, irq: &line{}}
	r.u = u8250.New(a, r.irq)
	msg := bytes.Repeat([]byte("vio "), 1000)
	for _, c := range msg {
		r.out8(u8250.RegData, c)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if out.String() != string(msg) || a.Dropped() != 0 {
		t.Fatalf("got %d bytes, dropped %d", len(out.String()), a.Dropped())
	}
}
