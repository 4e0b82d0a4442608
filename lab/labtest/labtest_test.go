package labtest

import "testing"

func TestFuzzing(t *testing.T) {
	for _, c := range []struct {
		args []string
		want bool
	}{
		{[]string{"-test.run=^$", "-test.fuzz=^FuzzWrite$", "-test.fuzztime=10s"}, true},
		{[]string{"-test.fuzzworker", "-test.paniconexit0"}, true},
		{[]string{"-test.fuzz=^FuzzWrite$"}, false}, // ordinary tests run too
		{[]string{"-test.run=^$", "-test.fuzz="}, false},
		{[]string{"-test.run=TestSystem"}, false},
		{nil, false},
	} {
		if got := fuzzing(c.args); got != c.want {
			t.Errorf("fuzzing(%q) = %v, want %v", c.args, got, c.want)
		}
	}
}
