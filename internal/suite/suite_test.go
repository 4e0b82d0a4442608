package suite

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// fixture copies testdata/fixture (a module of its own) into a temporary
// directory, so fuzz findings written there do not touch the tree.
func fixture(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"go.mod", "fixture_test.go", "main_test.go"} {
		b, err := os.ReadFile(filepath.Join("testdata", "fixture", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func goCmd(t *testing.T, dir string, env []string, args ...string) (string, bool) {
	t.Helper()
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off"), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if _, isExit := err.(*exec.ExitError); err != nil && !isExit {
		t.Fatalf("go %v: %v", args, err)
	}
	return out.String(), err == nil
}

func tallyOf(t *testing.T, out string) *Tally {
	t.Helper()
	var tl Tally
	if err := tl.Read(strings.NewReader(out), nil, nil); err != nil {
		t.Fatal(err)
	}
	return &tl
}

// TestTallyRealGoTest reads what the real go command prints for tests
// that pass, fail and skip (subtests included).
func TestTallyRealGoTest(t *testing.T) {
	dir := fixture(t)
	out, ok := goCmd(t, dir, []string{"FIXTURE_FAIL=1"}, "test", "-json", "-count=1", "-run", "^Test", ".")
	if ok {
		t.Fatalf("the fixture was meant to fail:\n%s", out)
	}
	tl := tallyOf(t, out)
	// Passed: TestPasses, TestParent, TestParent/a. Skipped: TestSkips,
	// TestParent/b. Failed: TestFails.
	if tl.Passed != 3 || tl.Failed != 1 || tl.Skipped != 2 {
		t.Errorf("tally %d passed, %d failed, %d skipped; want 3, 1, 2\n%s", tl.Passed, tl.Failed, tl.Skipped, out)
	}
	if len(tl.Failures) != 1 || tl.Failures[0].Test != "TestFails" || !strings.Contains(tl.Failures[0].Output, "failing on purpose") {
		t.Errorf("failures %+v", tl.Failures)
	}
	reasons := map[string]string{}
	for _, s := range tl.Skips {
		reasons[s.Test] = s.Reason
	}
	if !strings.HasSuffix(reasons["TestSkips"], "no widget on this host") || !strings.HasSuffix(reasons["TestParent/b"], "b is not for today") {
		t.Errorf("skip reasons %q", reasons)
	}
	if len(tl.Packages) != 1 || tl.Packages[0].Action != "fail" {
		t.Errorf("packages %+v", tl.Packages)
	}
}

// TestTallyLayerSkip: a package whose TestMain declines to run anything
// is reported as a skipped layer with its reason, not as a silent pass.
func TestTallyLayerSkip(t *testing.T) {
	dir := fixture(t)
	out, ok := goCmd(t, dir, []string{"FIXTURE_LAYER_SKIP=1"}, "test", "-json", "-count=1", ".")
	if !ok {
		t.Fatalf("go test failed:\n%s", out)
	}
	tl := tallyOf(t, out)
	if len(tl.LayerSkips) != 1 || tl.LayerSkips[0].Reason != "this host has no widget bus" {
		t.Errorf("layer skips %+v\n%s", tl.LayerSkips, out)
	}
	if tl.Passed+tl.Failed+tl.Skipped != 0 {
		t.Errorf("tests counted in a skipped layer: %+v", tl)
	}
}

// TestTallyBuildFailure: a package that does not compile counts as a
// failure, with the compiler's message.
func TestTallyBuildFailure(t *testing.T) {
	dir := fixture(t)
	if err := os.WriteFile(filepath.Join(dir, "broken_test.go"), []byte("package fixture\nfunc TestBroken(t *testing.T) { undefinedThing() }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, ok := goCmd(t, dir, nil, "test", "-json", "-count=1", ".")
	if ok {
		t.Fatal("a broken package passed")
	}
	tl := tallyOf(t, out)
	if tl.Failed != 1 || len(tl.Failures) != 1 || !strings.Contains(tl.Failures[0].Output, "undefined") {
		t.Errorf("tally %+v\n%s", tl, out)
	}
}

// TestClassifyRealFinding: the real fuzzer finds the fixture's bug and
// writes a reproducer; that is a finding.
func TestClassifyRealFinding(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the fuzzer")
	}
	dir := fixture(t)
	before := CorpusFiles(dir, "FuzzFindsX")
	out, ok := goCmd(t, dir, nil, "test", "-run", "^$", "-fuzz", "^FuzzFindsX$", "-fuzztime", "200000x", "-parallel", "1", ".")
	newInputs := NewFiles(before, CorpusFiles(dir, "FuzzFindsX"))
	if v := ClassifyFuzz(out, ok, newInputs); v != FuzzFinding {
		t.Fatalf("verdict %v, want finding; new inputs %v; output:\n%s", v, newInputs, out)
	}
	// Even without looking at the directory, the output says so.
	if v := ClassifyFuzz(out, ok, nil); v != FuzzFinding {
		t.Errorf("verdict from output alone %v, want finding", v)
	}
}

// TestClassifyRealPass: a clean run of the real fuzzer passes.
func TestClassifyRealPass(t *testing.T) {
	dir := fixture(t)
	out, ok := goCmd(t, dir, nil, "test", "-run", "^$", "-fuzz", "^FuzzFindsX$", "-fuzztime", "1x", ".")
	if v := ClassifyFuzz(out, ok, nil); v != FuzzPassed {
		t.Fatalf("verdict %v, want passed; output:\n%s", v, out)
	}
}

// The output of Go 1.26's coordinator race, as seen in this project's CI
// (devices/acpipm, 2026-12) and elsewhere.
const raceOutput = `fuzz: elapsed: 0s, gathering baseline coverage: 0/12 completed
fuzz: elapsed: 0s, gathering baseline coverage: 12/12 completed, now fuzzing with 2 workers
fuzz: elapsed: 3s, execs: 40304 (13431/sec), new interesting: 4 (total: 16)
fuzz: elapsed: 9s, execs: 98311 (19335/sec), new interesting: 5 (total: 17)
--- FAIL: FuzzDevice (10.05s)
    context deadline exceeded
FAIL
exit status 1
FAIL	github.com/viovmm/vio/devices/acpipm	10.071s
`

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		name      string
		out       string
		ok        bool
		newInputs []string
		want      FuzzVerdict
	}{
		{"clean", "fuzz: elapsed: 10s\nPASS\nok  \tp\t10.1s\n", true, nil, FuzzPassed},
		{"race", raceOutput, false, nil, FuzzCoordinatorRace},
		{"race with CRLF", strings.ReplaceAll(raceOutput, "\n", "\r\n"), false, nil, FuzzCoordinatorRace},
		{"deadline but an input was written", raceOutput, false, []string{"testdata/fuzz/FuzzDevice/abc"}, FuzzFinding},
		{"deadline after a worker died", "fuzzing process hung or terminated unexpectedly: exit status 2\n" + raceOutput, false, nil, FuzzFinding},
		{"deadline and another message", strings.Replace(raceOutput, "    context deadline exceeded\n",
			"    x_test.go:9: seed failed\n    context deadline exceeded\n", 1), false, nil, FuzzBroken},
		{"seed corpus failure", "--- FAIL: FuzzDevice (0.01s)\n    --- FAIL: FuzzDevice/seed#0 (0.00s)\n        x_test.go:9: bad\nFAIL\n", false, nil, FuzzBroken},
		{"build failure", "# p\n./x_test.go:3:1: undefined: y\nFAIL\tp [build failed]\n", false, nil, FuzzBroken},
		{"timeout panic", "panic: test timed out after 10m0s\n--- FAIL: FuzzDevice (600s)\n    context deadline exceeded\n", false, nil, FuzzFinding},
	} {
		if got := ClassifyFuzz(c.out, c.ok, c.newInputs); got != c.want {
			t.Errorf("%s: verdict %v, want %v", c.name, got, c.want)
		}
	}
}

func TestFuzzTargets(t *testing.T) {
	got, err := FuzzTargets(filepath.Join("testdata", "fixture"), []string{"fixture_test.go", "main_test.go"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != "FuzzFindsX" {
		t.Errorf("targets %v, want [FuzzFindsX]", got)
	}
}

// TestTallyUnfinishedTest: a test binary killed under a running test (a
// timeout, the lab giving up) is reported with what that test printed.
func TestTallyUnfinishedTest(t *testing.T) {
	dir := fixture(t)
	if err := os.WriteFile(filepath.Join(dir, "hang_test.go"), []byte(`package fixture
import ("fmt"; "os"; "testing")
func TestHangs(t *testing.T) {
	fmt.Println("booting the guest, which never comes back")
	os.Exit(1) // as when the lab kills the binary under a running test
}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	out, ok := goCmd(t, dir, nil, "test", "-json", "-count=1", "-run", "TestHangs", ".")
	if ok {
		t.Fatal("a hanging test passed")
	}
	tl := tallyOf(t, out)
	if tl.Failed == 0 || len(tl.Failures) == 0 {
		t.Fatalf("no failure counted: %+v\n%s", tl, out)
	}
	got := tl.Failures[len(tl.Failures)-1].Output
	if !strings.Contains(got, "booting the guest, which never comes back") {
		t.Errorf("the unfinished test's output is not in the failure:\n%s", got)
	}
}

// TestTallyLabAccountKept: labtest's account of a lab that died under a
// test that then passed on the retry (test2json gives the lines to that
// test, whose output a pass drops) still reaches the package's failure.
func TestTallyLabAccountKept(t *testing.T) {
	dir := fixture(t)
	if err := os.WriteFile(filepath.Join(dir, "retry_test.go"), []byte(`package fixture
import ("fmt"; "os"; "testing")
func TestRetriedFine(t *testing.T) {
	fmt.Println("labtest: lab: L1 stopped without reporting the command's status (first lab)")
	fmt.Println("L1's kernel reported: BUG: first death")
	fmt.Println("a line of the test's own")
}
func TestDiesAgain(t *testing.T) {
	os.Exit(1)
}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	out, ok := goCmd(t, dir, nil, "test", "-json", "-count=1", "-run", "TestRetriedFine|TestDiesAgain", ".")
	if ok {
		t.Fatal("a dying test passed")
	}
	tl := tallyOf(t, out)
	if len(tl.Failures) == 0 {
		t.Fatalf("no failure counted: %+v\n%s", tl, out)
	}
	got := tl.Failures[len(tl.Failures)-1].Output
	for _, want := range []string{"(first lab)", "BUG: first death"} {
		if !strings.Contains(got, want) {
			t.Errorf("the package's failure lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "a line of the test's own") {
		t.Errorf("a passing test's own output reached the package's failure:\n%s", got)
	}
}

// TestReasons: a failure's summary keeps the lines a test wrote at a
// file:line, and a panic, not the dumps that follow them.
func TestReasons(t *testing.T) {
	out := strings.Join([]string{
		"=== RUN   TestAPIHotplug",
		"    hotplug_test.go:262: no the guest's init before the deadline; console:",
		"        [    0.000000] Linux version 6.1",
		"        a console line mentioning x.go:12: in passing",
		"    hotplug_test.go:300: " + strings.Repeat("y", 50),
		"panic: runtime error: index out of range [recovered]",
		"--- FAIL: TestAPIHotplug (360.00s)",
	}, "\n")
	got := Reasons(out, 5, 40)
	want := []string{
		"hotplug_test.go:262: no the guest's init [...]",
		"hotplug_test.go:300: " + strings.Repeat("y", 19) + " [...]",
		"panic: runtime error: index out of range [recovered]"[:40] + " [...]",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Reasons:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	pkg := "test TestShutdown did not finish; its output:\n=== RUN   TestShutdown\nlabtest: lab: L1 stopped running its programs\nL1's kernel reported: BUG: x | RIP: y\nlast lines of L1's console:\n  ? do_syscall_64+0x69/0xb0\n"
	if got := Reasons(pkg, 5, 80); len(got) != 3 || !strings.HasPrefix(got[0], "test TestShutdown did not finish") || !strings.HasPrefix(got[1], "labtest: lab: L1 stopped") || got[2] != "L1's kernel reported: BUG: x | RIP: y" {
		t.Errorf("a package's reasons: %q", got)
	}
	fuzz := "--- FAIL: FuzzWalk (0.31s)\n    --- FAIL: FuzzWalk (0.00s)\n        testing.go:1591: panic: boom\n    Failing input written to testdata/fuzz/FuzzWalk/0a1b\n    To re-run:\n    go test -run=FuzzWalk/0a1b\nFAIL\n"
	if got := Reasons(fuzz, 5, 80); len(got) != 2 || !strings.HasPrefix(got[0], "testing.go:1591: panic") || got[1] != "Failing input written to testdata/fuzz/FuzzWalk/0a1b" {
		t.Errorf("a fuzz run's reasons: %q", got)
	}
	if got := Reasons(strings.Repeat("    a_test.go:1: m\n", 10), 3, 80); len(got) != 4 || !strings.HasPrefix(got[3], "[more") {
		t.Errorf("capped reasons: %q", got)
	}
}
