// Package suite is the machinery behind `make test` (cmd/vio-suite): it
// reads `go test -json` event streams into counts that say what ran, what
// failed and what was skipped and why, and it classifies fuzz runs so that
// only a real finding fails the suite.
package suite

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// Event is one line of `go test -json` (cmd/test2json's TestEvent).
type Event struct {
	Time        time.Time
	Action      string
	Package     string
	ImportPath  string // build-output and build-fail events name the test binary here
	Test        string
	Elapsed     float64
	Output      string
	FailedBuild string
}

// Skip is a skipped test and the reason it gave.
type Skip struct {
	Package, Test, Reason string
}

// LayerSkip is a package whose tests did not run at all because this host
// cannot run them (see labtest's LayerSkipped), with the reason it printed.
type LayerSkip struct {
	Package, Reason string
}

// Failure is a failed test (Test "" for a package that failed outside any
// test: a build error, a TestMain failure, a crash) with its output.
type Failure struct {
	Package, Test, Output string
}

// PackageResult is how one package ended.
type PackageResult struct {
	Package                 string
	Action                  string // pass, fail, skip
	Elapsed                 float64
	Passed, Failed, Skipped int
	NoTests                 bool
}

// Tally accumulates a `go test -json` stream.
type Tally struct {
	Passed, Failed, Skipped int
	Skips                   []Skip
	LayerSkips              []LayerSkip
	Failures                []Failure
	Packages                []PackageResult

	// OnTest, if set, is called as each test or subtest ends (action is
	// pass, fail or skip), so a runner can show progress inside packages
	// that take minutes (the lab's).
	OnTest func(pkg, test, action string, elapsed float64)

	output     map[string]*strings.Builder // "pkg\x00test" -> output so far
	labAccount map[string]*strings.Builder // pkg -> labtest's lines printed inside its tests
	counts     map[string]*PackageResult
}

// LayerSkipPrefix starts the line a package prints (from its TestMain)
// when a whole layer of tests cannot run on this host.
const LayerSkipPrefix = "vio-suite: layer skipped: "

func key(pkg, test string) string { return pkg + "\x00" + test }

// Add takes one event. It returns the package's result when the event
// ends a package, nil otherwise.
func (t *Tally) Add(e Event) *PackageResult {
	if t.output == nil {
		t.output = map[string]*strings.Builder{}
		t.labAccount = map[string]*strings.Builder{}
		t.counts = map[string]*PackageResult{}
	}
	pr := t.counts[e.Package]
	if pr == nil {
		pr = &PackageResult{Package: e.Package}
		t.counts[e.Package] = pr
	}
	k := key(e.Package, e.Test)
	if e.Action == "build-output" {
		k = key(e.ImportPath, "")
	}
	switch e.Action {
	case "output", "build-output":
		b := t.output[k]
		if b == nil {
			b = &strings.Builder{}
			t.output[k] = b
		}
		b.WriteString(e.Output)
		if e.Test != "" && isLabAccount(e.Output) {
			// test2json gives labtest's lines to whichever test was
			// running when L1 died; when that test passes in the
			// retry its output is dropped, and with it the account
			// of the first lab's death. The package keeps a copy.
			a := t.labAccount[e.Package]
			if a == nil {
				a = &strings.Builder{}
				t.labAccount[e.Package] = a
			}
			a.WriteString(e.Output)
		}
		if e.Test == "" && e.Action == "output" {
			if r, ok := strings.CutPrefix(strings.TrimSpace(e.Output), LayerSkipPrefix); ok {
				t.LayerSkips = append(t.LayerSkips, LayerSkip{e.Package, r})
			}
			if strings.Contains(e.Output, "[no test files]") || strings.Contains(e.Output, "[no tests to run]") {
				pr.NoTests = true
			}
		}
	case "pass", "fail", "skip":
		out := ""
		if b := t.output[k]; b != nil {
			out = b.String()
			delete(t.output, k)
		}
		if e.Test == "" {
			pr.Action, pr.Elapsed = e.Action, e.Elapsed
			// Tests that never ended: the test binary died or was killed
			// under them (a timeout, a crash, the lab giving up). Their
			// output is the story of what happened, so it goes with the
			// package's failure.
			unfinished := t.takeUnfinished(e.Package)
			if e.Action == "fail" && (pr.Failed == 0 || unfinished != "") {
				// The package failed with no failing test (a build
				// error, a crash, a timeout or a TestMain failure), or
				// with tests cut short.
				t.Failed++
				pr.Failed++
				t.Failures = append(t.Failures, Failure{Package: e.Package, Output: unfinished + out + t.buildOutput(e.FailedBuild) + t.takeLabAccount(e.Package)})
			}
			delete(t.labAccount, e.Package)
			res := *pr
			t.Packages = append(t.Packages, res)
			return &res
		}
		if t.OnTest != nil {
			t.OnTest(e.Package, e.Test, e.Action, e.Elapsed)
		}
		switch e.Action {
		case "pass":
			t.Passed++
			pr.Passed++
		case "fail":
			t.Failed++
			pr.Failed++
			t.Failures = append(t.Failures, Failure{e.Package, e.Test, out})
		case "skip":
			t.Skipped++
			pr.Skipped++
			t.Skips = append(t.Skips, Skip{e.Package, e.Test, skipReason(out)})
		}
	}
	return nil
}

// takeUnfinished returns, and forgets, the output of pkg's tests that
// started but never ended, each under a line naming it.
func (t *Tally) takeUnfinished(pkg string) string {
	var names []string
	for k := range t.output {
		if p, test, _ := strings.Cut(k, "\x00"); p == pkg && test != "" {
			names = append(names, test)
		}
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		fmt.Fprintf(&b, "test %s did not finish; its output:\n%s", n, t.output[key(pkg, n)].String())
		delete(t.output, key(pkg, n))
	}
	return b.String()
}

// isLabAccount says whether a line of output is labtest's account of a
// lab run (a death, a lockup, a retry) rather than a test's own.
func isLabAccount(line string) bool {
	return strings.HasPrefix(line, "labtest: ") || strings.HasPrefix(line, "L1's kernel reported: ")
}

// takeLabAccount returns, and forgets, labtest's lines that pkg's tests
// printed, under a heading; "" when there were none.
func (t *Tally) takeLabAccount(pkg string) string {
	a := t.labAccount[pkg]
	delete(t.labAccount, pkg)
	if a == nil {
		return ""
	}
	return "labtest's account of the package's lab runs (lines printed inside tests, including tests that passed on a retry):\n" + a.String()
}

func (t *Tally) buildOutput(pkg string) string {
	if pkg == "" {
		return ""
	}
	if b := t.output[key(pkg, "")]; b != nil {
		return b.String()
	}
	return ""
}

// skipReason picks the message a skipped test gave out of its output.
func skipReason(out string) string {
	var msgs []string
	for _, l := range strings.Split(out, "\n") {
		s := strings.TrimSpace(l)
		if s == "" || strings.HasPrefix(s, "=== ") || strings.HasPrefix(s, "--- SKIP") {
			continue
		}
		msgs = append(msgs, s)
	}
	if len(msgs) == 0 {
		return "(no reason given)"
	}
	return msgs[len(msgs)-1]
}

// Read feeds a whole `go test -json` stream into t, calling onPackage for
// each package as it ends and onOther for lines that are not JSON (the go
// command's own messages). It returns the first read error.
func (t *Tally) Read(r io.Reader, onPackage func(PackageResult), onOther func(string)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e Event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil {
			if onOther != nil {
				onOther(string(line))
			}
			continue
		}
		if pr := t.Add(e); pr != nil && onPackage != nil {
			onPackage(*pr)
		}
	}
	return sc.Err()
}

// SortedSkips returns the skips ordered by package and test.
func (t *Tally) SortedSkips() []Skip {
	s := append([]Skip(nil), t.Skips...)
	sort.Slice(s, func(i, j int) bool {
		if s[i].Package != s[j].Package {
			return s[i].Package < s[j].Package
		}
		return s[i].Test < s[j].Test
	})
	return s
}

// ClosingLine is the suite's last line: what ran, in the form CI reads.
func ClosingLine(passed, failed, skipped int) string {
	return fmt.Sprintf("suite: %d passed, %d failed, %d skipped", passed, failed, skipped)
}
