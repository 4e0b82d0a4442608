package vtd_test

import (
	"testing"

	"github.com/viovmm/vio/iommu/vtd"
)

// TestFaultRecording follows Linux's dmar_fault handler: read FSTS, walk
// the records from FRI while F is set, clear each F, clear PFO.
func TestFaultRecording(t *testing.T) {
	g := newGuest(t, vtd.Config{})
	pt := g.setup()
	g.mapPage(pt, 4, 0x1000, 0x10_0000, kib4, pR)
	g.w32(rFEDATA, 0x41)
	g.w32(rFEADDR, 0xfee0_1000)
	g.w32(rFEUADDR, 0)
	g.w32(rFECTL, 0) // unmask

	_, err := g.u.DMA(sid).WriteAt([]byte{1}, 0x1234)
	wantFault(t, err, vtd.FaultWrite)
	if len(g.msis) != 1 || g.msis[0] != (msi{0xfee0_1000, 0x41}) {
		t.Fatalf("fault event MSIs: %+v", g.msis)
	}
	fsts := g.r32(rFSTS)
	if fsts&2 == 0 || fsts>>8&0xff != 0 {
		t.Fatalf("FSTS = %#x, want PPF with FRI 0", fsts)
	}
	lo, hi := g.record(0)
	if lo != 0x1000 {
		t.Errorf("fault info = %#x, want the page 0x1000", lo)
	}
	if hi&0xffff != sid || hi>>32&0xff != uint64(vtd.FaultWrite) || hi>>62&1 != 0 || hi>>63 != 1 {
		t.Errorf("record high = %#x: want F, write, reason 5, sid %#x", hi, sid)
	}
	if g.r32(rFECTL)&(1<<30) != 0 {
		t.Error("FECTL.IP stays set after the message was sent")
	}

	// A second fault while the first is pending is recorded in the next
	// register but sends no message: the handler will find it.
	_, err = g.read(sid, 0x5000, 1)
	wantFault(t, err, vtd.FaultRead)
	if len(g.msis) != 1 {
		t.Fatalf("a second pending fault sent a message: %+v", g.msis)
	}
	if _, hi := g.record(1); hi>>63 != 1 || hi>>62&1 != 1 || hi>>32&0xff != uint64(vtd.FaultRead) {
		t.Fatalf("record 1 high = %#x: want F, read, reason 6", hi)
	}

	// Fill every record: the next fault overflows (PFO) and is lost.
	for i := 2; i < vtd.NumFaultRecords; i++ {
		g.read(sid, 0x5000, 1)
	}
	g.read(sid, 0x6000, 1)
	if g.r32(rFSTS)&1 == 0 {
		t.Fatal("PFO not set when every record is in use")
	}
	// Service as Linux does.
	for i := 0; i < vtd.NumFaultRecords; i++ {
		if _, hi := g.record(i); hi>>63 == 0 {
			t.Fatalf("record %d empty", i)
		}
		g.w32(rFRCD+uint64(i)*16+12, 1<<31)
	}
	g.w32(rFSTS, 1|2)
	if v := g.r32(rFSTS); v != 0 {
		t.Fatalf("FSTS after servicing = %#x", v)
	}
	// The next fault goes to the record after the last one used (record
	// 0 again, after 8) and interrupts again.
	g.read(sid, 0x7000, 1)
	if len(g.msis) != 2 {
		t.Fatalf("fault after servicing: MSIs %+v", g.msis)
	}
	if fri := g.r32(rFSTS) >> 8 & 0xff; fri != 0 {
		t.Fatalf("FRI = %d", fri)
	}
	if lo, _ := g.record(0); lo != 0x7000 {
		t.Fatalf("record 0 fault info %#x", lo)
	}
}

func TestFaultEventMasked(t *testing.T) {
	g := newGuest(t, vtd.Config{})
	g.setup()
	g.w32(rFEDATA, 0x55)
	g.w32(rFEADDR, 0xfee0_0000)
	// IM is set after reset.
	g.read(sid, 0x1000, 1)
	if len(g.msis) != 0 {
		t.Fatal("a masked fault event sent a message")
	}
	if g.r32(rFECTL) != 1<<31|1<<30 {
		t.Fatalf("FECTL = %#x, want IM|IP", g.r32(rFECTL))
	}
	g.w32(rFECTL, 0)
	if len(g.msis) != 1 || g.msis[0].data != 0x55 {
		t.Fatalf("unmasking did not send the pending message: %+v", g.msis)
	}
	if g.r32(rFECTL) != 0 {
		t.Fatalf("FECTL after unmasking = %#x", g.r32(rFECTL))
	}
	// Clearing the condition while masked clears IP: no message on
	// unmask.
	g.w32(rFECTL, 1<<31)
	g.w32(rFRCD+12, 1<<31)
	g.read(sid, 0x2000, 1) // goes to record 1
	if g.r32(rFECTL) != 1<<31|1<<30 {
		t.Fatalf("FECTL after a masked fault = %#x", g.r32(rFECTL))
	}
	g.w32(rFRCD+16+12, 1<<31)
	if g.r32(rFECTL)&(1<<30) != 0 {
		t.Fatalf("IP still set after every condition was cleared: FECTL %#x FSTS %#x", g.r32(rFECTL), g.r32(rFSTS))
	}
	g.w32(rFECTL, 0)
	if len(g.msis) != 1 {
		t.Fatalf("unmask after servicing sent a message: %+v", g.msis)
	}
}

func TestFaultProcessingDisabled(t *testing.T) {
	g := newGuest(t, vtd.Config{})
	g.setRoot()
	pt := g.alloc()
	g.setContext(sid, domain, 0, 2, pt, true) // FPD
	g.enable()
	g.w32(rFECTL, 0)
	_, err := g.read(sid, 0x1000, 1)
	wantFault(t, err, vtd.FaultRead) // still blocked
	if g.r32(rFSTS) != 0 || len(g.msis) != 0 {
		t.Fatalf("a fault with FPD was recorded: FSTS %#x, MSIs %d", g.r32(rFSTS), len(g.msis))
	}
}
