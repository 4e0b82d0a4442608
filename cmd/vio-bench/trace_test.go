package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestTraceCollect reads histograms in the kernel's format (as 6.1 prints
// them) and removes the triggers it set.
func TestTraceCollect(t *testing.T) {
	dir := t.TempDir()
	hist := map[string]string{
		"kvm/kvm_exit": "# event histogram\n#\n{ exit_reason:        123 } hitcount:       4000\n{ exit_reason:        120 } hitcount:        300\n\nTotals:\n    Hits: 4300\n",
		"kvm/kvm_pio":  "{ port:        496, rw:          0, size:          1 } hitcount:       2000\n",
		"kvm/kvm_mmio": "",
		"kvm/kvm_msr":  "{ ecx:       2059, write:          1 } hitcount:        100\n",
	}
	for ev, text := range hist {
		if err := os.MkdirAll(filepath.Join(dir, ev), 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, ev, "hist"), []byte(text), 0o644)
	}
	tr := &exitTrace{dir: dir}
	got, err := tr.collect()
	if err != nil {
		t.Fatal(err)
	}
	want := []traceCount{
		{"kvm_exit", "exit_reason: 123", 4000}, {"kvm_exit", "exit_reason: 120", 300},
		{"kvm_pio", "port: 496, rw: 0, size: 1", 2000},
		{"kvm_msr", "ecx: 2059, write: 1", 100},
	}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("entry %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	b, _ := os.ReadFile(filepath.Join(dir, "kvm/kvm_pio/trigger"))
	if string(b) != "!hist:keys=port,rw,size:size=4096\n" {
		t.Errorf("trigger left as %q, want the histogram removed", b)
	}
}
