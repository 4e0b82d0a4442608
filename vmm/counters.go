package vmm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
)

// Counters returns the VM's counters in the shape of Cloud Hypervisor's
// vm.counters: by device ("vcpu0", "blk0", ...), then by counter name,
// each an integer. Nested statistics are flattened with "_" between the
// names (transport_notifications, exits_IO).
func (v *VM) Counters() map[string]map[string]int64 {
	return CountersOf(v.Stats())
}

// CountersOf flattens statistics in the shape of VM.Stats (a "vcpus"
// list, then one entry per device) into vm.counters' shape.
func CountersOf(in map[string]any) map[string]map[string]int64 {
	out := map[string]map[string]int64{}
	b, err := json.Marshal(in)
	if err != nil {
		return out
	}
	var stats map[string]any
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	if d.Decode(&stats) != nil {
		return out
	}
	keys := make([]string, 0, len(stats))
	for k := range stats {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if k == "vcpus" {
			cpus, _ := stats[k].([]any)
			for i, c := range cpus {
				m := map[string]int64{}
				flatten(m, "", c)
				out[fmt.Sprintf("vcpu%d", i)] = m
			}
			continue
		}
		m := map[string]int64{}
		flatten(m, "", stats[k])
		out[k] = m
	}
	return out
}

// flatten adds every integer leaf of v to m under its path.
func flatten(m map[string]int64, prefix string, v any) {
	switch t := v.(type) {
	case map[string]any:
		for k, x := range t {
			if prefix != "" {
				k = prefix + "_" + k
			}
			flatten(m, k, x)
		}
	case []any:
		for i, x := range t {
			flatten(m, fmt.Sprintf("%s_%d", prefix, i), x)
		}
	case json.Number:
		if n, err := t.Int64(); err == nil {
			m[prefix] = n
		}
	case bool:
		if t {
			m[prefix] = 1
		} else {
			m[prefix] = 0
		}
	}
}
