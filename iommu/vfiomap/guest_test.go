package vfiomap_test

import (
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"testing"

	"github.com/viovmm/vio/iommu/vfiomap"
	"github.com/viovmm/vio/iommu/vfiomap/vfiomaptest"
	"github.com/viovmm/vio/iommu/vtd"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/vfio"
)

// This file is a small guest for the tests: Linux's intel-iommu driver in
// caching mode, reduced to what moves a device between domains and maps
// and unmaps its DMA (register-based invalidation; iommu/vtd's own tests
// cover the queue, which reaches the Notifier the same way). The guest
// also keeps a model of what it mapped, per domain, which is what the
// host must map once the guest has invalidated.

const (
	rGCMD   = 0x18
	rGSTS   = 0x1c
	rRTADDR = 0x20
	rCCMD   = 0x28
	rIVA    = 0x100
	rIOTLB  = 0x108

	gTE   = 1 << 31
	gSRTP = 1 << 30

	pR  = 1
	pW  = 2
	pRW = 3
	pPS = 1 << 7

	kib4 = 4 << 10
	mib2 = 2 << 20
	gib1 = 1 << 30

	low      = 32 << 20 // RAM at [0, 32 MiB)
	highBase = 4 << 30  // and at [4 GiB, 4 GiB + 16 MiB)
	highSize = 16 << 20
	tables   = 24 << 20 // table pages are allocated from here up

	sid = 0x0020 // 00:04.0
)

var rw = uint32(vfio.DMARead | vfio.DMAWrite)

type guest struct {
	t    testing.TB
	mem  *memory.Memory
	u    *vtd.Unit
	c    *vfiomaptest.Container
	f    *vfiomap.Follower
	next uint64
	root uint64
	gcmd uint32
	// model: what each domain maps (4 KiB pages, RAM only: the host
	// cannot map the rest), and each domain's table.
	model map[uint16]map[uint64]vfiomaptest.Page
	pts   map[uint16]uint64
}

func newGuest(t testing.TB, cfg vfiomap.Config) *guest {
	t.Helper()
	mem, err := memory.New([]memory.Layout{{GPA: 0, Size: low}, {GPA: highBase, Size: highSize}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	g := &guest{t: t, mem: mem, next: tables, model: map[uint16]map[uint64]vfiomaptest.Page{}, pts: map[uint16]uint64{}}
	g.c = &vfiomaptest.Container{Mem: mem}
	cfg.Mem, cfg.Container, cfg.SourceID = mem, g.c, sid
	if g.f, err = vfiomap.New(cfg); err != nil {
		t.Fatal(err)
	}
	if g.u, err = vtd.New(vtd.Config{Mem: mem, CachingMode: true, Notifier: g.f}); err != nil {
		t.Fatal(err)
	}
	g.u.Resync()
	return g
}

func (g *guest) alloc() uint64 {
	p := g.next
	g.next += kib4
	if _, err := g.mem.WriteAt(make([]byte, kib4), int64(p)); err != nil {
		g.t.Fatal(err)
	}
	return p
}

func (g *guest) w32(off uint64, v uint32) { g.u.Write(off, binary.LittleEndian.AppendUint32(nil, v)) }
func (g *guest) w64(off, v uint64)        { g.u.Write(off, binary.LittleEndian.AppendUint64(nil, v)) }
func (g *guest) r64(off uint64) uint64 {
	b := make([]byte, 8)
	g.u.Read(off, b)
	return binary.LittleEndian.Uint64(b)
}

func (g *guest) memR64(gpa uint64) uint64 {
	var b [8]byte
	if _, err := g.mem.ReadAt(b[:], int64(gpa)); err != nil {
		g.t.Fatal(err)
	}
	return binary.LittleEndian.Uint64(b[:])
}

// tableAt reports whether an entry's address field points at a page of
// guest RAM: after the fuzzer wrote garbage into the tables, the guest
// replaces an entry that does not, as if it were absent, instead of
// following it off the end of its memory.
func (g *guest) tableAt(entry uint64) bool {
	var b [8]byte
	_, err := g.mem.ReadAt(b[:], int64(entry&(1<<52-1)&^0xfff))
	return err == nil
}

func (g *guest) memW64(gpa, v uint64) {
	if _, err := g.mem.WriteAt(binary.LittleEndian.AppendUint64(nil, v), int64(gpa)); err != nil {
		g.t.Fatal(err)
	}
}

func (g *guest) setRoot() {
	g.root = g.alloc()
	g.w64(rRTADDR, g.root)
	g.w32(rGCMD, g.gcmd|gSRTP)
}

func (g *guest) translation(on bool) {
	if on {
		g.gcmd |= gTE
	} else {
		g.gcmd &^= gTE
	}
	g.w32(rGCMD, g.gcmd)
}

// setContext writes s's context: tt 0 translated (4-level table), 2
// pass-through; present false clears it.
func (g *guest) setContext(s, did uint16, tt, table uint64, present bool) {
	re := g.root + uint64(s>>8)*16
	if e := g.memR64(re); e&1 == 0 || !g.tableAt(e) {
		g.memW64(re, g.alloc()|1)
	}
	ce := g.memR64(re)&^0xfff + uint64(s&0xff)*16
	if !present {
		g.memW64(ce, 0)
		g.memW64(ce+8, 0)
		return
	}
	g.memW64(ce, table|tt<<2|1)
	g.memW64(ce+8, 2|uint64(did)<<8)
}

func (g *guest) ccmd(gran int, did, s uint16, fm uint64) {
	g.w64(rCCMD, 1<<63|uint64(gran)<<61|fm<<32|uint64(s)<<16|uint64(did))
}

func (g *guest) iotlb(gran int, did uint16, addr, am uint64) {
	if gran == 3 {
		g.w64(rIVA, addr|am)
	}
	g.w64(rIOTLB, 1<<63|uint64(gran)<<60|uint64(did)<<32)
	if v := g.r64(rIOTLB); v>>63 != 0 {
		g.t.Fatalf("IOTLB invalidation not complete: %#x", v)
	}
}

// domainTable returns did's page table, made on first use.
func (g *guest) domainTable(did uint16) uint64 {
	if pt, ok := g.pts[did]; ok {
		return pt
	}
	pt := g.alloc()
	g.pts[did] = pt
	g.model[did] = map[uint64]vfiomaptest.Page{}
	return pt
}

// attach puts the device in did as Linux does in caching mode: the
// context, a device-selective context invalidation (domain 0), a
// domain-selective IOTLB flush.
func (g *guest) attach(did uint16) {
	g.setContext(sid, did, 0, g.domainTable(did), true)
	g.ccmd(3, 0, sid, 0)
	g.iotlb(2, did, 0, 0)
}

// leaf writes the leaf entry for iova (size 4 KiB, 2 MiB or 1 GiB) in
// did's table, making intermediate tables, and updates the model.
func (g *guest) leaf(did uint16, iova, gpa, size, perm uint64) {
	pt := g.domainTable(did)
	lvl := map[uint64]int{kib4: 1, mib2: 2, gib1: 3}[size]
	table := pt
	for l := 4; l > lvl; l-- {
		e := table + (iova>>(12+9*(l-1))&511)*8
		pte := g.memR64(e)
		if pte&3 == 0 || pte&pPS != 0 || !g.tableAt(pte) {
			if pte&pPS != 0 && pte&3 != 0 {
				// A superpage becomes a table: its pages go.
				span := uint64(1) << (12 + 9*(l-1))
				for off := uint64(0); off < span; off += kib4 {
					delete(g.model[did], iova&^(span-1)+off)
				}
			}
			pte = g.alloc() | pRW
			g.memW64(e, pte)
		}
		table = pte & (1<<52 - 1) &^ 0xfff
	}
	v := gpa | perm
	if lvl > 1 && perm != 0 {
		v |= pPS
	}
	g.memW64(table+(iova>>(12+9*(lvl-1))&511)*8, v)
	m := g.model[did]
	for off := uint64(0); off < size; off += kib4 {
		delete(m, iova+off)
		if perm != 0 && g.inRAM(gpa+off) {
			m[iova+off] = vfiomaptest.Page{GPA: gpa + off, Rights: uint32(perm)}
		}
	}
}

func (g *guest) inRAM(gpa uint64) bool {
	return gpa < low || gpa >= highBase && gpa < highBase+highSize
}

// psi is the page-selective invalidation Linux issues for [iova,
// iova+n pages): the smallest aligned power-of-two block holding it.
func (g *guest) psi(did uint16, iova uint64, n uint64) {
	am := uint64(0)
	for ; ; am++ {
		base := iova &^ (kib4<<am - 1)
		if base+kib4<<am >= iova+n*kib4 {
			break
		}
	}
	g.iotlb(3, did, iova&^(kib4<<am-1), am)
}

// dmaMap maps n 4 KiB pages at iova to gpa.. and invalidates, as
// caching mode requires.
func (g *guest) dmaMap(did uint16, iova, gpa, n, perm uint64) {
	for i := range n {
		g.leaf(did, iova+i*kib4, gpa+i*kib4, kib4, perm)
	}
	g.psi(did, iova, n)
}

func (g *guest) dmaUnmap(did uint16, iova, n uint64) {
	for i := range n {
		g.leaf(did, iova+i*kib4, 0, kib4, 0)
	}
	g.psi(did, iova, n)
}

// identityPages is what translation off (or a pass-through context)
// gives: all RAM at its own address.
func (g *guest) identityPages() map[uint64]vfiomaptest.Page {
	m := map[uint64]vfiomaptest.Page{}
	for _, r := range g.mem.Regions() {
		for off := uint64(0); off < r.Size(); off += kib4 {
			m[r.GPA+off] = vfiomaptest.Page{GPA: r.GPA + off, Rights: rw}
		}
	}
	return m
}

// host returns the container's pages.
func (g *guest) host() map[uint64]vfiomaptest.Page {
	g.t.Helper()
	p, ok := g.c.Pages(1 << 22)
	if !ok {
		g.t.Fatal("the container maps more than 16 GiB")
	}
	return p
}

// mustHost checks that the container maps exactly want.
func (g *guest) mustHost(what string, want map[uint64]vfiomaptest.Page) {
	g.t.Helper()
	got := g.host()
	if maps.Equal(got, want) {
		return
	}
	var diff []string
	for _, k := range slices.Sorted(maps.Keys(got)) {
		if w, ok := want[k]; !ok || w != got[k] {
			diff = append(diff, fmt.Sprintf("host maps %#x -> %+v, guest %+v (%v)", k, got[k], w, ok))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if _, ok := got[k]; !ok {
			diff = append(diff, fmt.Sprintf("host lacks %#x -> %+v", k, want[k]))
		}
	}
	if len(diff) > 8 {
		diff = append(diff[:8], fmt.Sprintf("... %d more", len(diff)-8))
	}
	g.t.Fatalf("%s: the container does not map what the guest does:\n%v", what, diff)
}

// mustDomain checks that the container maps exactly did's model.
func (g *guest) mustDomain(what string, did uint16) {
	g.t.Helper()
	g.mustHost(what, g.model[did])
}
