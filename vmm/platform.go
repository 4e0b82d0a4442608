package vmm

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"

	"github.com/viovmm/vio/arch/x86"
	"github.com/viovmm/vio/arch/x86/acpi"
	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/devices/acpipm"
	"github.com/viovmm/vio/devices/cmos"
	"github.com/viovmm/vio/devices/i8042"
	"github.com/viovmm/vio/devices/uart16550"
	"github.com/viovmm/vio/kvm"
)

// platform is the legacy PC around the guest: COM1, the keyboard
// controller (for its reset line) and the RTC/CMOS.
type platform struct {
	serial *uart16550.UART
	kbd    *i8042.Controller
	pm     *acpipm.Device
	cmos   *cmos.CMOS
}

// isaLine drives one ISA interrupt line of the in-kernel PIC/IOAPIC.
type isaLine struct {
	vm  *kvm.VM
	irq uint32
}

func (l isaLine) SetLevel(high bool) error { return l.vm.IRQLine(l.irq, high) }

func newPlatform(v *VM, stdio IO) (*platform, error) {
	p := &platform{}
	if v.cfg.Console.Mode == config.ModeTty {
		stdio.Stdin, stdio.hub = nil, nil // the virtio console has the terminal's input
	}
	out, in, err := consoleStreams(v, v.cfg.Serial, stdio)
	if err != nil {
		return nil, err
	}
	// The UART writes on the vCPU thread: a terminal paused with ^S or a
	// socket nobody reads must cost console bytes, not guest progress.
	async := uart16550.NewAsyncWriter(out, 1<<20)
	v.closers = append(v.closers, async) // flushes what is in flight
	out = &panicWatcher{w: async, vm: v}
	p.serial = uart16550.New(out, isaLine{v.kvm, uart16550.COM1IRQ})
	if err := v.pio.Register(uart16550.COM1Addr, uart16550.Size, p.serial); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	v.closers = append(v.closers, closerFunc(func() error { cancel(); return nil }))
	if in != nil {
		go io.Copy(p.serial.InputWriter(ctx), in)
	}

	kbd := i8042.New(i8042.Config{
		Reset:  func() { v.exit(Exit{Reason: ExitReboot, Detail: "reset through the keyboard controller"}) },
		KbdIRQ: isaLine{v.kvm, 1},
	})
	if err := v.pio.Register(0x60, 1, kbd.DataPort()); err != nil {
		return nil, err
	}
	if err := v.pio.Register(0x64, 1, kbd.CommandPort()); err != nil {
		return nil, err
	}
	pm := acpipm.New(acpipm.Config{
		PowerOff: func() { v.exit(Exit{Reason: ExitPoweroff, Detail: "ACPI S5"}) },
		Reset:    func() { v.exit(Exit{Reason: ExitReboot, Detail: "ACPI reset register"}) },
		// The SCI: ISA IRQ 9, which KVM's routing (interrupts.go)
		// sends to the PIC and to IOAPIC pin 9, level-triggered and
		// active-high as the MADT's override tells the guest.
		SCI: isaLine{v.kvm, acpi.SCIIRQ},
	})
	if err := v.pio.Register(acpipm.PortAddr, acpipm.Size, pm); err != nil {
		return nil, err
	}
	pvpanic := acpipm.NewPvPanic(func(events uint8) {
		v.exit(Exit{Reason: ExitPanic, Detail: fmt.Sprintf("pvpanic event %#x", events)})
	})
	if err := v.pio.Register(acpipm.PvPanicPort, acpipm.PvPanicSize, pvpanic); err != nil {
		return nil, err
	}
	low, high := x86.SplitRAM(ramLayout(v))
	rtc := cmos.New(cmos.Config{LowMem: low, HighMem: high})
	if err := v.pio.Register(0x70, 2, rtc); err != nil {
		return nil, err
	}
	p.kbd, p.pm, p.cmos = kbd, pm, rtc
	return p, nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// consoleFiles are the console files this process has opened. The first
// open empties the file; a reboot builds a new VM, whose console goes on
// after the last boot's output instead of erasing it (the panic that
// caused the reboot is what a user looks for).
var consoleFiles sync.Map

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// consoleStreams opens what a console config names.
func consoleStreams(v *VM, c config.Console, stdio IO) (io.Writer, io.Reader, error) {
	switch c.Mode {
	case "", config.ModeTty:
		out := stdio.Stdout
		if out == nil {
			out = io.Discard
		}
		return out, v.input(stdio), nil
	case config.ModeOff, config.ModeNull:
		return io.Discard, nil, nil
	case config.ModeFile:
		flags := os.O_WRONLY | os.O_CREATE | os.O_APPEND
		if _, again := consoleFiles.LoadOrStore(absPath(c.File), true); !again {
			flags |= os.O_TRUNC
		}
		f, err := os.OpenFile(c.File, flags, 0o644)
		if err != nil {
			return nil, nil, fmt.Errorf("serial file: %w", err)
		}
		v.closers = append(v.closers, f)
		return f, nil, nil
	case config.ModeSocket:
		// One client at a time, like a serial cable: output is dropped
		// while nobody is connected.
		l, err := listenConsoleSocket(c.Socket)
		if err != nil {
			return nil, nil, err
		}
		v.closers = append(v.closers, l)
		s := &socketConsole{}
		pr, pw := io.Pipe()
		v.closers = append(v.closers, pw)
		go s.accept(l, pw)
		return s, pr, nil
	}
	return nil, nil, fmt.Errorf("console mode %q is not supported", c.Mode)
}

type socketConsole struct {
	mu   sync.Mutex
	conn net.Conn
}

func (s *socketConsole) accept(l net.Listener, in *io.PipeWriter) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.conn != nil {
			s.conn.Close()
		}
		s.conn = c
		s.mu.Unlock()
		go io.Copy(in, c)
	}
}

func (s *socketConsole) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil {
		if _, err := s.conn.Write(p); err != nil {
			s.conn.Close()
			s.conn = nil
		}
	}
	return len(p), nil
}

// panicWatcher passes console output through and recognises the kernel's
// panic banner, so that the reboot a panicking guest (panic=N) asks for
// is reported as the panic it is.
type panicWatcher struct {
	w    io.Writer
	vm   *VM
	line []byte
}

var panicBanner = []byte("Kernel panic - not syncing")

func (p *panicWatcher) Write(b []byte) (int, error) {
	for _, c := range b {
		if c == '\n' {
			if i := bytes.Index(p.line, panicBanner); i >= 0 {
				p.vm.notePanic(string(bytes.TrimSpace(p.line[i:])))
			}
			p.line = p.line[:0]
		} else if len(p.line) < 512 {
			p.line = append(p.line, c)
		}
	}
	return p.w.Write(b)
}
