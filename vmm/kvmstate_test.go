package vmm

import (
	"encoding/json"
	"testing"

	"github.com/viovmm/vio/kvm"
	"github.com/viovmm/vio/state"
)

// FuzzKVMSections feeds hostile section data to the decoders that run
// before anything reaches the kernel: they must return an error or a
// state within the limits, never panic.
func FuzzKVMSections(f *testing.F) {
	good, _ := json.Marshal(kvm.VCPUState{XSave: make([]byte, 4096), MSRs: []kvm.MSREntry{{Index: 0x10, Data: 1}}})
	f.Add(good)
	chips, _ := json.Marshal(IRQChipState{make([]byte, 512), make([]byte, 512), make([]byte, 512)})
	f.Add(chips)
	f.Add([]byte(`{"MSRs":null}`))
	f.Add([]byte(`{"PICMaster":"AA=="}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if s, err := decodeCPUState(data); err == nil {
			if len(s.MSRs) > kvm.MaxSavedMSRs || len(s.XSave) > maxXSave || (s.XSave == nil && s.FPU == nil) {
				t.Fatalf("accepted an out-of-limits vCPU state")
			}
		}
		if s, err := decodeIRQChipState(data); err == nil {
			if len(s.PICMaster) != kvm.IRQChipDataSize || len(s.IOAPIC) != kvm.IRQChipDataSize {
				t.Fatalf("accepted a short irqchip state")
			}
		}
		var c ClockState
		_ = state.Unmarshal(data, &c)
	})
}

func TestKVMSectionLimits(t *testing.T) {
	for _, bad := range []string{
		`{}`, // neither XSAVE nor FPU
		`{"XSave":"AAAA","MPState":99}`,
		`{"XSave":"AAAA","XCRs":{"NrXcrs":17}}`,
		`{"XSave":"AAAA","Unknown":1}`,
	} {
		if _, err := decodeCPUState([]byte(bad)); err == nil {
			t.Errorf("vCPU state %s accepted", bad)
		}
	}
	if _, err := decodeCPUState([]byte(`{"FPU":{}}`)); err != nil {
		t.Errorf("FPU-only state refused: %v", err)
	}
	if _, err := decodeIRQChipState([]byte(`{"PICMaster":"AA==","PICSlave":"AA==","IOAPIC":"AA=="}`)); err == nil {
		t.Error("short irqchip state accepted")
	}
}
