package suite

import (
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// FuzzVerdict is what one `go test -fuzz` run of one target means.
type FuzzVerdict int

const (
	// FuzzPassed: the target ran its budget and found nothing.
	FuzzPassed FuzzVerdict = iota
	// FuzzFinding: the fuzzer found an input that fails the target (it
	// wrote a reproducer, or a worker crashed on an input).
	FuzzFinding
	// FuzzCoordinatorRace: the run failed with nothing but "context
	// deadline exceeded" at the -fuzztime boundary and wrote no input.
	// That is Go's fuzz coordinator racing its own deadline
	// (golang/go#75804, fixed in Go 1.27), not a property of the code
	// under test: it says nothing about the target.
	FuzzCoordinatorRace
	// FuzzBroken: the run failed for another reason (the package did not
	// build, the seed corpus failed, the toolchain crashed...). It is a
	// failure: something is wrong, just not a fresh finding.
	FuzzBroken
)

func (v FuzzVerdict) String() string {
	switch v {
	case FuzzPassed:
		return "passed"
	case FuzzFinding:
		return "finding"
	case FuzzCoordinatorRace:
		return "coordinator deadline race (no finding)"
	case FuzzBroken:
		return "failed"
	}
	return "unknown"
}

// Failed reports whether the verdict must fail the suite.
func (v FuzzVerdict) Failed() bool { return v == FuzzFinding || v == FuzzBroken }

var (
	failLine    = regexp.MustCompile(`^\s*--- FAIL: (Fuzz\S*) \(`)
	writtenLine = regexp.MustCompile(`Failing input written to (\S+)`)
)

// ClassifyFuzz tells what a fuzz run's output means. ok is whether the go
// command exited 0; newInputs are files that appeared under the target's
// testdata/fuzz directory during the run (a reproducer the fuzzer wrote).
//
// Only a run whose sole complaint is the bare deadline error, with no
// reproducer written, is the coordinator race: a real crash always writes
// its input first and prints it, and any other message (a panic, a t.Error
// from the seed corpus, a build error) is kept as a failure.
func ClassifyFuzz(output string, ok bool, newInputs []string) FuzzVerdict {
	if ok {
		return FuzzPassed
	}
	if len(newInputs) > 0 || writtenLine.MatchString(output) {
		return FuzzFinding
	}
	lines := strings.Split(strings.ReplaceAll(output, "\r\n", "\n"), "\n")
	failAt := -1
	for i, l := range lines {
		if failLine.MatchString(l) {
			if failAt >= 0 {
				return FuzzBroken // more than one failing test
			}
			failAt = i
		}
	}
	if failAt < 0 {
		return FuzzBroken
	}
	// What the failing target said: the indented lines after "--- FAIL".
	var said []string
	for _, l := range lines[failAt+1:] {
		t := strings.TrimSpace(l)
		if t == "" {
			continue
		}
		if !strings.HasPrefix(l, " ") && !strings.HasPrefix(l, "\t") {
			break // FAIL, exit status, the package line
		}
		said = append(said, t)
	}
	if len(said) == 1 && said[0] == "context deadline exceeded" {
		for _, l := range lines[:failAt] {
			if strings.HasPrefix(strings.TrimSpace(l), "panic:") || strings.Contains(l, "fuzzing process hung or terminated unexpectedly") {
				return FuzzFinding
			}
		}
		return FuzzCoordinatorRace
	}
	for _, l := range lines {
		if strings.Contains(l, "fuzzing process hung or terminated unexpectedly") {
			return FuzzFinding
		}
	}
	return FuzzBroken
}

// CorpusFiles lists the files of a fuzz target's corpus directory
// (dir/testdata/fuzz/target), so that a run's new reproducers can be told
// apart from the committed seeds.
func CorpusFiles(dir, target string) map[string]bool {
	files := map[string]bool{}
	entries, _ := os.ReadDir(filepath.Join(dir, "testdata", "fuzz", target))
	for _, e := range entries {
		files[filepath.Join(dir, "testdata", "fuzz", target, e.Name())] = true
	}
	return files
}

// NewFiles returns the paths in after that are not in before, sorted.
func NewFiles(before, after map[string]bool) []string {
	var n []string
	for f := range after {
		if !before[f] {
			n = append(n, f)
		}
	}
	sort.Strings(n)
	return n
}

var fuzzFunc = regexp.MustCompile(`(?m)^func (Fuzz[A-Za-z0-9_]*)\(\s*\w+\s+\*testing\.F\s*\)`)

// FuzzTargets lists the fuzz targets defined in a package's test files.
func FuzzTargets(dir string, testFiles []string) ([]string, error) {
	seen := map[string]bool{}
	var targets []string
	for _, f := range testFiles {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return nil, err
		}
		for _, m := range fuzzFunc.FindAllSubmatch(b, -1) {
			if name := string(m[1]); !seen[name] {
				seen[name] = true
				targets = append(targets, name)
			}
		}
	}
	sort.Strings(targets)
	return targets, nil
}
