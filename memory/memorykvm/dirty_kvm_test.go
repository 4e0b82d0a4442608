// Package memorykvm_test checks guest memory against a real KVM: a guest
// runs on memfd-backed RAM, and its writes (from KVM's dirty log) and the
// VMM's writes (from package memory's bitmap) come out of CollectDirty as
// one set. It lives apart from package memory so that memory's own tests
// stay pure Go and never need the lab.
package memorykvm_test

import (
	"errors"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/kvm"
	"github.com/viovmm/vio/lab/labtest"
	"github.com/viovmm/vio/memory"
)

func TestMain(m *testing.M) { labtest.MainKVM(m) }

func TestGuestAndVMMWritesCollected(t *testing.T) {
	sys, err := kvm.Open("")
	if err != nil {
		t.Fatal(err)
	}
	defer sys.Close()
	vm, err := sys.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	mem, err := memory.NewWithOptions([]memory.Layout{{GPA: 0, Size: 0x10000}}, memory.Options{Backing: memory.Memfd})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	// Real-mode code at 0x1000: two stores, then HLT.
	code := []byte{
		0xb0, 0x5a, // mov al, 0x5a
		0xa2, 0x00, 0x30, // mov [0x3000], al
		0xa2, 0x10, 0x70, // mov [0x7010], al
		0xf4, // hlt
	}
	if _, err := mem.WriteAt(code, 0x1000); err != nil {
		t.Fatal(err)
	}
	r := mem.Regions()[0]
	if err := vm.SetUserMemoryRegion(kvm.MemoryRegion{Slot: 0, GPA: r.GPA, Host: r.Data, LogDirty: true}); err != nil {
		t.Fatal(err)
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
	s.Cs.Base, s.Cs.Selector = 0, 0
	if err := cpu.SetSregs(s); err != nil {
		t.Fatal(err)
	}
	if err := cpu.SetRegs(kvm.Regs{Rip: 0x1000, Rflags: 2}); err != nil {
		t.Fatal(err)
	}

	getLog := func(b []uint64) error { return vm.GetDirtyLog(0, b) }
	mem.EnableDirtyTracking()
	if _, err := mem.CollectDirty(0, getLog); err != nil { // start clean
		t.Fatal(err)
	}
	for {
		err := cpu.Run()
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		break
	}
	if reason := cpu.Exit().Reason(); reason != kvm.ExitHLT {
		t.Fatalf("guest exit %v, want HLT", reason)
	}
	if err := mem.StoreUint32(0xa000, 1); err != nil { // the VMM's own write
		t.Fatal(err)
	}
	b, err := mem.CollectDirty(0, getLog)
	if err != nil {
		t.Fatal(err)
	}
	got := slices.Collect(memory.DirtyPages(b))
	for _, p := range []uint64{3, 7, 0xa} {
		if !slices.Contains(got, p) {
			t.Errorf("page %d written but not collected (got %v)", p, got)
		}
	}
	for _, p := range []uint64{5, 0xc} {
		if slices.Contains(got, p) {
			t.Errorf("page %d collected but never written (got %v)", p, got)
		}
	}

	// Another mapping of the memfd (what a vhost-user back-end gets) sees
	// the guest's store.
	fd, off, ok := r.File()
	if !ok {
		t.Fatal("memfd-backed region offers no file")
	}
	peer, err := unix.Mmap(fd, int64(off), int(r.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(peer)
	if peer[0x3000] != 0x5a || peer[0x7010] != 0x5a {
		t.Errorf("second mapping sees %#x/%#x, want the guest's 0x5a", peer[0x3000], peer[0x7010])
	}
}
