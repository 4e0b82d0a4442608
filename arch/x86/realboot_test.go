package x86_test

import (
	"bytes"
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/viovmm/vio/bus"
	"github.com/viovmm/vio/devices/cmos"
	"github.com/viovmm/vio/devices/i8042"
	"github.com/viovmm/vio/devices/uart16550"
	"github.com/viovmm/vio/kvm"
	"github.com/viovmm/vio/lab/assets"
	"github.com/viovmm/vio/loader"
	"github.com/viovmm/vio/loader/loadertest"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/vcpu"
)

// console collects the guest's serial output and signals when a wanted
// string appears.
type console struct {
	mu    sync.Mutex
	b     strings.Builder
	want  string
	found chan struct{}
	once  sync.Once
}

func (c *console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.b.Write(p)
	if strings.Contains(c.b.String(), c.want) {
		c.once.Do(func() { close(c.found) })
	}
	return len(p), nil
}

func (c *console) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.b.String()
}

// gsi is an ISA interrupt line into KVM's in-kernel PIC and IOAPIC.
type gsi struct {
	vm  *kvm.VM
	irq uint32
}

func (g gsi) SetLevel(high bool) error { return g.vm.IRQLine(g.irq, high) }

// TestRealKernelBoot boots a distribution kernel on /dev/kvm with vio's
// boot path and legacy devices, and waits for its boot log on the 16550
// to reach a milestone: by default the MP table's CPU count, which the
// kernel prints after parsing the e820 map, the zero page, the command
// line and the MP table. It needs the lab's Debian kernel (or
// VIO_TEST_BZIMAGE) and VIO_TEST_REAL_BOOT=1; VIO_TEST_REAL_BOOT_UNTIL
// changes the milestone to another console string, or to "reset": with no
// root file system the kernel panics and, with reboot=k, resets the
// machine through the i8042. VIO_TEST_REAL_BOOT_TIMEOUT (a Go duration,
// default 5m) bounds the wait; VIO_TEST_REAL_BOOT_PVM=1 adds the kernel
// parameters a PVM host needs (see below). The vmlinux is extracted and
// loaded as ELF so the slow decompressor is skipped
// (VIO_TEST_REAL_BOOT=bzimage runs it: tens of minutes under PVM).
//
//	VIO_TEST_REAL_BOOT=1 VIO_TEST_REAL_BOOT_PVM=1 go test -run RealKernelBoot -v ./arch/x86
func TestRealKernelBoot(t *testing.T) {
	mode := os.Getenv("VIO_TEST_REAL_BOOT")
	if mode == "" {
		t.Skip("set VIO_TEST_REAL_BOOT=1 to boot a real kernel")
	}
	path := os.Getenv("VIO_TEST_BZIMAGE")
	if path == "" {
		a, err := assets.Load(assets.DefaultDir())
		if err != nil {
			t.Skipf("no real kernel: %v", err)
		}
		path = a.Kernel
	}
	img, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	load := bzImage(img)
	if mode != "bzimage" {
		vmlinux, err := loadertest.Vmlinux(img)
		if err != nil {
			t.Skip(err)
		}
		load = func(mem *memory.Memory) (loader.LoadInfo, []byte, uint32, error) {
			k, err := loader.ParseELF(bytes.NewReader(vmlinux), int64(len(vmlinux)))
			if err != nil {
				return loader.LoadInfo{}, nil, 0, err
			}
			info, err := k.Load(mem)
			return info, loader.ELFSetupHeader(2047), 2047, err
		}
	}
	const ram = 256 << 20
	cmdline := "earlyprintk=ttyS0 console=ttyS0 reboot=k panic=-1 nokaslr"
	if os.Getenv("VIO_TEST_REAL_BOOT_PVM") != "" {
		// Under PVM, KVM's instruction emulator has failed on the
		// kernel's XSAVE/XRSTOR (FPU init) and on CMPXCHG16B (SLUB's
		// cmpxchg_double): "KVM internal error: emulation failure".
		// Turn both off in the guest (141 is X86_FEATURE_CX16).
		// With them off, a Debian 6.1 kernel gets to alternatives
		// patching, whose INT3 self-test fails the same way: past
		// that point a PVM host cannot take an unmodified kernel.
		cmdline += " noxsave clearcpuid=141"
	}
	vm := newBootVM(t, load, ram, cmdline, bootOpts{irqchip: true})

	con := &console{want: "Processors: 1", found: make(chan struct{})}
	untilReset := false
	switch w := os.Getenv("VIO_TEST_REAL_BOOT_UNTIL"); w {
	case "":
	case "reset":
		untilReset = true
		con.want = "\x00never" // only the reset ends the wait
	default:
		con.want = w
	}
	pio := bus.New("pio")
	uart := uart16550.New(con, gsi{vm.vm, uart16550.COM1IRQ})
	reset := make(chan struct{})
	var resetOnce sync.Once
	kbd := i8042.New(i8042.Config{
		Reset:  func() { resetOnce.Do(func() { close(reset) }) },
		KbdIRQ: gsi{vm.vm, i8042.IRQKeyboard},
	})
	for _, r := range []struct {
		base, size uint64
		dev        bus.Device
	}{
		{uart16550.COM1Addr, uart16550.Size, uart},
		{i8042.DataPortAddr, 1, kbd.DataPort()},
		{i8042.CommandPortAddr, 1, kbd.CommandPort()},
		{cmos.PortAddr, cmos.Size, cmos.New(cmos.Config{LowMem: ram})},
	} {
		if err := pio.Register(r.base, r.size, r.dev); err != nil {
			t.Fatal(err)
		}
	}
	events := make(chan vcpu.Event, 1)
	run := vcpu.New(vm.cpu, vcpu.Config{PIO: pio, Handler: func(ev vcpu.Event) vcpu.Action {
		select {
		case events <- ev:
		default:
		}
		return vcpu.Park
	}})
	start := time.Now()
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	limit := 5 * time.Minute
	if d, err := time.ParseDuration(os.Getenv("VIO_TEST_REAL_BOOT_TIMEOUT")); err == nil {
		limit = d
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	debug := os.Getenv("VIO_TEST_REAL_BOOT_DEBUG") != ""
loop:
	for {
		select {
		case <-con.found:
			t.Logf("%q after %v:\n%s", con.want, time.Since(start), con.String())
			break loop
		case <-reset:
			if !untilReset {
				t.Errorf("guest reset itself; console:\n%s", con.String())
			} else {
				t.Logf("reset through the i8042 after %v:\n%s", time.Since(start), con.String())
			}
			break loop
		case ev := <-events:
			regs, _ := vm.cpu.GetRegs()
			t.Errorf("guest stopped at rip %#x: %v; console:\n%s", regs.Rip, ev, con.String())
			break loop
		case <-ctx.Done():
			t.Errorf("no %q after %v; console:\n%s", con.want, time.Since(start), con.String())
			break loop
		case <-tick.C:
			if debug {
				run.Pause()
				regs, _ := vm.cpu.GetRegs()
				t.Logf("%v: rip %#x rsp %#x counters %+v", time.Since(start), regs.Rip, regs.Rsp, run.Counters())
				code := make([]byte, 256)
				vm.mem.ReadAt(code, int64(regs.Rip&^0xff))
				os.WriteFile("/tmp/rb-code.bin", code, 0o644)
				sr, _ := vm.cpu.GetSregs()
				t.Logf("cr0 %#x cr3 %#x cr4 %#x efer %#x idt %+v", sr.Cr0, sr.Cr3, sr.Cr4, sr.Efer, sr.Idt)
				run.Resume()
			}
		}
	}
	run.Stop()
	<-run.Done()
}
