package suite

import (
	"regexp"
	"strings"
)

// A test's own messages (t.Error, t.Fatal, t.Log) begin with the file and
// line that made them; so do panics and the test binary's timeout.
// A package that failed outside its tests says so in the lines of
// vio-suite's tally ("test X did not finish") and of the lab ("labtest:"
// lines naming a wedged or dead L1, and what L1's kernel said). A fuzz run names the input it
// failed on, or says its worker died.
var reasonLine = regexp.MustCompile(`^\s*(?:[\w.-]+\.go:\d+: |panic: |fatal error: |FAIL: |test timed out|test \S+ did not finish|labtest: |L1's kernel reported: |.*\[build failed\]|Failing input written to |fuzzing process |context deadline exceeded)`)

// Reasons picks from a failed test's output the lines that say why: the
// first line of each message the test wrote at a file:line (the rest of a
// message, a console dump say, is left out), panics, timeouts. At most max
// lines, each cut to width characters, so that the end of a long run's log
// (what a CI page shows) names the cause of every failure, not only the
// last one's dump.
func Reasons(output string, max, width int) []string {
	var out []string
	for _, l := range strings.Split(output, "\n") {
		if !reasonLine.MatchString(l) {
			continue
		}
		l = strings.TrimSpace(l)
		if len(l) > width {
			l = l[:width] + " [...]"
		}
		if len(out) == max {
			out = append(out, "[more lines in the failure's output above]")
			break
		}
		out = append(out, l)
	}
	return out
}
