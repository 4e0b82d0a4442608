package labtest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/viovmm/vio/lab"
)

// MainSharded is Main for a package of many slow tests: off a host with
// hardware virtualization it spreads the tests over n lab boots that run
// at the same time. An L2 guest of one vCPU keeps one host core busy, so on
// a machine of two cores two labs finish the package in about half the
// time of one. Each shard's output is printed whole when it ends, so test
// output never interleaves.
func MainSharded(m *testing.M, n int) { os.Exit(RunSharded(m, n)) }

// RunSharded is MainSharded returning the exit status.
func RunSharded(m *testing.M, n int) int {
	args := os.Args[1:]
	if Inside() || lab.HardwareKVM() || listing(args) {
		return m.Run()
	}
	why := "this host has no hardware virtualization"
	if os.Getenv("VIO_LAB") == "off" {
		return relaunchUnlessOff(why, 0)
	}
	shards, err := shardTests(args, n)
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

// shardTests lists the tests the arguments select and deals them
// round-robin into at most n shards.
func shardTests(args []string, n int) ([][]string, error) {
	names, err := listTests(args)
	if err != nil {
		return nil, err
	}
	n = min(n, len(names))
	if n < 1 {
		return nil, nil
	}
	shards := make([][]string, n)
	for i, name := range names {
		shards[i%n] = append(shards[i%n], name)
	}
	return shards, nil
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
