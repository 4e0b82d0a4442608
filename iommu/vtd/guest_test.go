package vtd_test

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/viovmm/vio/iommu/vtd"
	"github.com/viovmm/vio/memory"
)

// This file is a small guest IOMMU driver for the tests: it builds root,
// context and page tables in guest RAM and programs the unit through its
// MMIO registers, the way Linux's intel-iommu driver does in legacy mode.

// Register offsets as the guest finds them (the unit's CAP.FRO and
// ECAP.IRO are checked against these in TestResetState).
const (
	rVER     = 0x00
	rCAP     = 0x08
	rECAP    = 0x10
	rGCMD    = 0x18
	rGSTS    = 0x1c
	rRTADDR  = 0x20
	rCCMD    = 0x28
	rFSTS    = 0x34
	rFECTL   = 0x38
	rFEDATA  = 0x3c
	rFEADDR  = 0x40
	rFEUADDR = 0x44
	rPMEN    = 0x64
	rIQH     = 0x80
	rIQT     = 0x88
	rIQA     = 0x90
	rICS     = 0x9c
	rIECTL   = 0xa0
	rIEDATA  = 0xa4
	rIEADDR  = 0xa8
	rIEUADDR = 0xac
	rIVA     = 0x100
	rIOTLB   = 0x108
	rFRCD    = 0x200

	gTE   = 1 << 31
	gSRTP = 1 << 30
	gQIE  = 1 << 26

	pR  = 1
	pW  = 2
	pRW = 3
	pPS = 1 << 7

	kib4 = 4 << 10
	mib2 = 2 << 20
	gib1 = 1 << 30

	ramSize = 64 << 20
	domain  = 7
	sid     = 0x0018 // 00:03.0
)

type msi struct {
	addr uint64
	data uint32
}

type guest struct {
	t     testing.TB
	mem   *memory.Memory
	u     *vtd.Unit
	next  uint64 // page allocator for tables
	msis  []msi
	root  uint64                // root table
	gcmd  uint32                // persistent GCMD bits, as Linux keeps them
	queue *queue                // invalidation queue, once enabled
	views map[uint16]memory.DMA // long-lived views, as devices keep them
}

func newGuest(t testing.TB, cfg vtd.Config) *guest {
	t.Helper()
	mem, err := memory.New([]memory.Layout{{GPA: 0, Size: ramSize}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	g := &guest{t: t, mem: mem, next: 48 << 20}
	cfg.Mem = mem
	cfg.Interrupt = func(addr uint64, data uint32) { g.msis = append(g.msis, msi{addr, data}) }
	u, err := vtd.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	g.u = u
	return g
}

// alloc returns a zeroed 4 KiB page for tables (from 48 MiB up, so data
// pages below stay clear of them).
func (g *guest) alloc() uint64 {
	p := g.next
	g.next += kib4
	if _, err := g.mem.WriteAt(make([]byte, kib4), int64(p)); err != nil {
		g.t.Fatal(err)
	}
	return p
}

func (g *guest) r32(off uint64) uint32 {
	b := make([]byte, 4)
	g.u.Read(off, b)
	return binary.LittleEndian.Uint32(b)
}

func (g *guest) w32(off uint64, v uint32) {
	b := binary.LittleEndian.AppendUint32(nil, v)
	g.u.Write(off, b)
}

func (g *guest) r64(off uint64) uint64 {
	b := make([]byte, 8)
	g.u.Read(off, b)
	return binary.LittleEndian.Uint64(b)
}

func (g *guest) w64(off uint64, v uint64) {
	g.u.Write(off, binary.LittleEndian.AppendUint64(nil, v))
}

func (g *guest) memR64(gpa uint64) uint64 {
	var b [8]byte
	if _, err := g.mem.ReadAt(b[:], int64(gpa)); err != nil {
		g.t.Fatal(err)
	}
	return binary.LittleEndian.Uint64(b[:])
}

func (g *guest) memW64(gpa, v uint64) {
	if _, err := g.mem.WriteAt(binary.LittleEndian.AppendUint64(nil, v), int64(gpa)); err != nil {
		g.t.Fatal(err)
	}
}

// setRoot allocates a root table and latches it (GCMD.SRTP), checking
// GSTS.RTPS as Linux's iommu_set_root_entry waits for it.
func (g *guest) setRoot() {
	g.root = g.alloc()
	g.w64(rRTADDR, g.root)
	g.w32(rGCMD, g.gcmd|gSRTP)
	if g.r32(rGSTS)&gSRTP == 0 {
		g.t.Fatal("GSTS.RTPS not set after SRTP")
	}
}

func (g *guest) enable() {
	g.gcmd |= gTE
	g.w32(rGCMD, g.gcmd)
	if g.r32(rGSTS)&gTE == 0 {
		g.t.Fatal("GSTS.TES not set after TE")
	}
}

// setContext writes sid's context entry: translation type tt (0
// untranslated, 2 pass-through), address width aw (1: 3 levels, 2: 4).
func (g *guest) setContext(s uint16, did uint16, tt, aw, table uint64, fpd bool) {
	re := g.root + uint64(s>>8)*16
	ctp := g.memR64(re) &^ 0xfff
	if g.memR64(re)&1 == 0 {
		ctp = g.alloc()
		g.memW64(re, ctp|1)
	}
	lo := table | tt<<2 | 1
	if fpd {
		lo |= 2
	}
	g.memW64(ctp+uint64(s&0xff)*16, lo)
	g.memW64(ctp+uint64(s&0xff)*16+8, aw|uint64(did)<<8)
}

// setup is the usual start: a root table, sid in domain with a fresh
// 4-level page table, translation on. It returns the page table.
func (g *guest) setup() uint64 {
	g.setRoot()
	pt := g.alloc()
	g.setContext(sid, domain, 0, 2, pt, false)
	g.enable()
	return pt
}

// mapPage maps the page of the given size (4 KiB, 2 MiB or 1 GiB) at iova
// to gpa with permission bits perm, creating intermediate tables with R+W.
// It returns the address of the leaf entry.
func (g *guest) mapPage(pt uint64, levels int, iova, gpa, size, perm uint64) uint64 {
	leaf := map[uint64]int{kib4: 1, mib2: 2, gib1: 3}[size]
	table := pt
	for level := levels; level > leaf; level-- {
		e := table + (iova>>(12+9*(level-1))&511)*8
		pte := g.memR64(e)
		if pte&3 == 0 {
			pte = g.alloc() | pRW
			g.memW64(e, pte)
		}
		table = pte &^ 0xfff
	}
	e := table + (iova>>(12+9*(leaf-1))&511)*8
	v := gpa | perm
	if leaf > 1 {
		v |= pPS
	}
	g.memW64(e, v)
	return e
}

// invalidatePage is Linux's register-based page-selective IOTLB flush.
func (g *guest) invalidatePage(did uint16, iova uint64, am uint64) {
	g.w64(rIVA, iova|am)
	g.w64(rIOTLB, 1<<63|3<<60|uint64(did)<<32)
	if v := g.r64(rIOTLB); v&(1<<63) != 0 || v>>57&3 != 3 {
		g.t.Fatalf("IOTLB register after a page-selective flush: %#x", v)
	}
}

// fill writes a recognizable page of bytes at gpa.
func (g *guest) fill(gpa uint64, b byte) {
	p := make([]byte, kib4)
	for i := range p {
		p[i] = b
	}
	if _, err := g.mem.WriteAt(p, int64(gpa)); err != nil {
		g.t.Fatal(err)
	}
}

// read reads n bytes at iova through sid's view.
func (g *guest) read(s uint16, iova uint64, n int) ([]byte, error) {
	p := make([]byte, n)
	_, err := g.u.DMA(s).ReadAt(p, int64(iova))
	return p, err
}

// mustByte checks the byte at iova through a fresh view (which starts
// from the unit's caches) and through a long-lived one (which has its own
// copies of recent translations, valid for one generation).
func (g *guest) mustByte(s uint16, iova uint64, want byte) {
	g.t.Helper()
	p, err := g.read(s, iova, 1)
	if err != nil {
		g.t.Fatalf("read at %#x: %v", iova, err)
	}
	if p[0] != want {
		g.t.Fatalf("read at %#x = %#x, want %#x", iova, p[0], want)
	}
	if g.views == nil {
		g.views = make(map[uint16]memory.DMA)
	}
	v, ok := g.views[s]
	if !ok {
		v = g.u.DMA(s)
		g.views[s] = v
	}
	for range 2 { // the second read runs from the view's own copy
		if _, err := v.ReadAt(p, int64(iova)); err != nil || p[0] != want {
			g.t.Fatalf("read at %#x through a long-lived view = %#x, %v; want %#x", iova, p[0], err, want)
		}
	}
}

func wantFault(t *testing.T, err error, reason vtd.FaultReason) *vtd.Fault {
	t.Helper()
	if !errors.Is(err, memory.ErrNotMapped) {
		t.Fatalf("error %v does not match memory.ErrNotMapped", err)
	}
	var f *vtd.Fault
	if !errors.As(err, &f) {
		t.Fatalf("error %v is not a *vtd.Fault", err)
	}
	if f.Reason != reason {
		t.Fatalf("fault reason %#x, want %#x (%v)", f.Reason, reason, err)
	}
	return f
}

// record returns fault record i as the guest reads it.
func (g *guest) record(i int) (lo, hi uint64) {
	return g.r64(rFRCD + uint64(i)*16), g.r64(rFRCD + uint64(i)*16 + 8)
}
