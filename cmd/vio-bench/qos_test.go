package main

import (
	"math"
	"strings"
	"testing"
)

// TestExpectRows: the three VMs on 1500 IOPS (C's limit binds)
// and on 1000 (it does not), as docs/qos.md works them out.
func TestExpectRows(t *testing.T) {
	for _, tc := range []struct {
		got  []float64
		want []float64
	}{
		{[]float64{600, 700, 200}, []float64{633.3, 666.7, 200}},
		{[]float64{475, 350, 175}, []float64{475, 350, 175}},
	} {
		rows := expectRows(qosClients, tc.got, nil)
		for i, r := range rows {
			if math.Abs(r.want-tc.want[i]) > 0.1 || r.got != tc.got[i] || !math.IsNaN(r.daemon) {
				t.Errorf("capacity %v: row %d %+v, want expected %.1f", tc.got, i, r, tc.want[i])
			}
		}
	}
	if rows := expectRows(qosClients[1:], []float64{1300, 200}, []float64{1299, 201}); rows[0].want != 1300 || rows[1].want != 200 || rows[1].daemon != 201 {
		t.Errorf("B and C alone: %+v", rows)
	}
	if s := []string{settings(qosClients[0].params), settings(qosClients[1].params), settings(qosClients[2].params)}; strings.Join(s, " ") != "r=300,w=1 w=2 w=1,l=200" {
		t.Errorf("settings %q", s)
	}
}

func TestVerdict(t *testing.T) {
	nan := math.NaN()
	for _, tc := range []struct {
		row qosRow
		ok  bool
		why string
	}{
		{qosRow{got: 105, want: 100, daemon: nan}, true, ""},
		{qosRow{got: 91, want: 100, daemon: 92}, true, ""},
		{qosRow{got: 111, want: 100, daemon: nan}, false, "above its share"},
		{qosRow{got: 89, want: 100, daemon: nan}, false, "below its share"},
		{qosRow{got: 50, want: 100, daemon: nan, atMost: true}, true, ""},
		{qosRow{got: 120, want: 100, daemon: nan, atMost: true}, false, "a burst above its share"},
		{qosRow{got: 100, want: 100, daemon: 80}, false, "completions and the daemon's count disagree"},
		{qosRow{got: 0, want: 0, daemon: nan}, false, "no expected rate"},
	} {
		if ok, why := tc.row.verdict(); ok != tc.ok || why != tc.why {
			t.Errorf("%+v: %v %q, want %v %q", tc.row, ok, why, tc.ok, tc.why)
		}
	}
}

func TestMedianPhases(t *testing.T) {
	round := func(a, b float64) []qosPhase {
		return []qosPhase{{"p", []qosRow{{client: "a", got: a, want: 10, daemon: a}, {client: "b", got: b, want: 20, daemon: math.NaN()}}}}
	}
	m := medianPhases([][]qosPhase{round(3, 1), round(1, 2), round(2, 3)})
	if r := m[0].rows[0]; r.client != "a" || r.got != 2 || r.daemon != 2 || r.want != 10 {
		t.Errorf("row a: %+v", r)
	}
	if r := m[0].rows[1]; r.got != 2 || !math.IsNaN(r.daemon) {
		t.Errorf("row b: %+v (a cell never measured stays NaN)", r)
	}
	if got := medianFloat([]float64{4, 1}); got != 4 {
		t.Errorf("median of two: %v, want the upper", got)
	}
}

func TestFormatQoS(t *testing.T) {
	phases := []qosPhase{
		{"all busy", expectRows(qosClients, []float64{633, 667, 230}, []float64{633, 667, 230})},
		{"a back 150ms", []qosRow{{client: "a", settings: "r=300,w=1", got: 900, want: 633.3, daemon: math.NaN(), atMost: true}}},
	}
	table, failed := formatQoS(phases)
	want := `phase          client settings       IOPS   daemon   expected      dev  verdict
all busy       a      r=300,w=1     633.0    633.0      643.3    -1.6%  PASS
               b      w=2           667.0    667.0      686.7    -2.9%  PASS
               c      w=1,l=200     230.0    230.0      200.0   +15.0%  FAIL: above its share
a back 150ms   a      r=300,w=1     900.0        -     ≤633.3   +42.1%  FAIL: a burst above its share
IOPS together: all busy 1530.0
`
	if table != want {
		t.Errorf("table:\n%s\nwant:\n%s", table, want)
	}
	if len(failed) != 2 || !strings.HasPrefix(failed[0], "all busy: c got 230.0 IOPS, expected 200.0") || !strings.Contains(failed[1], "a burst") {
		t.Errorf("failed: %q", failed)
	}
}
