package labtest

import (
	"errors"
	"fmt"
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
		args          []string
		budget, spent time.Duration
		lab, test     time.Duration
	}{
		{[]string{"-test.timeout=40m0s"}, 0, 0, 39*time.Minute + 30*time.Second, 35*time.Minute + 33*time.Second},
		{[]string{"-test.timeout=40m0s"}, 10 * time.Minute, 0, 10 * time.Minute, 9 * time.Minute},
		{nil, 0, 0, 9*time.Minute + 30*time.Second, 8*time.Minute + 30*time.Second},
		{[]string{"-test.timeout=1m"}, 0, 0, time.Minute, 30 * time.Second},
		// Time spent waiting for a lab slot comes off go test's deadline.
		{[]string{"-test.timeout=40m0s"}, 0, 10 * time.Minute, 29*time.Minute + 30*time.Second, 26*time.Minute + 33*time.Second},
		{[]string{"-test.timeout=40m0s"}, 10 * time.Minute, 35 * time.Minute, 4*time.Minute + 30*time.Second, 3*time.Minute + 30*time.Second},
		{[]string{"-test.timeout=40m0s"}, 0, 45 * time.Minute, time.Minute, 30 * time.Second},
	} {
		lab, test := deadlines(c.args, c.budget, c.spent)
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
	if _, err := shardTests([]string{"-test.run=TestA/sub"}, 2, nil); err == nil {
		t.Error("a subtest filter was sharded")
	}
}

// TestShardTests lists this package's own tests through the binary, as
// RunSharded does, and deals them out.
func TestShardTests(t *testing.T) {
	shards, err := shardTests([]string{"-test.run=^(TestFuzzing|TestDeadlines|TestWithoutRun)$"}, 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(shards) != 2 || strings.Join(shards[0], " ") != "TestFuzzing TestWithoutRun" || strings.Join(shards[1], " ") != "TestDeadlines" {
		t.Errorf("shards %q", shards)
	}
}

// TestDealBalanced: with expected times, the two longest tests land in
// different shards (round-robin put them together here), tests not named
// count as the median, and each shard keeps the listed order.
func TestDealBalanced(t *testing.T) {
	names := []string{"TestA", "TestB", "TestC", "TestD", "TestE", "TestF"}
	if got := deal(names, 2, nil); fmt.Sprint(got) != "[[TestA TestC TestE] [TestB TestD TestF]]" {
		t.Fatalf("round-robin: %v", got)
	}
	exp := Expected{"TestA": 300 * time.Second, "TestC": 290 * time.Second, "TestB": 60 * time.Second,
		"TestD": 50 * time.Second, "TestE": 40 * time.Second}
	got := deal(names, 2, exp)
	// TestA 300 | TestC 290; then, each onto the lighter side: TestB (60)
	// with C, TestF (the median, 60) with A, TestD (50) with C, TestE (40)
	// with A: 400 s each.
	if fmt.Sprint(got) != "[[TestA TestE TestF] [TestB TestC TestD]]" {
		t.Fatalf("balanced: %v", got)
	}
	if got := deal(names[:1], 3, exp); fmt.Sprint(got) != "[[TestA]]" {
		t.Fatalf("one test, three shards: %v", got)
	}
}

// TestProgress: verdicts of top-level tests are found in test2json framing
// and in plain -test.v output, across split writes; subtests and test
// output that merely mentions a verdict are not.
func TestProgress(t *testing.T) {
	var p progress
	out := "\x16=== RUN   TestA\n\x16=== RUN   TestA/sub\n\x16--- FAIL: TestA/sub (0.00s)\n" +
		"\x16--- PASS: TestA (1.00s)\n    x_test.go:9: --- PASS: TestC (0.1s)\n--- SKIP: TestB (0.00s)\n" +
		"=== RUN   TestC\n--- FAIL: TestD (2.0s)\n=== RUN   TestE\n--- PA"
	for i := 0; i < len(out); i += 7 {
		p.Write([]byte(out[i:min(i+7, len(out))]))
	}
	rest, failed := p.unfinished([]string{"TestA", "TestB", "TestC", "TestD", "TestE"})
	if strings.Join(rest, " ") != "TestC TestE" || !failed {
		t.Errorf("unfinished = %q, %v; want [TestC TestE], true", rest, failed)
	}
	var q progress
	q.Write([]byte("--- PASS: TestA (0.00s)\n"))
	if rest, failed := q.unfinished([]string{"TestA", "TestB"}); strings.Join(rest, " ") != "TestB" || failed {
		t.Errorf("unfinished = %q, %v; want [TestB], false", rest, failed)
	}
}

// TestRetryNothingLeft: when every selected test finished before L1
// wedged, no second lab boots and the first run's verdicts stand.
func TestRetryNothingLeft(t *testing.T) {
	var p progress
	p.Write([]byte("--- PASS: TestFuzzing (0.00s)\n--- FAIL: TestDeadlines (0.00s)\n"))
	var out strings.Builder
	err, failed, done := retryUnfinished(t.Context(), "x.test", []string{"-test.run=^(TestFuzzing|TestDeadlines)$"}, &p, time.Hour, nil, &out, &out)
	if err != nil || !failed || !done || !strings.Contains(out.String(), "nothing to run again") {
		t.Errorf("retryUnfinished = %v, %v, %v; output %q", err, failed, done, out.String())
	}
	out.Reset()
	wedged := errors.New("wedged")
	if err, _, done := retryUnfinished(t.Context(), "x.test", nil, &p, time.Minute, wedged, &out, &out); err != wedged || done || !strings.Contains(out.String(), "too little") {
		t.Errorf("with a minute left: %v, %v; output %q", err, done, out.String())
	}
}
