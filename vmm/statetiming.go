package vmm

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"
)

// sectionTimes records how long each section of a save or restore took,
// for the debug log line that says where a migration's pause went: the
// sum alone cannot tell a slow vCPU from a slow device.
type sectionTimes struct {
	ids  []string
	took []time.Duration
}

func (s *sectionTimes) add(id string, d time.Duration) {
	s.ids, s.took = append(s.ids, id), append(s.took, d)
}

// slowest names the n sections that took longest, slowest first
// ("cpu0=1.2ms rng/pci=0.4ms").
func (s *sectionTimes) slowest(n int) string {
	idx := make([]int, len(s.ids))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int { return cmp.Compare(s.took[b], s.took[a]) })
	var parts []string
	for _, i := range idx[:min(n, len(idx))] {
		parts = append(parts, fmt.Sprintf("%s=%v", s.ids[i], s.took[i].Round(time.Microsecond)))
	}
	return strings.Join(parts, " ")
}
