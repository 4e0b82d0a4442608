// Command vio-suite runs vio's whole test suite, as `make test` does: every
// package's tests (`go test -json`, lab packages boot the lab themselves),
// then every fuzz target for a short budget. It prints each package as it
// ends, the output of every failure, every skipped test and skipped layer
// with its reason, the wall time, and a closing line counting what ran.
//
// A fuzz run fails the suite only for a finding or a real failure: a bare
// "context deadline exceeded" at the -fuzztime boundary with no input
// written is Go's coordinator race (golang/go#75804); it is retried once
// and reported, never counted as a failure.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/viovmm/vio/internal/suite"
)

func main() {
	fuzztime := flag.String("fuzztime", "5s", "budget per fuzz target (a duration, or Nx for a count)")
	// 55 minutes: the e2e package takes about 33 in the lab on a quiet 2-core
	// machine, and a busy one (another process taking CPU from the lab's
	// emulated CPUs) stretches it by half; CI must end within 90.
	timeout := flag.String("timeout", "55m", "go test -timeout for each package")
	noFuzz := flag.Bool("no-fuzz", false, "skip the fuzz pass")
	only := flag.String("run", "", "go test -run pattern (limits the test pass; fuzz pass is skipped)")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: vio-suite [-fuzztime D] [-timeout D] [-no-fuzz] [-run RE] [packages]")
		flag.PrintDefaults()
	}
	flag.Parse()
	pkgs := flag.Args()
	if len(pkgs) == 0 {
		pkgs = []string{"./..."}
	}
	start := time.Now()
	var r report
	r.tests(pkgs, *timeout, *only)
	if !*noFuzz && *only == "" {
		r.fuzz(pkgs, *fuzztime)
	}
	os.Exit(r.finish(time.Since(start)))
}

type report struct {
	tally      suite.Tally
	fuzzPassed int
	fuzzFailed []fuzzFailure
	fuzzNotes  []string
	errors     []string // the runner's own trouble
}

// tests runs go test -json over pkgs and streams a readable account.
func (r *report) tests(pkgs []string, timeout, run string) {
	args := []string{"test", "-json", "-count=1", "-timeout", timeout}
	if run != "" {
		args = append(args, "-run", run)
	}
	args = append(args, pkgs...)
	fmt.Printf("vio-suite: go %s\n", strings.Join(args, " "))
	cmd := exec.Command("go", args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		r.errors = append(r.errors, err.Error())
		return
	}
	if err := cmd.Start(); err != nil {
		r.errors = append(r.errors, fmt.Sprintf("go test did not start: %v", err))
		return
	}
	failuresShown := 0
	// Tests that take a while (lab boots, real guests) are shown as they
	// end, so a package that runs for minutes is not a silent one.
	r.tally.OnTest = func(pkg, test, action string, elapsed float64) {
		if elapsed >= 20 && !strings.Contains(test, "/") {
			fmt.Printf("     %s %s %s (%.0fs)\n", pkg, test, action, elapsed)
		}
	}
	readErr := r.tally.Read(out, func(p suite.PackageResult) {
		word := "ok  "
		switch {
		case p.Action == "fail":
			word = "FAIL"
		case p.NoTests && p.Passed+p.Failed+p.Skipped == 0:
			word = "    " // a package without tests is not a skipped one
		case p.Action == "skip":
			word = "skip"
		}
		extra := ""
		switch {
		case p.NoTests && p.Passed+p.Failed+p.Skipped == 0:
			extra = " [no tests]"
		default:
			extra = fmt.Sprintf(" (%d passed, %d failed, %d skipped)", p.Passed, p.Failed, p.Skipped)
		}
		fmt.Printf("%s %-48s %7.1fs%s\n", word, p.Package, p.Elapsed, extra)
		for _, f := range r.tally.Failures[failuresShown:] {
			name := f.Test
			if name == "" {
				name = "(package)"
			}
			fmt.Printf("---- %s %s failed:\n%s\n", f.Package, name, indent(f.Output))
		}
		failuresShown = len(r.tally.Failures)
	}, func(line string) { fmt.Println(line) })
	if readErr != nil {
		r.errors = append(r.errors, fmt.Sprintf("reading go test output: %v", readErr))
	}
	if err := cmd.Wait(); err != nil && r.tally.Failed == 0 {
		// go test failed but no test or package said so: a setup error.
		r.errors = append(r.errors, fmt.Sprintf("go test: %v", err))
	}
}

// fuzz runs every fuzz target of pkgs for budget each.
func (r *report) fuzz(pkgs []string, budget string) {
	list, err := exec.Command("go", append([]string{"list", "-json=ImportPath,Dir,TestGoFiles,XTestGoFiles"}, pkgs...)...).Output()
	if err != nil {
		r.errors = append(r.errors, fmt.Sprintf("go list: %v", err))
		return
	}
	dec := json.NewDecoder(bytes.NewReader(list))
	type pkg struct {
		ImportPath, Dir           string
		TestGoFiles, XTestGoFiles []string
	}
	fmt.Printf("vio-suite: fuzzing every target for %s\n", budget)
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			r.errors = append(r.errors, fmt.Sprintf("go list output: %v", err))
			return
		}
		targets, err := suite.FuzzTargets(p.Dir, append(p.TestGoFiles, p.XTestGoFiles...))
		if err != nil {
			r.errors = append(r.errors, err.Error())
			continue
		}
		for _, t := range targets {
			r.fuzzOne(p.ImportPath, p.Dir, t, budget)
		}
	}
}

func (r *report) fuzzOne(pkg, dir, target, budget string) {
	for attempt := 1; ; attempt++ {
		before := suite.CorpusFiles(dir, target)
		start := time.Now()
		cmd := exec.Command("go", "test", "-run", "^$", "-fuzz", "^"+target+"$", "-fuzztime", budget,
			"-fuzzminimizetime", "100x", pkg)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		v := suite.ClassifyFuzz(out.String(), err == nil, suite.NewFiles(before, suite.CorpusFiles(dir, target)))
		fmt.Printf("fuzz %-48s %-28s %5.1fs %s\n", pkg, target, time.Since(start).Seconds(), v)
		switch {
		case v == suite.FuzzCoordinatorRace && attempt == 1:
			r.fuzzNotes = append(r.fuzzNotes, fmt.Sprintf("%s %s: bare deadline error with no input written (golang/go#75804); ran it again", pkg, target))
			continue
		case v == suite.FuzzCoordinatorRace:
			r.fuzzNotes = append(r.fuzzNotes, fmt.Sprintf("%s %s: the coordinator race again; no finding, counted as passed", pkg, target))
			r.fuzzPassed++
		case v.Failed():
			r.fuzzFailed = append(r.fuzzFailed, fuzzFailure{pkg, target, v.String(), out.String()})
			fmt.Printf("---- fuzz %s %s:\n%s\n", pkg, target, indent(out.String()))
		default:
			r.fuzzPassed++
		}
		return
	}
}

// fuzzFailure is a fuzz target that failed, and the output of its run.
type fuzzFailure struct {
	pkg, target, verdict, output string
}

// finish prints the summary and returns the exit status.
func (r *report) finish(wall time.Duration) int {
	t := &r.tally
	fmt.Println()
	fmt.Println("==== vio-suite summary")
	if len(t.LayerSkips) > 0 {
		fmt.Println("Layers that did not run on this host:")
		for _, s := range t.LayerSkips {
			fmt.Printf("  %s: %s\n", s.Package, s.Reason)
		}
	}
	if len(t.Skips) > 0 {
		fmt.Println("Skipped tests:")
		for _, s := range t.SortedSkips() {
			fmt.Printf("  %s %s: %s\n", s.Package, s.Test, s.Reason)
		}
	}
	for _, n := range r.fuzzNotes {
		fmt.Println("fuzz note:", n)
	}
	if len(t.Failures) > 0 || len(r.fuzzFailed) > 0 {
		fmt.Println("Failed:")
		for _, f := range t.Failures {
			fmt.Printf("  %s %s\n", f.Package, f.Test)
			for _, l := range suite.Reasons(f.Output, 6, 240) {
				fmt.Printf("      %s\n", l)
			}
		}
		// Each failed target by name, with the lines that say why (the
		// panic, the failing input's file): the end of a long log is
		// all a CI page may show.
		for _, f := range r.fuzzFailed {
			fmt.Printf("  %s %s (fuzz: %s)\n", f.pkg, f.target, f.verdict)
			for _, l := range suite.Reasons(f.output, 6, 240) {
				fmt.Printf("      %s\n", l)
			}
		}
	}
	for _, e := range r.errors {
		fmt.Println("vio-suite error:", e)
	}
	fmt.Printf("tests: %d passed, %d failed, %d skipped; fuzz targets: %d passed, %d failed\n",
		t.Passed, t.Failed, t.Skipped, r.fuzzPassed, len(r.fuzzFailed))
	fmt.Printf("wall time: %v\n", wall.Round(time.Second))
	failed := t.Failed + len(r.fuzzFailed) + len(r.errors)
	// Layers that did not run count as skipped: the closing line must
	// not look complete when a whole package of tests vanished.
	fmt.Println(suite.ClosingLine(t.Passed+r.fuzzPassed, failed, t.Skipped+len(t.LayerSkips)))
	if failed > 0 {
		return 1
	}
	return 0
}

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}
