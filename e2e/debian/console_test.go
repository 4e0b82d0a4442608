package debian

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// console collects a guest's serial output line by line as it arrives,
// with each line's arrival time, and lets a test wait for a line.
type console struct {
	mu     sync.Mutex
	lines  []string
	at     []time.Time
	eof    bool
	notify chan struct{} // signalled on every new line and at EOF
	start  time.Time     // when reading began, for a console with no line yet
}

func newConsole(r io.Reader) *console {
	c := &console{notify: make(chan struct{}, 1), start: time.Now()}
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			c.mu.Lock()
			c.lines = append(c.lines, strings.TrimRight(sc.Text(), "\r"))
			c.at = append(c.at, time.Now())
			c.mu.Unlock()
			c.signal()
		}
		// Drain whatever follows a line too long to scan, so the
		// writer never blocks.
		io.Copy(io.Discard, r)
		c.mu.Lock()
		c.eof = true
		c.mu.Unlock()
		c.signal()
	}()
	return c
}

func (c *console) signal() {
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// waitFor waits until a line at index from or later contains want, for at
// most d, and returns its index and arrival time. The output ending or the
// deadline passing is an error naming what was awaited.
func (c *console) waitFor(want string, from int, d time.Duration) (int, time.Time, error) {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		for i := from; i < len(c.lines); i++ {
			if strings.Contains(c.lines[i], want) {
				at := c.at[i]
				c.mu.Unlock()
				return i, at, nil
			}
		}
		from = max(from, len(c.lines))
		eof := c.eof
		c.mu.Unlock()
		if eof {
			return 0, time.Time{}, fmt.Errorf("the console ended before a line with %q", want)
		}
		select {
		case <-c.notify:
		case <-deadline.C:
			return 0, time.Time{}, fmt.Errorf("no console line with %q within %v", want, d)
		}
	}
}

// errSilent is waitForLive's error for a console that stopped.
var errSilent = errors.New("the console printed nothing")

// waitForLive is waitFor, except that it gives up early, with an error
// wrapping errSilent, once no line at all has come for silence: a guest
// that stopped printing mid-boot is reported (and its VMM asked where it
// is) without waiting out the whole deadline.
func (c *console) waitForLive(want string, from int, d, silence time.Duration) (int, time.Time, error) {
	end := time.Now().Add(d)
	for {
		last := c.lastLine()
		quiet := time.Until(last.Add(silence))
		if left := time.Until(end); left < quiet {
			i, at, err := c.waitFor(want, from, left)
			return i, at, err
		}
		i, at, err := c.waitFor(want, from, quiet)
		if err == nil || c.ended() {
			return i, at, err
		}
		if c.lastLine().Equal(last) && time.Since(last) >= silence {
			return 0, time.Time{}, fmt.Errorf("%w for %v before a line with %q; its last line: %q", errSilent, silence, want, c.tail(1))
		}
	}
}

// lastLine is when the newest line came (when reading began, before any).
func (c *console) lastLine() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := len(c.at); n > 0 {
		return c.at[n-1]
	}
	return c.start
}

// ended reports whether the output has ended.
func (c *console) ended() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.eof
}

// prefixed returns the text after "prefix " of every line that carries it
// (anywhere in the line: the serial console interleaves other writers').
func (c *console) prefixed(prefix string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, l := range c.lines {
		if i := strings.Index(l, prefix+" "); i >= 0 {
			out = append(out, l[i+len(prefix)+1:])
		} else if strings.HasSuffix(l, prefix) {
			out = append(out, "")
		}
	}
	return out
}

// contains reports whether any line contains s.
func (c *console) contains(s string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range c.lines {
		if strings.Contains(l, s) {
			return true
		}
	}
	return false
}

// tail is the last n lines.
func (c *console) tail(n int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.lines[max(0, len(c.lines)-n):], "\n")
}
