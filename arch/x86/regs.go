package x86

import (
	"encoding/binary"
	"fmt"

	"github.com/viovmm/vio/memory"
)

// Regs mirrors struct kvm_regs field for field, so the vmm converts it
// by plain assignment.
type Regs struct {
	Rax, Rbx, Rcx, Rdx, Rsi, Rdi, Rsp, Rbp uint64
	R8, R9, R10, R11, R12, R13, R14, R15   uint64
	Rip, Rflags                            uint64
}

// Segment mirrors struct kvm_segment (without padding). Limit is the
// byte-granular limit, already scaled by G, as KVM wants it.
type Segment struct {
	Base     uint64
	Limit    uint32
	Selector uint16
	Type     uint8
	Present  uint8
	Dpl      uint8
	Db       uint8
	S        uint8
	L        uint8
	G        uint8
	Avl      uint8
	Unusable uint8
}

// DTable mirrors struct kvm_dtable: a GDT or IDT register.
type DTable struct {
	Base  uint64
	Limit uint16
}

// Sregs mirrors the struct kvm_sregs fields vio sets for boot. The vmm
// starts from KVM_GET_SREGS (which keeps the APIC base and the interrupt
// bitmap as KVM has them) and overwrites these.
type Sregs struct {
	Cs, Ds, Es, Fs, Gs, Ss, Tr, Ldt Segment
	Gdt, Idt                        DTable
	Cr0, Cr2, Cr3, Cr4, Cr8, Efer   uint64
}

// Control register and EFER bits used for the 64-bit entry.
const (
	CR0PE   = 1 << 0  // protected mode
	CR0ET   = 1 << 4  // extension type (hard-wired on modern CPUs)
	CR0NE   = 1 << 5  // native x87 error reporting
	CR0PG   = 1 << 31 // paging
	CR4PAE  = 1 << 5  // physical address extension, required for long mode
	EFERLME = 1 << 8  // long mode enable
	EFERLMA = 1 << 10 // long mode active
)

// Selectors of the boot GDT. boot.rst requires __BOOT_CS (0x10) and
// __BOOT_DS (0x18) for the 64-bit entry; entries 0 and 1 stay null.
const (
	SelectorCode = 0x10
	SelectorData = 0x18
	SelectorTSS  = 0x20 // a 16-byte system descriptor: entries 4 and 5
	GDTEntries   = 6    // null, null, code, data, TSS (two slots)
)

// Flat segments the GDT holds, in KVM's form.
var (
	codeSeg = Segment{Limit: 0xfffff, Selector: SelectorCode, Type: 0xb, Present: 1, S: 1, L: 1, G: 1}
	dataSeg = Segment{Limit: 0xfffff, Selector: SelectorData, Type: 0x3, Present: 1, S: 1, Db: 1, G: 1}
	// KVM (VMX) insists on a present, busy TSS in TR; the guest never
	// uses it before Linux loads its own.
	tssSeg = Segment{Limit: 0x67, Selector: SelectorTSS, Type: 0xb, Present: 1}
)

// EncodeDescriptor packs the low 8 bytes of a segment descriptor. Limit is
// the raw 20-bit limit (in pages when G is set).
func EncodeDescriptor(s Segment) uint64 {
	access := uint64(s.Type&0xf) | uint64(s.S&1)<<4 | uint64(s.Dpl&3)<<5 | uint64(s.Present&1)<<7
	flags := uint64(s.Avl&1) | uint64(s.L&1)<<1 | uint64(s.Db&1)<<2 | uint64(s.G&1)<<3
	return uint64(s.Limit&0xffff) | (s.Base&0xffffff)<<16 | access<<40 |
		uint64(s.Limit>>16&0xf)<<48 | flags<<52 | (s.Base>>24&0xff)<<56
}

// DecodeDescriptor is the inverse of EncodeDescriptor, as the CPU loads a
// descriptor into a segment register: the limit is scaled to bytes when G
// is set. It gives KVM's view of the segment a selector names.
func DecodeDescriptor(sel uint16, d uint64) Segment {
	s := Segment{
		Base:     d>>16&0xffffff | (d>>56&0xff)<<24,
		Limit:    uint32(d&0xffff | (d>>48&0xf)<<16),
		Selector: sel,
		Type:     uint8(d >> 40 & 0xf),
		S:        uint8(d >> 44 & 1),
		Dpl:      uint8(d >> 45 & 3),
		Present:  uint8(d >> 47 & 1),
		Avl:      uint8(d >> 52 & 1),
		L:        uint8(d >> 53 & 1),
		Db:       uint8(d >> 54 & 1),
		G:        uint8(d >> 55 & 1),
	}
	if s.G == 1 {
		s.Limit = s.Limit<<12 | 0xfff
	}
	return s
}

// GDT returns the boot GDT's descriptors.
func GDT() [GDTEntries]uint64 {
	var g [GDTEntries]uint64
	g[SelectorCode/8] = EncodeDescriptor(codeSeg)
	g[SelectorData/8] = EncodeDescriptor(dataSeg)
	g[SelectorTSS/8] = EncodeDescriptor(tssSeg)
	g[SelectorTSS/8+1] = 0 // base bits 63:32 of the TSS descriptor
	return g
}

// Page table entry bits.
const (
	PTEPresent = 1 << 0
	PTEWrite   = 1 << 1
	PTEPS      = 1 << 7 // large page, in a page directory: 2 MiB
)

// IdentityMapSize is how much of the address space the boot page tables
// map 1:1: the kernel, zero page, command line and initrd all lie below
// 4 GiB. Linux builds its own tables before it touches anything else.
const IdentityMapSize = 4 << 30

// PageTables returns the 4-level identity map with 2 MiB pages covering
// IdentityMapSize, as (guest address, page content) pairs: a PML4 at
// PML4Addr, one PDPT at PDPTAddr and four page directories from PDAddr.
func PageTables() map[uint64][]byte {
	le := binary.LittleEndian
	pml4 := make([]byte, 4096)
	pdpt := make([]byte, 4096)
	le.PutUint64(pml4, PDPTAddr|PTEPresent|PTEWrite)
	out := map[uint64][]byte{PML4Addr: pml4, PDPTAddr: pdpt}
	const gibs = IdentityMapSize >> 30
	for g := uint64(0); g < gibs; g++ {
		pdAddr := PDAddr + g*4096
		le.PutUint64(pdpt[g*8:], pdAddr|PTEPresent|PTEWrite)
		pd := make([]byte, 4096)
		for i := uint64(0); i < 512; i++ {
			le.PutUint64(pd[i*8:], (g<<30+i<<21)|PTEPresent|PTEWrite|PTEPS)
		}
		out[pdAddr] = pd
	}
	return out
}

// SetupLongMode writes the boot GDT, an empty IDT and the identity page
// tables into guest memory and returns the special registers that put a
// vCPU in 64-bit mode on them, with CS = __BOOT_CS and the data segments
// = __BOOT_DS as boot.rst's 64-bit protocol requires. Interrupts stay
// disabled (Regs.Rflags has IF clear) until the kernel sets up its IDT.
func SetupLongMode(mem *memory.Memory) (Sregs, error) {
	le := binary.LittleEndian
	gdt := GDT()
	b := make([]byte, 8*len(gdt))
	for i, d := range gdt {
		le.PutUint64(b[i*8:], d)
	}
	if _, err := mem.WriteAt(b, GDTAddr); err != nil {
		return Sregs{}, fmt.Errorf("x86: writing GDT: %w", err)
	}
	if _, err := mem.WriteAt(make([]byte, 8), IDTAddr); err != nil {
		return Sregs{}, fmt.Errorf("x86: writing IDT: %w", err)
	}
	for addr, page := range PageTables() {
		if _, err := mem.WriteAt(page, int64(addr)); err != nil {
			return Sregs{}, fmt.Errorf("x86: writing page tables: %w", err)
		}
	}
	seg := func(sel uint16) Segment { return DecodeDescriptor(sel, gdt[sel/8]) }
	data := seg(SelectorData)
	return Sregs{
		Cs: seg(SelectorCode),
		Ds: data, Es: data, Fs: data, Gs: data, Ss: data,
		Tr: seg(SelectorTSS),
		// KVM's reset value for LDTR: present, type LDT, selector 0.
		Ldt:  Segment{Limit: 0xffff, Type: 2, Present: 1},
		Gdt:  DTable{Base: GDTAddr, Limit: uint16(len(b) - 1)},
		Idt:  DTable{Base: IDTAddr, Limit: 7},
		Cr0:  CR0PE | CR0ET | CR0NE | CR0PG,
		Cr3:  PML4Addr,
		Cr4:  CR4PAE,
		Efer: EFERLME | EFERLMA,
	}, nil
}

// BootRegs returns the general registers for the 64-bit entry at entry
// (loader.LoadInfo.Entry64): RSI points at the zero page, the stack is
// below the page tables, and RFLAGS has only its always-one bit 1 set.
func BootRegs(entry uint64) Regs {
	return Regs{
		Rip:    entry,
		Rsi:    ZeroPageAddr,
		Rsp:    BootStack,
		Rbp:    BootStack,
		Rflags: 0x2,
	}
}
