package vmm

import (
	"io"
	"testing"
	"time"
)

// TestInputAcrossVMs: one stdin, two VMs in turn (a reboot). The first
// VM's reader ends when the VM closes, instead of outliving it; input
// typed after that goes to the second VM, not to the dead one.
func TestInputAcrossVMs(t *testing.T) {
	pr, pw := io.Pipe()
	defer pw.Close()
	stdio := ShareInput(IO{Stdin: pr})
	first := &VM{}
	in1 := first.input(stdio)
	got := make(chan string, 4)
	ended := make(chan struct{})
	go func() { // the first VM's input goroutine, as the serial port's
		defer close(ended)
		b := make([]byte, 16)
		for {
			n, err := in1.Read(b)
			if n > 0 {
				got <- string(b[:n])
			}
			if err != nil {
				return
			}
		}
	}()
	if _, err := pw.Write([]byte("ls\n")); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		if s != "ls\n" {
			t.Fatalf("first VM read %q", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the first VM got no input")
	}
	for _, c := range first.closers { // the VM closes
		c.Close()
	}
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the first VM's input goroutine outlives the VM")
	}
	// Typed while no VM is attached: waits for the next one.
	typed := make(chan error, 1)
	go func() { _, err := pw.Write([]byte("reboot-ok\n")); typed <- err }()
	second := &VM{}
	in2 := second.input(stdio)
	b := make([]byte, 64)
	n, err := io.ReadAtLeast(in2, b, len("reboot-ok\n"))
	if err != nil || string(b[:n]) != "reboot-ok\n" {
		t.Fatalf("second VM read %q, %v", b[:n], err)
	}
	if err := <-typed; err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		t.Fatalf("the dead VM got %q", s)
	default:
	}
}
