package acpi_test

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/arch/x86/acpi"
	"github.com/viovmm/vio/kvm"
)

// TestResetVectorKVM runs the reset stub on a real vCPU the way Linux's
// machine_real_restart(MRR_BIOS) reaches it: in real mode, after a far
// jump to F000:FFF0. The stub must write RESET_VALUE to RESET_REG with a
// single one-byte OUT, then halt.
func TestResetVectorKVM(t *testing.T) {
	sys, err := kvm.Open("")
	if errors.Is(err, kvm.ErrNoKVM) {
		t.Fatalf("no KVM, though TestMain runs these tests in the lab where the host has none: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer sys.Close()
	vm, err := sys.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	mem := newMem(t)
	cfg := configs["minimal"]
	cfg.PM.ResetPort, cfg.PM.ResetValue = 0x1234, 0x5a // distinct from anything else the guest could emit
	if _, err := acpi.Write(mem, cfg); err != nil {
		t.Fatal(err)
	}
	for i, r := range mem.Regions() {
		if err := vm.SetUserMemoryRegion(kvm.MemoryRegion{Slot: uint32(i), GPA: r.GPA, Host: r.Data}); err != nil {
			t.Fatal(err)
		}
	}
	cpu, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	defer cpu.Close()
	s, err := cpu.GetSregs()
	if err != nil {
		t.Fatal(err)
	}
	s.Cs.Selector, s.Cs.Base = 0xf000, 0xf0000
	if err := cpu.SetSregs(s); err != nil {
		t.Fatal(err)
	}
	if err := cpu.SetRegs(kvm.Regs{Rip: 0xfff0, Rflags: 2}); err != nil {
		t.Fatal(err)
	}
	runOnce := func() kvm.ExitReason {
		for {
			err := cpu.Run()
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			return cpu.Exit().Reason()
		}
	}
	if r := runOnce(); r != kvm.ExitIO {
		t.Fatalf("first exit %v, want the reset register write", r)
	}
	io, err := cpu.Exit().IO()
	if err != nil {
		t.Fatal(err)
	}
	if !io.Out || io.Port != cfg.PM.ResetPort || io.Size != 1 || io.Count != 1 || io.Data[0] != cfg.PM.ResetValue {
		t.Fatalf("exit %+v, want out %#x of %#x", io, cfg.PM.ResetPort, cfg.PM.ResetValue)
	}
	// If the VMM lets the vCPU go on, it halts, and stays halted.
	for i := 0; i < 2; i++ {
		if r := runOnce(); r != kvm.ExitHLT {
			t.Fatalf("exit %v after the reset write, want hlt", r)
		}
	}
}
