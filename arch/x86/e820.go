package x86

import (
	"fmt"
	"sort"

	"github.com/viovmm/vio/memory"
)

// E820 entry types (ACPI address range types).
const (
	E820RAM      = 1
	E820Reserved = 2
)

// E820Entry is one range of the BIOS memory map handed to Linux.
type E820Entry struct {
	Addr uint64
	Size uint64
	Type uint32
}

// E820Max is the number of entries the zero page has room for.
const E820Max = 128

// E820Map returns the memory map for guest RAM laid out as layout (from
// RAMLayout): RAM everywhere there is RAM, except that the low megabyte's
// EBDA and BIOS area are reported reserved (the MP table lives there, and
// Linux would otherwise hand those pages out) and the VGA/ROM hole is left
// out. The MMIO hole is simply absent: Linux places PCI resources in the
// largest gap below 4 GiB. Entries come back sorted and non-overlapping.
func E820Map(layout []memory.Layout) ([]E820Entry, error) {
	ls := append([]memory.Layout(nil), layout...)
	sort.Slice(ls, func(i, j int) bool { return ls[i].GPA < ls[j].GPA })
	if len(ls) == 0 || ls[0].GPA != 0 || ls[0].Size < HighMemStart {
		return nil, fmt.Errorf("x86: guest RAM must start at 0 and cover the first MiB")
	}
	var m []E820Entry
	add := func(a, end uint64, typ uint32) {
		if end > a {
			m = append(m, E820Entry{Addr: a, Size: end - a, Type: typ})
		}
	}
	for _, l := range ls {
		end := l.GPA + l.Size
		// Cut [EBDAStart, HighMemStart) out of any RAM range.
		if l.GPA < HighMemStart {
			add(l.GPA, min(end, EBDAStart), E820RAM)
			add(max(l.GPA, EBDAStart), min(end, VGAStart), E820Reserved)
			add(max(l.GPA, BIOSStart), min(end, HighMemStart), E820Reserved)
			add(max(l.GPA, HighMemStart), end, E820RAM)
			continue
		}
		add(l.GPA, end, E820RAM)
	}
	if len(m) > E820Max {
		return nil, fmt.Errorf("x86: %d e820 entries, the zero page holds %d", len(m), E820Max)
	}
	return m, nil
}
