package x86

import (
	"fmt"
	"math/bits"
	"sort"
)

// CPUIDEntry mirrors struct kvm_cpuid_entry2 without its padding.
type CPUIDEntry struct {
	Function, Index, Flags uint32
	EAX, EBX, ECX, EDX     uint32
}

// CPUIDFlagSignificantIndex is KVM_CPUID_FLAG_SIGNIFCANT_INDEX: the leaf
// has subleaves selected by ECX, and Index is meaningful.
const CPUIDFlagSignificantIndex = 1

// KVM paravirtual CPUID leaves and feature bits
// (Documentation/virt/kvm/x86/cpuid.rst).
const (
	CPUIDKVMSignature = 0x40000000
	CPUIDKVMFeatures  = 0x40000001

	KVMFeatureClocksource       = 1 << 0
	KVMFeatureNopIODelay        = 1 << 1
	KVMFeatureClocksource2      = 1 << 3
	KVMFeatureAsyncPF           = 1 << 4
	KVMFeatureStealTime         = 1 << 5
	KVMFeaturePVEOI             = 1 << 6
	KVMFeaturePVUnhalt          = 1 << 7
	KVMFeaturePVTLBFlush        = 1 << 9
	KVMFeatureAsyncPFVMExit     = 1 << 10
	KVMFeaturePVSendIPI         = 1 << 11
	KVMFeaturePollControl       = 1 << 12
	KVMFeaturePVSchedYield      = 1 << 13
	KVMFeatureAsyncPFInt        = 1 << 14
	KVMFeatureMSIExtDestID      = 1 << 15
	KVMFeatureClocksourceStable = 1 << 24
)

// DefaultKVMFeatures is what vio offers a guest, if the host KVM supports
// it: kvmclock (both MSR sets, marked stable), no I/O port delays, steal
// time, PV EOI, PV spinlocks (unhalt), PV TLB flush and PV IPIs, PV sched
// yield. Async page faults stay off: vio's guest memory is not swapped
// behind the guest's back, and the feature costs an interrupt vector and
// complexity for nothing.
const DefaultKVMFeatures = KVMFeatureClocksource | KVMFeatureNopIODelay | KVMFeatureClocksource2 |
	KVMFeatureStealTime | KVMFeaturePVEOI | KVMFeaturePVUnhalt | KVMFeaturePVTLBFlush |
	KVMFeaturePVSendIPI | KVMFeaturePVSchedYield | KVMFeatureClocksourceStable

// Leaf 1 bits.
const (
	cpuid1ECXTSCDeadline = 1 << 24
	cpuid1ECXHypervisor  = 1 << 31
	cpuid1EDXHTT         = 1 << 28
)

// CPUIDConfig says which vCPU the table is for and what surrounds it.
type CPUIDConfig struct {
	CPU     int // this vCPU's index, which is also its APIC ID
	NumCPUs int // vCPUs in the VM; they form one socket of single-thread cores
	// TSCDeadline reports that KVM's LAPIC emulates the TSC deadline
	// timer (KVM_CAP_TSC_DEADLINE_TIMER): KVM does not set the CPUID bit
	// itself, and the guest must not see it otherwise.
	TSCDeadline bool
	// KVMFeatures overrides DefaultKVMFeatures when non-zero. The result
	// is still limited to what the host reports in leaf 0x40000001.
	KVMFeatures uint32
}

// GuestCPUID derives one vCPU's CPUID table from what the host KVM supports
// (KVM_GET_SUPPORTED_CPUID). It is a pure function: the input is not
// modified. Changes:
//   - leaf 1: APIC ID and logical-processor count in EBX, hypervisor bit,
//     HTT when there is more than one vCPU, TSC deadline per config;
//   - leaf 4: cores per package and cache sharing for the topology;
//   - leaves 0xB and 0x1F: the x2APIC topology (SMT level of one thread,
//     core level of NumCPUs), replacing the host's;
//   - leaves 0x40000000/1: the KVM signature and the paravirtual features;
//   - AMD leaves 0x80000008 ECX, 0x8000001D and 0x8000001E: core count,
//     cache sharing and IDs.
func GuestCPUID(host []CPUIDEntry, cfg CPUIDConfig) ([]CPUIDEntry, error) {
	n := cfg.NumCPUs
	if n < 1 || n > MaxCPUs || cfg.CPU < 0 || cfg.CPU >= n {
		return nil, fmt.Errorf("x86: vCPU %d of %d: want 1..%d vCPUs", cfg.CPU, n, MaxCPUs)
	}
	apicID := uint32(cfg.CPU)
	// Bits of the APIC ID that number cores within the package.
	coreBits := uint32(bits.Len32(uint32(n - 1)))
	pow2 := uint32(1) << coreBits

	var out []CPUIDEntry
	var hostKVMFeatures uint32
	haveKVMLeaf, have1, haveB, have1F := false, false, false, false
	amd := false
	for _, e := range host {
		switch {
		case e.Function == 0:
			// "AuthenticAMD" / "HygonGenuine" put the vendor in EBX.
			amd = e.EBX == 0x68747541 || e.EBX == 0x6f677948
		case e.Function == CPUIDKVMFeatures:
			hostKVMFeatures, haveKVMLeaf = e.EAX, true
		}
	}
	for _, e := range host {
		switch e.Function {
		case 1:
			have1 = true
			e.EBX = e.EBX&0x0000ffff | min(pow2, 255)<<16 | apicID<<24
			e.ECX |= cpuid1ECXHypervisor
			if cfg.TSCDeadline {
				e.ECX |= cpuid1ECXTSCDeadline
			} else {
				e.ECX &^= cpuid1ECXTSCDeadline
			}
			if n > 1 {
				e.EDX |= cpuid1EDXHTT
			} else {
				e.EDX &^= cpuid1EDXHTT
			}
		case 4:
			// EAX[31:26]: addressable core IDs in the package - 1;
			// EAX[25:14]: logical processors sharing this cache - 1.
			level := e.EAX >> 5 & 7
			e.EAX &= 0x3fff
			e.EAX |= (min(pow2, 64) - 1) << 26
			if level >= 3 {
				e.EAX |= (min(pow2, 4096) - 1) << 14
			}
		case 0xb:
			haveB = true
			continue
		case 0x1f:
			have1F = true
			continue
		case 0x80000008:
			if amd {
				// ECX[7:0]: cores - 1; ECX[15:12]: APIC ID bits for cores.
				e.ECX = e.ECX&^0xf0ff | uint32(n-1)&0xff | coreBits<<12
			}
		case 0x8000001d:
			// AMD's leaf 4: EAX[25:14] is logical processors
			// sharing the cache - 1; L3 is shared by all.
			level := e.EAX >> 5 & 7
			e.EAX &^= 0xfff << 14
			if level >= 3 {
				e.EAX |= (min(pow2, 4096) - 1) << 14
			}
		case 0x8000001e:
			// Extended APIC ID, core ID with one thread per core,
			// node 0.
			e.EAX = apicID
			e.EBX = apicID & 0xff
			e.ECX = 0
		}
		if e.Function&0xffffff00 == 0x40000000 {
			continue // hypervisor leaves are ours to define
		}
		out = append(out, e)
	}
	if !have1 {
		return nil, fmt.Errorf("x86: host CPUID has no leaf 1")
	}
	topo := func(fn uint32) {
		// Subleaf 0: SMT level, one thread per core. Subleaf 1: core
		// level, NumCPUs cores. Subleaf 2: invalid, ends the list.
		// EAX: shift to the next level's ID; EBX: logical processors
		// at this level; ECX: level number | type<<8; EDX: x2APIC ID.
		out = append(out,
			CPUIDEntry{Function: fn, Index: 0, Flags: CPUIDFlagSignificantIndex, EAX: 0, EBX: 1, ECX: 0 | 1<<8, EDX: apicID},
			CPUIDEntry{Function: fn, Index: 1, Flags: CPUIDFlagSignificantIndex, EAX: coreBits, EBX: uint32(n), ECX: 1 | 2<<8, EDX: apicID},
			CPUIDEntry{Function: fn, Index: 2, Flags: CPUIDFlagSignificantIndex, ECX: 2, EDX: apicID},
		)
	}
	if haveB {
		topo(0xb)
	}
	if have1F {
		topo(0x1f)
	}
	feat := cfg.KVMFeatures
	if feat == 0 {
		feat = DefaultKVMFeatures
	}
	if haveKVMLeaf {
		feat &= hostKVMFeatures
	}
	out = append(out,
		// "KVMKVMKVM\0\0\0" in EBX, ECX, EDX; EAX is the last leaf.
		CPUIDEntry{Function: CPUIDKVMSignature, EAX: CPUIDKVMFeatures, EBX: 0x4b4d564b, ECX: 0x564b4d56, EDX: 0x4d},
		CPUIDEntry{Function: CPUIDKVMFeatures, EAX: feat},
	)
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Function != out[j].Function {
			return out[i].Function < out[j].Function
		}
		return out[i].Index < out[j].Index
	})
	return out, nil
}

// MaxCPUs is the most vCPUs vio's x86 platform describes: APIC IDs are
// 8 bits in the MP table and in CPUID leaf 1, and the IOAPIC takes the ID
// after the last CPU.
const MaxCPUs = 254
