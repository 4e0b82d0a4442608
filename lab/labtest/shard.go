package labtest

import (
	"bytes"
	"cmp"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/viovmm/vio/lab"
)

// MainSharded is Main for a package of many slow tests: off a host with
// hardware virtualization it spreads the tests over n lab boots that run
// at the same time. An L2 guest of one vCPU keeps one host core busy, so on
// a machine of two cores two labs finish the package in about half the
// time of one. Each shard's output is printed whole when it ends, so test
// output never interleaves.
func MainSharded(m *testing.M, n int) { os.Exit(RunSharded(m, n, nil)) }

// Expected is how long each test is expected to take, for dealing tests
// into shards that end together; it need only be roughly right. A test it
// does not name counts as the median of those it does.
type Expected map[string]time.Duration

// RunSharded is MainSharded returning the exit status, with the shards
// balanced by expected (nil: dealt round-robin).
func RunSharded(m *testing.M, n int, expected Expected) int {
	args := os.Args[1:]
	if Inside() || lab.HardwareKVM() || listing(args) {
		return m.Run()
	}
	why := "this host has no hardware virtualization"
	if os.Getenv("VIO_LAB") == "off" {
		return relaunchUnlessOff(why, 0)
	}
	shards, err := shardTests(args, n, expected)
	if err != nil || len(shards) < 2 {
		if err != nil {
			fmt.Printf("labtest: not sharding (%v)\n", err)
		}
		return relaunchUnlessOff(why, 0)
	}
	type result struct {
		out, errOut bytes.Buffer
		code        int
	}
	results := make([]*result, len(shards))
	var wg sync.WaitGroup
	var mu sync.Mutex // one shard's output at a time
	for i, names := range shards {
		r := &result{}
		results[i] = r
		wg.Add(1)
		go func() {
			defer wg.Done()
			shardArgs := append(withoutRun(args), "-test.run=^("+strings.Join(names, "|")+")$")
			r.code = relaunchWith(fmt.Sprintf("%s; shard %d of %d (%s)", why, i+1, len(shards), strings.Join(names, " ")),
				0, shardArgs, &r.out, &r.errOut)
			mu.Lock()
			os.Stdout.Write(r.out.Bytes())
			os.Stderr.Write(r.errOut.Bytes())
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, r := range results {
		if r.code != 0 {
			return r.code
		}
	}
	return 0
}

// listing reports whether the binary was asked only to list its tests.
func listing(args []string) bool {
	for _, a := range args {
		if strings.HasPrefix(a, "-test.list=") {
			return true
		}
	}
	return false
}

// shardTests lists the tests the arguments select and deals them into at
// most n shards (see deal).
func shardTests(args []string, n int, expected Expected) ([][]string, error) {
	names, err := listTests(args)
	if err != nil {
		return nil, err
	}
	return deal(names, n, expected), nil
}

// deal splits names into at most n shards. With no expected times it
// deals round-robin. With them, it gives each test, longest first, to the
// shard with the least expected time so far (the LPT rule, within 4/3 of
// the best split): round-robin can put the two longest tests in one shard,
// and the package lasts as long as its longest shard. Within a shard,
// tests keep their listed order.
func deal(names []string, n int, expected Expected) [][]string {
	n = min(n, len(names))
	if n < 1 {
		return nil
	}
	shards := make([][]string, n)
	if len(expected) == 0 {
		for i, name := range names {
			shards[i%n] = append(shards[i%n], name)
		}
		return shards
	}
	known := make([]time.Duration, 0, len(expected))
	for _, d := range expected {
		known = append(known, d)
	}
	slices.Sort(known)
	median := known[len(known)/2]
	cost := func(name string) time.Duration {
		if d, ok := expected[name]; ok {
			return d
		}
		return median
	}
	order := slices.Clone(names)
	slices.SortStableFunc(order, func(a, b string) int { return cmp.Compare(cost(b), cost(a)) })
	load := make([]time.Duration, n)
	shardOf := map[string]int{}
	for _, name := range order {
		i := slices.Index(load, slices.Min(load))
		load[i] += cost(name)
		shardOf[name] = i
	}
	for _, name := range names {
		shards[shardOf[name]] = append(shards[shardOf[name]], name)
	}
	return shards
}

// listTests lists the top-level tests the arguments select, by running
// this binary with -test.list. A -test.run that selects subtests is
// refused: the list names whole tests.
func listTests(args []string) ([]string, error) {
	run := "."
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "-test.run="); ok && v != "" {
			if strings.Contains(v, "/") {
				return nil, fmt.Errorf("-test.run %q selects subtests", v)
			}
			run = v
		}
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	out, err := exec.Command(self, "-test.list="+run).Output()
	if err != nil {
		return nil, fmt.Errorf("listing the tests: %w", err)
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		if testName.MatchString(line) {
			names = append(names, line)
		}
	}
	return names, nil
}

var testName = regexp.MustCompile(`^Test\w*$`)

// withoutRun returns args less any -test.run.
func withoutRun(args []string) []string {
	var out []string
	for _, a := range args {
		if !strings.HasPrefix(a, "-test.run=") {
			out = append(out, a)
		}
	}
	return out
}
