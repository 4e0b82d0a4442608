package graph

import "testing"

// FuzzParse feeds arbitrary JSON to the graph parser and validator: they
// must return an error or a graph, never panic, and a graph that validates
// must be within the bounds.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`{"node":"raw","path":"a"}`,
		`{"node":"throttle","name":"t0","options":{"bandwidth":{"size":1048576,"refill_time":1000},"ops":{"size":10,"one_time_burst":5,"refill_time":1}},"children":[{"node":"qcow2","path":"a.qcow2"}]}`,
		`{"node":"faults","options":{"seed":3,"rules":[{"ops":"read+flush","offset":"1M","length":4096,"error":"ENOSPC","nth":2,"times":1,"probability":0.5,"delay":"1ms","delay_max":"2ms"},{"torn":512,"fail_stop":false}]},"children":[{"node":"raw","path":"a","readonly":true}],"readonly":true}`,
		`{"node":"throttle","options":{"group":"g1"},"children":[{"node":"nbd","path":"nbd://h/x"}]}`,
		`{"node":"faults","children":[null]}`,
		`{"node":"multipath","name":"mp","options":{"policy":"round-robin","timeout":"30s","probe_interval":"5s"},"children":[{"node":"nbd","path":"nbd://h/x"},{"node":"nbd","path":"nbd://h/x"}]}`,
		`{"node":"multipath","options":{"policy":"x","timeout":5},"children":[{"node":"raw","path":"a"}]}`,
	} {
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, data []byte, ro bool) {
		n, err := Parse(data)
		if err != nil {
			return
		}
		if err := Validate([]Disk{{ID: "d0", Root: n, ReadOnly: ro}}, map[string]bool{"g1": true}); err != nil {
			return
		}
		if c, d := count(n, 1); c > MaxNodes || d > MaxDepth {
			t.Fatalf("a graph of %d nodes, %d deep validated", c, d)
		}
	})
}

func count(n *Node, depth int) (nodes, maxDepth int) {
	nodes, maxDepth = 1, depth
	for _, c := range n.Children {
		cn, cd := count(c, depth+1)
		nodes += cn
		maxDepth = max(maxDepth, cd)
	}
	return nodes, maxDepth
}
