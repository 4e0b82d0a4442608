package labtest

import (
	"strings"
	"testing"
	"time"
)

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

func TestDeadlines(t *testing.T) {
	for _, c := range []struct {
		args      []string
		budget    time.Duration
		lab, test time.Duration
	}{
		{[]string{"-test.timeout=40m0s"}, 0, 39*time.Minute + 30*time.Second, 35*time.Minute + 33*time.Second},
		{[]string{"-test.timeout=40m0s"}, 10 * time.Minute, 10 * time.Minute, 9 * time.Minute},
		{nil, 0, 9*time.Minute + 30*time.Second, 8*time.Minute + 30*time.Second},
		{[]string{"-test.timeout=1m"}, 0, time.Minute, 30 * time.Second},
	} {
		lab, test := deadlines(c.args, c.budget)
		if lab != c.lab || test != c.test {
			t.Errorf("deadlines(%q, %v) = %v, %v; want %v, %v", c.args, c.budget, lab, test, c.lab, c.test)
		}
		if test >= lab {
			t.Errorf("deadlines(%q): the test binary's %v is not before the lab's %v", c.args, test, lab)
		}
	}
	got := withTimeout([]string{"-test.run=X", "-test.timeout=40m0s", "-test.v=true"}, 9*time.Minute)
	want := []string{"-test.run=X", "-test.v=true", "-test.timeout=9m0s"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("withTimeout = %q, want %q", got, want)
	}
}

func TestWithoutRun(t *testing.T) {
	got := withoutRun([]string{"-test.v=true", "-test.run=^TestA$", "-test.timeout=1m"})
	if strings.Join(got, " ") != "-test.v=true -test.timeout=1m" {
		t.Errorf("withoutRun = %q", got)
	}
	if !listing([]string{"-test.list=."}) || listing([]string{"-test.run=."}) {
		t.Error("listing misjudged")
	}
	if _, err := shardTests([]string{"-test.run=TestA/sub"}, 2); err == nil {
		t.Error("a subtest filter was sharded")
	}
}

// TestShardTests lists this package's own tests through the binary, as
// RunSharded does, and deals them out.
func TestShardTests(t *testing.T) {
	shards, err := shardTests([]string{"-test.run=^(TestFuzzing|TestDeadlines|TestWithoutRun)$"}, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(shards) != 2 || strings.Join(shards[0], " ") != "TestFuzzing TestWithoutRun" || strings.Join(shards[1], " ") != "TestDeadlines" {
		t.Errorf("shards %q", shards)
	}
}
