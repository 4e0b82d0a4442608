package vtd_test

import (
	"testing"

	"github.com/viovmm/vio/iommu/vtd"
)

func TestResetState(t *testing.T) {
	g := newGuest(t, vtd.Config{})
	if v := g.r32(rVER); v != 0x10 {
		t.Errorf("VER = %#x, want 1.0", v)
	}
	c := g.r64(rCAP)
	if c != g.u.Capability() {
		t.Errorf("CAP reads %#x, Capability() says %#x", c, g.u.Capability())
	}
	checks := []struct {
		name      string
		got, want uint64
	}{
		{"ND (16-bit domain ids)", c & 7, 6},
		{"SAGAW (39 and 48 bit)", c >> 8 & 0x1f, 0x6},
		{"MGAW", c >> 16 & 0x3f, 47},
		{"FRO*16", (c >> 24 & 0x3ff) * 16, rFRCD},
		{"SLLPS (2M, 1G)", c >> 34 & 0xf, 3},
		{"PSI", c >> 39 & 1, 1},
		{"NFR+1", (c>>40&0xff + 1), vtd.NumFaultRecords},
		{"MAMV", c >> 48 & 0x3f, vtd.MaxAddressMask},
		{"CM off by default", c >> 7 & 1, 0},
		{"RWBF", c >> 4 & 1, 0},
		{"PLMR/PHMR", c >> 5 & 3, 0},
	}
	e := g.r64(rECAP)
	checks = append(checks, []struct {
		name      string
		got, want uint64
	}{
		{"ECAP.C", e & 1, 1},
		{"ECAP.QI", e >> 1 & 1, 1},
		{"ECAP.DT", e >> 2 & 1, 0},
		{"ECAP.IR", e >> 3 & 1, 0},
		{"ECAP.PT", e >> 6 & 1, 1},
		{"ECAP.IRO*16", (e >> 8 & 0x3ff) * 16, rIVA},
		{"ECAP.SMTS", e >> 43 & 1, 0},
	}...)
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %#x, want %#x", ch.name, ch.got, ch.want)
		}
	}
	if v := g.r32(rGSTS); v != 0 {
		t.Errorf("GSTS after reset = %#x", v)
	}
	if v := g.r32(rFECTL); v != 1<<31 {
		t.Errorf("FECTL after reset = %#x, want IM set", v)
	}
	if v := g.r32(rIECTL); v != 1<<31 {
		t.Errorf("IECTL after reset = %#x, want IM set", v)
	}

	cm := newGuest(t, vtd.Config{CachingMode: true})
	if cm.r64(rCAP)>>7&1 != 1 {
		t.Error("CachingMode does not set CAP.CM")
	}
}

func TestRegisterAccessRules(t *testing.T) {
	g := newGuest(t, vtd.Config{})
	// Reserved bits read as zero.
	g.w64(rRTADDR, ^uint64(0))
	if v := g.r64(rRTADDR); v != 0x0000_ffff_ffff_f000 {
		t.Errorf("RTADDR after writing all ones = %#x", v)
	}
	// 32-bit halves compose a 64-bit register.
	g.w32(rRTADDR, 0x1234_5000)
	g.w32(rRTADDR+4, 0xab)
	if v := g.r64(rRTADDR); v != 0xab_1234_5000 {
		t.Errorf("RTADDR from two dwords = %#x", v)
	}
	if lo, hi := g.r32(rRTADDR), g.r32(rRTADDR+4); lo != 0x1234_5000 || hi != 0xab {
		t.Errorf("RTADDR dwords = %#x %#x", lo, hi)
	}
	// Read-only registers ignore writes.
	capBefore := g.r64(rCAP)
	g.w64(rCAP, 0)
	g.w32(rGSTS, 0xffffffff)
	if g.r64(rCAP) != capBefore || g.r32(rGSTS) != 0 {
		t.Error("a write changed CAP or GSTS")
	}
	// GCMD is write-only.
	g.w32(rGCMD, 0)
	if v := g.r32(rGCMD); v != 0 {
		t.Errorf("GCMD reads %#x", v)
	}
	// Unknown offsets read zero and ignore writes; odd sizes and
	// misaligned accesses do nothing.
	for _, off := range []uint64{0x48, 0x300, 0xff8, 0x5c} {
		g.w32(off, 0xdeadbeef)
		if v := g.r32(off); v != 0 {
			t.Errorf("offset %#x reads %#x", off, v)
		}
	}
	b := []byte{0xff, 0xff}
	g.u.Read(rVER, b)
	if b[0] != 0 || b[1] != 0 {
		t.Errorf("2-byte read of VER = %x, want zeros", b)
	}
	g.u.Write(rFEDATA, []byte{1, 2})
	g.u.Write(rFEDATA+1, []byte{1, 2, 3, 4})
	if v := g.r32(rFEDATA); v != 0 {
		t.Errorf("FEDATA after unsupported writes = %#x", v)
	}
	g.u.Read(0xffc, make([]byte, 8)) // runs past the block: must not panic
	g.w32(rFEDATA, 0xffff_1234)
	if v := g.r32(rFEDATA); v != 0x1234 {
		t.Errorf("FEDATA keeps reserved bits: %#x", v)
	}
	g.w32(rFEADDR, 0xfee0_0003)
	if v := g.r32(rFEADDR); v != 0xfee0_0000 {
		t.Errorf("FEADDR = %#x", v)
	}
	g.w32(rPMEN, 1<<31)
	if v := g.r32(rPMEN); v != 1<<31|1 {
		t.Errorf("PMEN after EPM = %#x, want EPM|PRS", v)
	}
	g.w32(rPMEN, 0)
	if v := g.r32(rPMEN); v != 0 {
		t.Errorf("PMEN after clearing EPM = %#x", v)
	}
}

// TestGlobalCommand follows Linux's use of GCMD: it writes its persistent
// bits plus one command and polls GSTS.
func TestGlobalCommand(t *testing.T) {
	g := newGuest(t, vtd.Config{})
	gen0 := g.u.DMA(sid).Generation()
	g.setRoot()
	if v := g.r32(rGSTS); v != gSRTP {
		t.Fatalf("GSTS after SRTP = %#x, want RTPS only", v)
	}
	g.enable()
	if v := g.r32(rGSTS); v != gTE|gSRTP {
		t.Fatalf("GSTS after TE = %#x, want TES|RTPS", v)
	}
	if g.u.DMA(sid).Generation() <= gen0 {
		t.Error("generation did not move when translation was switched on")
	}
	// QIE with the persistent TE.
	g.w64(rIQA, g.alloc())
	g.w32(rGCMD, gTE|gQIE)
	if v := g.r32(rGSTS); v != gTE|gSRTP|gQIE {
		t.Fatalf("GSTS after QIE = %#x", v)
	}
	// A one-shot with the persistent bits keeps them.
	g.w32(rGCMD, gTE|gQIE|gSRTP)
	if v := g.r32(rGSTS); v != gTE|gSRTP|gQIE {
		t.Fatalf("GSTS after SRTP with TE|QIE = %#x", v)
	}
	// Dropping QIE clears QIES and the head; dropping TE clears TES.
	g.w32(rGCMD, gTE)
	if v := g.r32(rGSTS); v != gTE|gSRTP {
		t.Fatalf("GSTS after clearing QIE = %#x", v)
	}
	gen := g.u.DMA(sid).Generation()
	g.w32(rGCMD, 0)
	if v := g.r32(rGSTS); v != gSRTP {
		t.Fatalf("GSTS after clearing TE = %#x", v)
	}
	if g.u.DMA(sid).Generation() <= gen {
		t.Error("generation did not move when translation was switched off")
	}
	// Unsupported commands (IRE, SIRTP, CFI, SFL, WBF) leave no status.
	g.w32(rGCMD, 1<<25|1<<24|1<<23|1<<29|1<<27)
	if v := g.r32(rGSTS); v != gSRTP {
		t.Fatalf("GSTS after unsupported commands = %#x", v)
	}
}

func TestResetMethod(t *testing.T) {
	g := newGuest(t, vtd.Config{})
	g.setup()
	g.w32(rFECTL, 0)
	g.u.Reset()
	if v := g.r32(rGSTS); v != 0 {
		t.Errorf("GSTS after Reset = %#x", v)
	}
	if v := g.r32(rFECTL); v != 1<<31 {
		t.Errorf("FECTL after Reset = %#x", v)
	}
	g.fill(0x5000, 0x5a)
	g.mustByte(sid, 0x5000, 0x5a) // identity again
}
