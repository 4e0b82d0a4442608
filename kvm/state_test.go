package kvm_test

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/kvm"
)

// counterGuest sets SYSENTER_CS with WRMSR, then loops: report the counter
// in EBX on port 0x80, increment it, read SYSENTER_CS back with RDMSR and
// report it on port 0x81.
var counterGuest = []byte{
	0x66, 0xb9, 0x74, 0x01, 0x00, 0x00, // mov ecx, 0x174 (IA32_SYSENTER_CS)
	0x66, 0x31, 0xd2, // xor edx, edx
	0x66, 0xb8, 0x42, 0x00, 0x00, 0x00, // mov eax, 0x42
	0x0f, 0x30, // wrmsr
	0x66, 0xbb, 0x00, 0x01, 0x00, 0x00, // mov ebx, 0x100
	// loop (0x1017):
	0x66, 0x89, 0xd8, // mov eax, ebx
	0x66, 0xe7, 0x80, // out 0x80, eax
	0x66, 0x43, // inc ebx
	0x0f, 0x32, // rdmsr
	0x66, 0xe7, 0x81, // out 0x81, eax
	0xeb, 0xef, // jmp loop
}

func withIRQChip(t *testing.T) func(*kvm.VM) {
	return func(vm *kvm.VM) {
		if err := vm.SetTSSAddr(0xfffbd000); err != nil {
			t.Fatal(err)
		}
		if err := vm.CreateIRQChip(); err != nil {
			t.Fatal(err)
		}
		if err := vm.CreatePIT2(kvm.PITConfig{Flags: kvm.PITSpeakerDummy}); err != nil {
			t.Fatal(err)
		}
	}
}

// expectOut runs g to its next exit, which must be an OUT to port of val.
func expectOut(t *testing.T, g *guest, port uint16, val uint32) {
	t.Helper()
	if r := g.run(t); r != kvm.ExitIO {
		t.Fatalf("exit %v, want out %#x", r, port)
	}
	io, err := g.cpu.Exit().IO()
	if err != nil {
		t.Fatal(err)
	}
	if got := binary.LittleEndian.Uint32(io.Data); !io.Out || io.Port != port || got != val {
		t.Fatalf("exit: out=%v port %#x value %#x, want out %#x of %#x", io.Out, io.Port, got, port, val)
	}
}

// TestVCPUStateMigrates runs a guest a few iterations, saves its vCPU and
// VM state, builds a second VM from a copy of its memory, restores the
// state there and lets the copy continue: it must go on from the next
// instruction with its counter, its MSR (written by the guest itself) and
// its LAPIC, interrupt controllers and PIT as they were.
func TestVCPUStateMigrates(t *testing.T) {
	src := newGuest(t, counterGuest, false, withIRQChip(t))
	expectOut(t, src, 0x80, 0x100)
	expectOut(t, src, 0x81, 0x42)
	expectOut(t, src, 0x80, 0x101)
	// The OUT is complete only once KVM_RUN is entered again: do that
	// without running the guest, as a paused vCPU does.
	src.cpu.SetImmediateExit(true)
	if err := src.cpu.Run(); !errors.Is(err, unix.EINTR) {
		t.Fatalf("completing the exit: %v, want EINTR", err)
	}
	src.cpu.SetImmediateExit(false)

	// State the guest did not set itself, to see it travel.
	const apicTPR, apicLVT0 = 0x80, 0x350
	l, err := src.cpu.GetLAPIC()
	if err != nil {
		t.Fatal(err)
	}
	l.SetReg(apicTPR, 0x30)
	l.SetReg(apicLVT0, 0x700) // ExtINT, as vmm programs it
	if err := src.cpu.SetLAPIC(l); err != nil {
		t.Fatal(err)
	}
	if err := src.cpu.SetDebugRegs(kvm.DebugRegs{Db: [4]uint64{0x1000, 0x2000}, Dr7: 0x400}); err != nil {
		t.Fatal(err)
	}

	msrList, err := src.sys.MSRIndexList()
	if err != nil {
		t.Fatal(err)
	}
	saved, skipped, err := src.cpu.SaveState(msrList)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("saved %d of %d MSRs (unreadable here: %#x); XSAVE area %d bytes; TSC %d kHz",
		len(saved.MSRs), len(msrList), skipped, len(saved.XSave), saved.TSCKHz)
	// The state travels as JSON, as in a snapshot.
	b, err := json.Marshal(saved)
	if err != nil {
		t.Fatal(err)
	}
	var st kvm.VCPUState
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}

	var chips [3][]byte
	for i, id := range []uint32{kvm.IRQChipPICMaster, kvm.IRQChipPICSlave, kvm.IRQChipIOAPIC} {
		if chips[i], err = src.vm.GetIRQChip(id); err != nil {
			t.Fatal(err)
		}
	}
	pit, err := src.vm.GetPIT2()
	if err != nil {
		t.Fatal(err)
	}
	clock, err := src.vm.GetClock()
	if err != nil {
		t.Fatal(err)
	}

	// The copy: same code, memory copied, nothing run yet.
	dst := newGuest(t, nil, false, withIRQChip(t))
	copy(dst.mem, src.mem)
	for i, id := range []uint32{kvm.IRQChipPICMaster, kvm.IRQChipPICSlave, kvm.IRQChipIOAPIC} {
		if err := dst.vm.SetIRQChip(id, chips[i]); err != nil {
			t.Fatal(err)
		}
		got, err := dst.vm.GetIRQChip(id)
		if err != nil || !slices.Equal(got, chips[i]) {
			t.Errorf("irqchip %d differs after restore (%v)", id, err)
		}
	}
	if err := dst.vm.SetIRQChip(kvm.IRQChipIOAPIC, chips[2][:10]); err == nil {
		t.Error("a short irqchip state was accepted")
	}
	if err := dst.vm.SetPIT2(pit); err != nil {
		t.Fatal(err)
	}
	if got, err := dst.vm.GetPIT2(); err != nil || got.Channels[0].Mode != pit.Channels[0].Mode || got.Channels[0].Count != pit.Channels[0].Count {
		t.Errorf("PIT channel 0 %+v after restore, want %+v (%v)", got.Channels[0], pit.Channels[0], err)
	}
	if err := dst.vm.SetClock(kvm.ClockData{Clock: clock.Clock}); err != nil {
		t.Fatal(err)
	}
	refused, err := dst.cpu.RestoreState(&st)
	if err != nil {
		t.Fatal(err)
	}
	if len(refused) > 0 {
		t.Errorf("MSRs refused on restore: %#x", refused)
	}

	got, _, err := dst.cpu.SaveState(msrList)
	if err != nil {
		t.Fatal(err)
	}
	if got.Regs != saved.Regs {
		t.Errorf("regs %+v after restore, want %+v", got.Regs, saved.Regs)
	}
	if got.Sregs.Cr0 != saved.Sregs.Cr0 || got.Sregs.Cs != saved.Sregs.Cs || got.Sregs.APICBase != saved.Sregs.APICBase {
		t.Errorf("sregs %+v after restore, want %+v", got.Sregs, saved.Sregs)
	}
	if got.LAPIC.Reg(apicTPR) != 0x30 || got.LAPIC.Reg(apicLVT0) != 0x700 {
		t.Errorf("LAPIC TPR %#x LVT0 %#x after restore, want 0x30 0x700", got.LAPIC.Reg(apicTPR), got.LAPIC.Reg(apicLVT0))
	}
	if got.DebugRegs.Db[1] != 0x2000 || got.DebugRegs.Dr7&0xff != 0 {
		t.Errorf("debug registers %+v after restore", got.DebugRegs)
	}
	if !slices.Equal(got.XSave, saved.XSave) {
		t.Error("XSAVE area differs after restore")
	}
	if got.MPState != saved.MPState {
		t.Errorf("MP state %d after restore, want %d", got.MPState, saved.MPState)
	}
	want := map[uint32]uint64{}
	for _, m := range saved.MSRs {
		want[m.Index] = m.Data
	}
	const msrTSC, msrSysenterCS = 0x10, 0x174
	for _, m := range got.MSRs {
		switch m.Index {
		case msrTSC:
			// The TSC runs on; it must not have gone back to 0.
			if m.Data < want[msrTSC] {
				t.Errorf("TSC %d after restore, below the saved %d", m.Data, want[msrTSC])
			}
		case msrSysenterCS:
			if m.Data != 0x42 {
				t.Errorf("SYSENTER_CS %#x after restore, want 0x42 (the guest's WRMSR)", m.Data)
			}
		}
	}

	// The copy continues where the original stopped: the next
	// instruction reads the MSR the guest wrote before the save.
	expectOut(t, dst, 0x81, 0x42)
	expectOut(t, dst, 0x80, 0x102)
	// The original is unaffected and continues too.
	expectOut(t, src, 0x81, 0x42)
	expectOut(t, src, 0x80, 0x102)

	if _, err := dst.cpu.RestoreState(&kvm.VCPUState{MSRs: make([]kvm.MSREntry, kvm.MaxSavedMSRs+1)}); err == nil {
		t.Error("a state with too many MSRs was accepted")
	}
	if err := dst.cpu.KVMClockCtrl(); err == nil {
		t.Log("KVM_KVMCLOCK_CTRL succeeded on a guest without kvmclock")
	}
}
