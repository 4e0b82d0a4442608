package x86_test

import (
	"encoding/binary"
	"reflect"
	"testing"

	"github.com/viovmm/vio/arch/x86"
)

// intelHost is a cut-down KVM_GET_SUPPORTED_CPUID answer from an Intel
// host, with values that the fix-ups must replace set to junk.
func intelHost() []x86.CPUIDEntry {
	return []x86.CPUIDEntry{
		{Function: 0, EAX: 0x1f, EBX: 0x756e6547, ECX: 0x6c65746e, EDX: 0x49656e69}, // GenuineIntel
		{Function: 1, EAX: 0x806ec, EBX: 0xab0f0800, ECX: 0xf7fa3203 | 1<<24, EDX: 0x0f8bfbff &^ (1 << 28)},
		{Function: 4, Index: 0, Flags: 1, EAX: 0xfc004121}, // L1d
		{Function: 4, Index: 1, Flags: 1, EAX: 0xfc004122}, // L1i
		{Function: 4, Index: 2, Flags: 1, EAX: 0xfc004143}, // L2
		{Function: 4, Index: 3, Flags: 1, EAX: 0xfc03c163}, // L3
		{Function: 0xb, Index: 0, Flags: 1, EAX: 1, EBX: 2, ECX: 0x100, EDX: 0x77},
		{Function: 0xb, Index: 1, Flags: 1, EAX: 4, EBX: 8, ECX: 0x201, EDX: 0x77},
		{Function: 0x1f, Index: 0, Flags: 1, EAX: 1, EBX: 2, ECX: 0x100, EDX: 0x77},
		{Function: 0x40000000, EAX: 0x40000001, EBX: 1, ECX: 2, EDX: 3},
		{Function: 0x40000001, EAX: 0x01ffffff &^ x86.KVMFeaturePVSendIPI},
		{Function: 0x80000000, EAX: 0x80000008},
		{Function: 0x80000008, EAX: 0x3027, ECX: 0x1234},
	}
}

func leaf(es []x86.CPUIDEntry, fn, idx uint32) (x86.CPUIDEntry, bool) {
	for _, e := range es {
		if e.Function == fn && e.Index == idx {
			return e, true
		}
	}
	return x86.CPUIDEntry{}, false
}

func TestGuestCPUIDIntel(t *testing.T) {
	host := intelHost()
	orig := intelHost()
	const n = 6
	for cpu := 0; cpu < n; cpu++ {
		g, err := x86.GuestCPUID(host, x86.CPUIDConfig{CPU: cpu, NumCPUs: n})
		if err != nil {
			t.Fatal(err)
		}
		seen := map[[2]uint32]bool{}
		for _, e := range g {
			k := [2]uint32{e.Function, e.Index}
			if seen[k] {
				t.Errorf("leaf %#x.%d twice", e.Function, e.Index)
			}
			seen[k] = true
		}
		l1, _ := leaf(g, 1, 0)
		if got := l1.EBX >> 24; got != uint32(cpu) {
			t.Errorf("cpu %d: leaf 1 APIC ID %d", cpu, got)
		}
		if got := l1.EBX >> 16 & 0xff; got < n {
			t.Errorf("cpu %d: leaf 1 logical count %d < %d", cpu, got, n)
		}
		if l1.EBX&0xffff != 0x0800 {
			t.Errorf("leaf 1 EBX low half changed: %#x", l1.EBX)
		}
		if l1.ECX&(1<<31) == 0 || l1.ECX&(1<<24) != 0 || l1.EDX&(1<<28) == 0 {
			t.Errorf("leaf 1 ECX %#x EDX %#x: want hypervisor, no TSC deadline, HTT", l1.ECX, l1.EDX)
		}
		// Leaf 4: 8 addressable cores (6 rounded up), L3 shared by all.
		for i := uint32(0); i < 4; i++ {
			l4, _ := leaf(g, 4, i)
			if got := l4.EAX >> 26; got != 7 {
				t.Errorf("leaf 4.%d cores-1 = %d", i, got)
			}
			share := l4.EAX >> 14 & 0xfff
			if level := l4.EAX >> 5 & 7; level == 3 && share != 7 || level < 3 && share != 0 {
				t.Errorf("leaf 4.%d level %d shared by %d+1", i, level, share)
			}
			if l4.EAX&0x3fff != orig[2+i].EAX&0x3fff {
				t.Errorf("leaf 4.%d cache description changed", i)
			}
		}
		for _, fn := range []uint32{0xb, 0x1f} {
			smt, _ := leaf(g, fn, 0)
			core, _ := leaf(g, fn, 1)
			end, ok := leaf(g, fn, 2)
			if !ok || end.ECX>>8&0xff != 0 || end.EBX != 0 {
				t.Errorf("leaf %#x: no terminating subleaf: %+v", fn, end)
			}
			if smt.EBX != 1 || smt.ECX>>8&0xff != 1 || smt.EDX != uint32(cpu) || smt.Flags&x86.CPUIDFlagSignificantIndex == 0 {
				t.Errorf("leaf %#x.0 = %+v", fn, smt)
			}
			if core.EBX != n || core.ECX>>8&0xff != 2 || core.EDX != uint32(cpu) || 1<<core.EAX < n {
				t.Errorf("leaf %#x.1 = %+v", fn, core)
			}
		}
		sig, _ := leaf(g, 0x40000000, 0)
		var b [12]byte
		binary.LittleEndian.PutUint32(b[0:], sig.EBX)
		binary.LittleEndian.PutUint32(b[4:], sig.ECX)
		binary.LittleEndian.PutUint32(b[8:], sig.EDX)
		if string(b[:]) != "KVMKVMKVM\x00\x00\x00" || sig.EAX < 0x40000001 {
			t.Errorf("signature leaf %+v reads %q", sig, b)
		}
		f, _ := leaf(g, 0x40000001, 0)
		want := uint32(x86.DefaultKVMFeatures &^ x86.KVMFeaturePVSendIPI)
		if f.EAX != want {
			t.Errorf("KVM features %#x, want %#x", f.EAX, want)
		}
		for _, bit := range []uint32{x86.KVMFeatureClocksource2, x86.KVMFeaturePVEOI, x86.KVMFeaturePVUnhalt,
			x86.KVMFeatureStealTime, x86.KVMFeaturePVTLBFlush} {
			if f.EAX&bit == 0 {
				t.Errorf("KVM feature %#x missing", bit)
			}
		}
		if f.EAX&x86.KVMFeatureAsyncPF != 0 {
			t.Error("async PF offered")
		}
		// Intel: leaf 0x80000008 ECX is left alone.
		if e, _ := leaf(g, 0x80000008, 0); e.ECX != 0x1234 {
			t.Errorf("Intel 0x80000008 ECX changed to %#x", e.ECX)
		}
	}
	if !reflect.DeepEqual(host, orig) {
		t.Error("GuestCPUID modified its input")
	}
	g, _ := x86.GuestCPUID(host, x86.CPUIDConfig{CPU: 0, NumCPUs: 1, TSCDeadline: true})
	if l1, _ := leaf(g, 1, 0); l1.ECX&(1<<24) == 0 || l1.EDX&(1<<28) != 0 {
		t.Errorf("1 CPU with TSC deadline: leaf 1 ECX %#x EDX %#x", l1.ECX, l1.EDX)
	}
}

func TestGuestCPUIDAMD(t *testing.T) {
	host := []x86.CPUIDEntry{
		{Function: 0, EAX: 0x10, EBX: 0x68747541, ECX: 0x444d4163, EDX: 0x69746e65}, // AuthenticAMD
		{Function: 1, EBX: 0x00020800},
		{Function: 0x80000008, EAX: 0x3030, ECX: 0x7007},
		{Function: 0x8000001d, Index: 0, Flags: 1, EAX: 0x00004121},
		{Function: 0x8000001d, Index: 1, Flags: 1, EAX: 0x0003c163},
		{Function: 0x8000001e, EAX: 9, EBX: 0x109, ECX: 0x300},
	}
	g, err := x86.GuestCPUID(host, x86.CPUIDConfig{CPU: 2, NumCPUs: 3})
	if err != nil {
		t.Fatal(err)
	}
	e, _ := leaf(g, 0x80000008, 0)
	if e.ECX&0xff != 2 || e.ECX>>12&0xf != 2 {
		t.Errorf("0x80000008 ECX %#x: want NC=2, ApicIdCoreIdSize=2", e.ECX)
	}
	if l1, _ := leaf(g, 0x8000001d, 0); l1.EAX>>14&0xfff != 0 || l1.EAX&0x3fff != 0x0121 {
		t.Errorf("AMD L1 cache leaf %#x", l1.EAX)
	}
	if l3, _ := leaf(g, 0x8000001d, 1); l3.EAX>>14&0xfff != 3 || l3.EAX&0x3fff != 0x0163 {
		t.Errorf("AMD L3 cache leaf %#x: want shared by 4 (3 CPUs rounded up)", l3.EAX)
	}
	e, _ = leaf(g, 0x8000001e, 0)
	if e.EAX != 2 || e.EBX&0xff != 2 || e.EBX>>8&0xff != 0 {
		t.Errorf("0x8000001e %+v", e)
	}
	if _, ok := leaf(g, 0xb, 0); ok {
		t.Error("invented leaf 0xB the host does not have")
	}
	// The features leaf is there even when the host table lacks it.
	if f, ok := leaf(g, 0x40000001, 0); !ok || f.EAX != x86.DefaultKVMFeatures {
		t.Errorf("features %+v", f)
	}
}

func TestGuestCPUIDBadConfig(t *testing.T) {
	for _, c := range []x86.CPUIDConfig{{CPU: 0, NumCPUs: 0}, {CPU: 2, NumCPUs: 2}, {CPU: -1, NumCPUs: 1}, {CPU: 0, NumCPUs: 300}} {
		if _, err := x86.GuestCPUID(intelHost(), c); err == nil {
			t.Errorf("accepted %+v", c)
		}
	}
	if _, err := x86.GuestCPUID(nil, x86.CPUIDConfig{NumCPUs: 1}); err == nil {
		t.Error("accepted a host table without leaf 1")
	}
}
