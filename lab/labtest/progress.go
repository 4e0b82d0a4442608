package labtest

import (
	"bytes"
	"regexp"
	"sync"
)

// progress watches a test binary's output (plain -test.v or go test
// -json's test2json framing) for the top-level tests that ended, so that
// after L1 wedges only the tests that never finished run again: those that
// passed already printed their results, and a second run of a long package
// would not fit in go test's deadline.
type progress struct {
	mu       sync.Mutex
	line     []byte
	finished map[string]bool
	failed   bool
}

// testEnd matches a top-level test's verdict line; subtests carry a slash
// and never match.
var testEnd = regexp.MustCompile(`^\x16?--- (PASS|FAIL|SKIP): (Test\w*) \(`)

func (p *progress) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for rest := b; len(rest) > 0; {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			// Keep a partial line, bounded: a verdict line is short.
			if len(p.line) < 4096 {
				p.line = append(p.line, rest[:min(len(rest), 4096-len(p.line))]...)
			}
			break
		}
		p.line = append(p.line, rest[:i]...)
		p.verdict(p.line)
		p.line = p.line[:0]
		rest = rest[i+1:]
	}
	return len(b), nil
}

func (p *progress) verdict(line []byte) {
	m := testEnd.FindSubmatch(line)
	if m == nil {
		return
	}
	if p.finished == nil {
		p.finished = map[string]bool{}
	}
	p.finished[string(m[2])] = true
	if string(m[1]) == "FAIL" {
		p.failed = true
	}
}

// unfinished returns the tests of names that have no verdict yet, and
// whether any test failed.
func (p *progress) unfinished(names []string) (rest []string, failed bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, n := range names {
		if !p.finished[n] {
			rest = append(rest, n)
		}
	}
	return rest, p.failed
}
