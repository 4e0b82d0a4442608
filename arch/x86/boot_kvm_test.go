package x86_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/arch/x86"
	"github.com/viovmm/vio/kvm"
	"github.com/viovmm/vio/loader"
	"github.com/viovmm/vio/loader/loadertest"
	"github.com/viovmm/vio/memory"
)

// entryProbe is the 64-bit entry code of the synthetic kernel below,
// assembled with GNU as from:
//
//	mov eax, [rsi+0x202]          ; out 0x10, eax   "HdrS" in the zero page
//	movzx eax, byte ptr [rsi+0x1e8]; out 0x10, eax  e820_entries
//	mov eax, [rsi+0x228]; mov eax, [rax]; out       first 4 bytes of the cmdline
//	movabs rax, 0x1122334455667788; shr rax, 32; out  64-bit operand size
//	mov edi, 0x3fff000; mov dword ptr [rdi], 0xfeedface; mov eax, [rdi]; out
//	mov eax, 0x40000000; cpuid; mov eax, ebx; out   "KVMK"
//	mov eax, 0x40000001; cpuid; out                 KVM features
//	mov eax, 1; cpuid; mov eax, ebx; shr eax, 24; out  APIC ID
//	mov ecx, 0x1a0; rdmsr; out                      IA32_MISC_ENABLE
//	push 0x1234; pop rax; out                       the stack works
//	mov rax, rsp; out; mov eax, cs; out; mov eax, ss; out
//	hlt
var entryProbe = []byte{
	0x8b, 0x86, 0x02, 0x02, 0x00, 0x00, 0xe7, 0x10, 0x0f, 0xb6, 0x86, 0xe8,
	0x01, 0x00, 0x00, 0xe7, 0x10, 0x8b, 0x86, 0x28, 0x02, 0x00, 0x00, 0x8b,
	0x00, 0xe7, 0x10, 0x48, 0xb8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22,
	0x11, 0x48, 0xc1, 0xe8, 0x20, 0xe7, 0x10, 0xbf, 0x00, 0xf0, 0xff, 0x03,
	0xc7, 0x07, 0xce, 0xfa, 0xed, 0xfe, 0x8b, 0x07, 0xe7, 0x10, 0xb8, 0x00,
	0x00, 0x00, 0x40, 0x0f, 0xa2, 0x89, 0xd8, 0xe7, 0x10, 0xb8, 0x01, 0x00,
	0x00, 0x40, 0x0f, 0xa2, 0xe7, 0x10, 0xb8, 0x01, 0x00, 0x00, 0x00, 0x0f,
	0xa2, 0x89, 0xd8, 0xc1, 0xe8, 0x18, 0xe7, 0x10, 0xb9, 0xa0, 0x01, 0x00,
	0x00, 0x0f, 0x32, 0xe7, 0x10, 0x68, 0x34, 0x12, 0x00, 0x00, 0x58, 0xe7,
	0x10, 0x48, 0x89, 0xe0, 0xe7, 0x10, 0x8c, 0xc8, 0xe7, 0x10, 0x8c, 0xd0,
	0xe7, 0x10, 0xf4,
}

func kvmSeg(s x86.Segment) kvm.Segment {
	return kvm.Segment{Base: s.Base, Limit: s.Limit, Selector: s.Selector, Type: s.Type, Present: s.Present,
		Dpl: s.Dpl, Db: s.Db, S: s.S, L: s.L, G: s.G, Avl: s.Avl, Unusable: s.Unusable}
}

// bootVM is a one-vCPU VM prepared for a Linux boot of img the way the
// vmm will do it: RAM laid out by RAMLayout, kernel and command line
// loaded, zero page, MP table, long-mode state, CPUID and MSRs set.
type bootVM struct {
	sys  *kvm.System
	vm   *kvm.VM
	cpu  *kvm.VCPU
	mem  *memory.Memory
	e820 []x86.E820Entry
}

// kernelLoader loads a kernel into mem and returns where it went and the
// setup header for the zero page.
type kernelLoader func(mem *memory.Memory) (loader.LoadInfo, []byte, uint32, error)

// bzImage is the kernelLoader for a bzImage.
func bzImage(img []byte) kernelLoader {
	return func(mem *memory.Memory) (loader.LoadInfo, []byte, uint32, error) {
		k, err := loader.Parse(bytes.NewReader(img), int64(len(img)))
		if err != nil {
			return loader.LoadInfo{}, nil, 0, err
		}
		info, err := k.Load(mem, loader.DefaultLoadAddr)
		return info, k.Header.Raw, k.Header.CmdlineSize, err
	}
}

// bootOpts are the knobs the tests turn.
type bootOpts struct {
	irqchip     bool   // in-kernel LAPIC/IOAPIC/PIC and PIT
	kvmFeatures uint32 // CPUIDConfig.KVMFeatures
}

func newBootVM(t *testing.T, load kernelLoader, ram uint64, cmdline string, o bootOpts) *bootVM {
	t.Helper()
	sys, err := kvm.Open("")
	if errors.Is(err, kvm.ErrNoKVM) {
		t.Fatalf("no KVM, though TestMain runs these tests in the lab where the host has none: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sys.Close() })
	vm, err := sys.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })

	layout, err := x86.RAMLayout(ram)
	if err != nil {
		t.Fatal(err)
	}
	mem, err := memory.New(layout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	for i, r := range mem.Regions() {
		if err := vm.SetUserMemoryRegion(kvm.MemoryRegion{Slot: uint32(i), GPA: r.GPA, Host: r.Data}); err != nil {
			t.Fatal(err)
		}
	}

	info, hdr, cmdlineSize, err := load(mem)
	if err != nil {
		t.Fatal(err)
	}
	cmd := loader.NewCmdline(min(cmdlineSize, x86.CmdlineMax-1))
	if err := cmd.Add(cmdline); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Write(mem, x86.CmdlineAddr); err != nil {
		t.Fatal(err)
	}
	e820, err := x86.E820Map(layout)
	if err != nil {
		t.Fatal(err)
	}
	if err := x86.WriteZeroPage(mem, x86.BootParams{SetupHeader: hdr, CmdlineAddr: x86.CmdlineAddr, E820: e820}); err != nil {
		t.Fatal(err)
	}
	if err := x86.WriteMPTable(mem, x86.MPConfig{NumCPUs: 1}); err != nil {
		t.Fatal(err)
	}
	sregs, err := x86.SetupLongMode(mem)
	if err != nil {
		t.Fatal(err)
	}

	if o.irqchip {
		// As the vmm will: in-kernel LAPIC, IOAPIC and PIC, and the
		// PIT with its port 0x61.
		if err := vm.CreateIRQChip(); err != nil {
			t.Fatal(err)
		}
		if err := vm.CreatePIT2(kvm.PITConfig{Flags: kvm.PITSpeakerDummy}); err != nil {
			t.Fatal(err)
		}
	}
	cpu, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cpu.Close() })
	host, err := sys.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	in := make([]x86.CPUIDEntry, len(host))
	for i, e := range host {
		in[i] = x86.CPUIDEntry{Function: e.Function, Index: e.Index, Flags: e.Flags, EAX: e.Eax, EBX: e.Ebx, ECX: e.Ecx, EDX: e.Edx}
	}
	// KVM_CAP_TSC_DEADLINE_TIMER (72): the in-kernel LAPIC has it.
	deadline, _ := sys.CheckExtension(kvm.Cap(72))
	guest, err := x86.GuestCPUID(in, x86.CPUIDConfig{CPU: 0, NumCPUs: 1,
		TSCDeadline: o.irqchip && deadline > 0, KVMFeatures: o.kvmFeatures})
	if err != nil {
		t.Fatal(err)
	}
	out := make([]kvm.CPUIDEntry, len(guest))
	for i, e := range guest {
		out[i] = kvm.CPUIDEntry{Function: e.Function, Index: e.Index, Flags: e.Flags, Eax: e.EAX, Ebx: e.EBX, Ecx: e.ECX, Edx: e.EDX}
	}
	if err := cpu.SetCPUID2(out); err != nil {
		t.Fatal(err)
	}
	var msrs []kvm.MSREntry
	for _, m := range x86.BootMSRs() {
		msrs = append(msrs, kvm.MSREntry{Index: m.Index, Data: m.Data})
	}
	if err := cpu.SetMSRs(msrs); err != nil {
		t.Fatal(err)
	}
	ks, err := cpu.GetSregs()
	if err != nil {
		t.Fatal(err)
	}
	ks.Cs, ks.Ds, ks.Es, ks.Fs, ks.Gs, ks.Ss = kvmSeg(sregs.Cs), kvmSeg(sregs.Ds), kvmSeg(sregs.Es), kvmSeg(sregs.Fs), kvmSeg(sregs.Gs), kvmSeg(sregs.Ss)
	ks.Tr, ks.Ldt = kvmSeg(sregs.Tr), kvmSeg(sregs.Ldt)
	ks.Gdt = kvm.DTable{Base: sregs.Gdt.Base, Limit: sregs.Gdt.Limit}
	ks.Idt = kvm.DTable{Base: sregs.Idt.Base, Limit: sregs.Idt.Limit}
	ks.Cr0, ks.Cr3, ks.Cr4, ks.Efer = sregs.Cr0, sregs.Cr3, sregs.Cr4, sregs.Efer
	if err := cpu.SetSregs(ks); err != nil {
		t.Fatal(err)
	}
	r := x86.BootRegs(info.Entry64)
	if err := cpu.SetRegs(kvm.Regs{Rip: r.Rip, Rsi: r.Rsi, Rsp: r.Rsp, Rbp: r.Rbp, Rflags: r.Rflags}); err != nil {
		t.Fatal(err)
	}
	return &bootVM{sys: sys, vm: vm, cpu: cpu, mem: mem, e820: e820}
}

// probeFeatures is an unusual KVM feature set for the probe guest to find
// in CPUID: seeing it proves the guest runs on vio's CPUID table.
const probeFeatures = x86.KVMFeatureClocksource2 | x86.KVMFeatureNopIODelay

// TestBootOnKVM enters a synthetic bzImage through the whole boot path
// (loader, zero page, GDT, page tables, registers, CPUID, MSRs) on the
// real /dev/kvm. KVM refuses an inconsistent long-mode state outright, and
// the guest reports what it sees through port 0x10.
func TestBootOnKVM(t *testing.T) {
	o := loadertest.Default()
	o.Entry64 = entryProbe
	vm := newBootVM(t, bzImage(loadertest.BzImage(o)), 64<<20, "console=ttyS0",
		bootOpts{kvmFeatures: probeFeatures})
	cpu, mem, e820 := vm.cpu, vm.mem, vm.e820

	var got []uint32
	for len(got) < 20 {
		if err := cpu.Run(); errors.Is(err, unix.EINTR) {
			continue
		} else if err != nil {
			t.Fatal(err)
		}
		ex := cpu.Exit()
		if ex.Reason() == kvm.ExitHLT {
			break
		}
		io, err := ex.IO()
		if err != nil {
			regs, _ := cpu.GetRegs()
			t.Fatalf("exit %v at rip %#x after %d values: %v", ex.Reason(), regs.Rip, len(got), err)
		}
		if !io.Out || io.Port != 0x10 || io.Size != 4 {
			t.Fatalf("unexpected IO %+v", io)
		}
		got = append(got, binary.LittleEndian.Uint32(io.Data))
	}
	want := []struct {
		name string
		v    uint32
	}{
		{"HdrS at zero page 0x202", binary.LittleEndian.Uint32([]byte("HdrS"))},
		{"e820_entries", uint32(len(e820))},
		{"cmdline start", binary.LittleEndian.Uint32([]byte("cons"))},
		{"64-bit shift", 0x11223344},
		{"write through identity map", 0xfeedface},
		{"CPUID 0x40000000 EBX", binary.LittleEndian.Uint32([]byte("KVMK"))},
		{"CPUID 0x40000001 EAX", probeFeatures},
		{"APIC ID", 0},
		{"IA32_MISC_ENABLE fast strings", x86.MiscEnableFastString},
		{"push/pop", 0x1234},
		{"rsp", x86.BootStack},
		{"cs", x86.SelectorCode},
		{"ss", x86.SelectorData},
	}
	if len(got) != len(want) {
		t.Fatalf("guest reported %d values (% x), want %d", len(got), got, len(want))
	}
	for i, w := range want {
		v := got[i]
		if w.name == "IA32_MISC_ENABLE fast strings" {
			v &= x86.MiscEnableFastString
		}
		if w.name == "cs" || w.name == "ss" {
			v &= 0xffff
		}
		if v != w.v {
			t.Errorf("%s: guest saw %#x, want %#x", w.name, v, w.v)
		}
	}
	var b [4]byte
	mem.ReadAt(b[:], 0x3fff000)
	if binary.LittleEndian.Uint32(b[:]) != 0xfeedface {
		t.Error("guest write not visible in host memory")
	}
}
