package vmm

import (
	"testing"

	"github.com/viovmm/vio/arch/x86"
	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/memory"
)

// memory.shared selects RAM another process can map; the default does not.
func TestSharedMemoryBacking(t *testing.T) {
	layout, err := x86.RAMLayout(config.MinMemory)
	if err != nil {
		t.Fatal(err)
	}
	for _, shared := range []bool{false, true} {
		m, err := memory.NewWithOptions(layout, memoryOptions(config.Memory{Size: config.MinMemory, Shared: shared}))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range m.Regions() {
			if _, _, ok := r.File(); ok != shared {
				t.Errorf("shared=%v: region at %#x has a shareable file: %v", shared, r.GPA, ok)
			}
		}
		m.Close()
	}
}
