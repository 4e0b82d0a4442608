package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// The guest scripts of the device scenarios report on the serial console
// in one shape: "CHECK name ok|fail [detail]" for each step, and tagged
// values ("TXSUM <sha256> <bytes>") the host compares with its own view.
// These helpers are the host's half of that shape.

// runSerial runs vio with args and its serial console to a file until the
// guest powers off, within timeout, and returns the console and what vio
// printed on stderr (the --stats JSON). A failing vio fails the test with
// both.
//
// As with runVMM, a run whose guest wrote nothing at all on its console
// before the deadline (a lab hazard seen in TestSRIOV: a 1-vCPU guest
// silent for 5 minutes that passes in 30 s otherwise) boots once more,
// and the test log says so; a hang of vio's making repeats and fails.
func runSerial(t *testing.T, timeout time.Duration, args ...string) (console, stderr []byte) {
	t.Helper()
	console, stderr, err, timedOut := runSerialOnce(t, timeout, args...)
	if timedOut && len(bytes.TrimSpace(console)) == 0 {
		t.Logf("lab hazard: the guest wrote nothing on its console in %v (%s); booting once more", timeout, vcpuStates(string(stderr)))
		console, stderr, err, _ = runSerialOnce(t, timeout, args...)
	}
	if err != nil {
		t.Fatalf("vio: %v\nstderr:\n%s\nserial:\n%s", err, stderr, console)
	}
	return console, stderr
}

// runSerialOnce is one run of runSerial.
func runSerialOnce(t *testing.T, timeout time.Duration, args ...string) (console, stderr []byte, err error, timedOut bool) {
	t.Helper()
	serial := filepath.Join(t.TempDir(), "serial.log")
	args = append(slices.Clip(args), "--serial", "file="+serial)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := quitOnDeadline(exec.CommandContext(ctx, args[0], args[1:]...))
	var errOut bytes.Buffer
	cmd.Stderr = &errOut
	start := time.Now()
	err = cmd.Run()
	t.Logf("vio ran for %v", time.Since(start).Round(time.Second))
	console, _ = os.ReadFile(serial)
	return console, errOut.Bytes(), err, errors.Is(ctx.Err(), context.DeadlineExceeded)
}

// guestReport is what a guest script reported.
type guestReport struct {
	console []byte
	checks  map[string]string   // CHECK name → ok or fail
	values  map[string][]string // tag → each value reported under it, in order
}

var (
	checkLine = regexp.MustCompile(`^CHECK (\S+) (ok|fail) ?(.*)$`)
	tagLine   = regexp.MustCompile(`^([A-Z][A-Z0-9]*) (.*)$`)
)

// readReport collects the report from a console log, logging each check
// and every line that starts with one of show.
func readReport(t *testing.T, console []byte, show ...string) guestReport {
	t.Helper()
	r := guestReport{console: console, checks: map[string]string{}, values: map[string][]string{}}
	sc := bufio.NewScanner(bytes.NewReader(console))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if m := checkLine.FindStringSubmatch(line); m != nil {
			r.checks[m[1]] = m[2]
			t.Logf("guest: %s %s %s", m[1], m[2], m[3])
			continue
		}
		if m := tagLine.FindStringSubmatch(line); m != nil {
			r.values[m[1]] = append(r.values[m[1]], m[2])
		}
		for _, s := range show {
			if strings.Contains(line, s) {
				t.Logf("guest: %s", line)
				break
			}
		}
	}
	return r
}

// expect fails the test for each named check the guest did not pass, and
// when the guest never reached the end of its script.
func (r guestReport) expect(t *testing.T, names ...string) {
	t.Helper()
	for _, name := range names {
		if r.checks[name] != "ok" {
			t.Errorf("guest check %s: %q", name, r.checks[name])
		}
	}
	if !bytes.Contains(r.console, []byte("VIO-GUEST-DONE")) {
		t.Errorf("guest did not finish; serial:\n%s", r.console)
	}
}

// value is the last value reported under tag ("" if none).
func (r guestReport) value(tag string) string {
	v := r.values[tag]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// hashSink accepts one TCP connection on addr and delivers the hex SHA-256
// of its first n bytes, or what went wrong, on the channel.
func hashSink(t *testing.T, addr string, n int64) <-chan string {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	sum := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			sum <- "accept: " + err.Error()
			return
		}
		defer c.Close()
		h := sha256.New()
		if got, err := io.CopyN(h, c, n); err != nil {
			sum <- fmt.Sprintf("after %d bytes: %v", got, err)
			return
		}
		sum <- hex.EncodeToString(h.Sum(nil))
	}()
	return sum
}

// expectSum compares what a hashSink got with what the guest said it sent.
func expectSum(t *testing.T, what string, sink <-chan string, guestSent string) {
	t.Helper()
	select {
	case s := <-sink:
		if s != guestSent {
			t.Errorf("%s: host hashed %s, guest sent %s", what, s, guestSent)
		}
	default:
		t.Errorf("%s: the host never got the guest's data", what)
	}
}

// randomSource serves n random bytes to the first TCP connection on addr
// and returns their "sha256 n", the form the guests report what they got.
func randomSource(t *testing.T, addr string, n int) string {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	payload := make([]byte, n)
	rand.Read(payload)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Write(payload)
		c.Close()
	}()
	sum := sha256.Sum256(payload)
	return fmt.Sprintf("%s %d", hex.EncodeToString(sum[:]), n)
}

// lastStats decodes the --stats report at the end of vio's stderr. vio
// prints one per guest life: a guest the lab reset (a triple fault at
// boot, LAB.md), which vio restarted as a PC does, leaves two, and the
// guest's work is in the last; the test log says so. Its top-level braces
// are the only ones at the start of a line (the JSON is indented).
func lastStats(t *testing.T, stderr []byte) map[string]json.RawMessage {
	t.Helper()
	i := bytes.LastIndex(stderr, []byte("\n{"))
	if i < 0 && bytes.HasPrefix(stderr, []byte("{")) {
		i = 0
	}
	if i < 0 {
		t.Fatalf("vio printed no --stats report; stderr:\n%s", stderr)
	}
	if n := bytes.Count(stderr, []byte("\n{")); n > 1 || n == 1 && bytes.HasPrefix(stderr, []byte("{")) {
		t.Logf("vio printed a --stats report per guest life (the guest restarted; a lab hazard when vio's log says triple fault): the last life's is used. stderr:\n%s", stderr)
	}
	var all map[string]json.RawMessage
	if err := json.NewDecoder(bytes.NewReader(stderr[i:])).Decode(&all); err != nil {
		t.Fatalf("vio's --stats report is not JSON: %v\n%s", err, stderr)
	}
	return all
}

// deviceCounters returns the counters of device dev from vio's --stats
// JSON, failing the test when they are missing.
func deviceCounters(t *testing.T, stats []byte, dev string) map[string]float64 {
	t.Helper()
	all := lastStats(t, stats)
	var d struct {
		Device map[string]float64 `json:"device"`
	}
	if err := json.Unmarshal(all[dev], &d); err != nil || d.Device == nil {
		t.Fatalf("--stats has no counters for %s: %v (%s)", dev, err, all[dev])
	}
	t.Logf("%s counters: %v", dev, d.Device)
	return d.Device
}
