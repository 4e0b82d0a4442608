package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/viovmm/vio/qos/mclock"
	"github.com/viovmm/vio/qos/qosctl"
	"github.com/viovmm/vio/vhostuser/vudriver"
)

// vio-bench qos: issue 17's QoS scenario at its own scale, on the host
// (no guest, so no lab): the real `vio serve-disk` on a raw file made a
// slow device by a throttle, one socket a VM with the settings,
// and three front-ends (package vudriver), one a socket, each keeping
// reads in flight as fast as it is let. Each phase's rates, counted from
// the front-ends' completions and cross-checked against the daemon's
// --control statistics, are set against what mclock.Allocate says the
// settings give; a rate more than qosTolerance off fails the run.

// The device and the load, chosen so that the scheduler has something to
// share and every setting shows:
//
//   - The throttle: 1500 IOPS. Under ShareSpare (serve-disk's rule) C's
//     quarter of what A's reservation leaves, (1500−300)/4 = 300, is
//     above its limit of 200, so the limit binds (at 1000 IOPS C would
//     get 175 and its limit would never show); A gets its 300 and a
//     third of the rest, well above the 433 its weight alone would give.
//     The bucket holds 50 ms of requests: the throttle's timer firing
//     late on a loaded host (up to 50 ms) costs no capacity, and a
//     burst of 75 requests is nothing the scheduler cannot order.
//   - --qos-depth 4: the scheduler can only order requests it holds.
//     Each front-end's device runs at most 8 requests at once (virtio-
//     blk's workers a queue), so with 4 on the disk at least 20 wait in
//     the scheduler and every client always has one queued; 4 rather
//     than 1 keeps the throttle busy while the dispatcher's goroutine
//     waits for a CPU on a loaded host.
//   - 16 reads of 4 KiB in flight a front-end: more than the device's 8
//     workers, so that a worker that finishes finds the next request in
//     the ring at once and the scheduler never sees a busy client idle
//     for a front-end's round trip.
const (
	qosThrottleOps = 1500
	qosBucketMs    = 50
	qosDepth       = 4
	qosFrontDepth  = 16
	qosReadSize    = 4096
	qosTolerance   = 0.10
)

// Phase durations. A window starts after a settling time, so that a
// change (a client stopping, a limit raised) has taken effect; the
// return window is short because a burst of banked credit would show at
// once and end soon.
const (
	qosWarmup     = time.Second
	qosSettle     = 500 * time.Millisecond
	qosWindow     = 5 * time.Second
	qosIdleWindow = 3 * time.Second
	qosReturn     = 150 * time.Millisecond
)

// qosClient is one VM: a socket of serve-disk with its settings.
type qosClient struct {
	name   string
	params mclock.Params
}

// qosClients are the three VMs.
var qosClients = []qosClient{
	{"a", mclock.Params{Reservation: 300, Weight: 1}},
	{"b", mclock.Params{Weight: 2}},
	{"c", mclock.Params{Weight: 1, Limit: 200}},
}

// qosRaisedLimit is C's limit after the run-time change of the last
// phase.
const qosRaisedLimit = 400

// settings writes p as serve-disk's socket keys.
func settings(p mclock.Params) string {
	var kv []string
	if p.Reservation > 0 {
		kv = append(kv, fmt.Sprintf("r=%g", p.Reservation))
	}
	kv = append(kv, fmt.Sprintf("w=%g", p.Weight))
	if p.Limit > 0 {
		kv = append(kv, fmt.Sprintf("l=%g", p.Limit))
	}
	return strings.Join(kv, ",")
}

// qosRow is one client's line in a phase: the rate measured from its
// completions, the rate the daemon's statistics give (NaN: not asked)
// and the rate its settings give.
type qosRow struct {
	client, settings  string
	got, daemon, want float64
	// atMost: the property is got ≤ want within the tolerance (no burst
	// after idling), not got = want within it.
	atMost bool
}

// dev is how far got is from want, as a fraction of want.
func (r qosRow) dev() float64 { return r.got/r.want - 1 }

// verdict says whether the row holds its property and, when not, why.
// Completions and the daemon's count must also agree: if they do not,
// the measurement, not the scheduler, is off.
func (r qosRow) verdict() (bool, string) {
	switch d := r.dev(); {
	case math.IsNaN(d) || math.IsInf(d, 0):
		return false, "no expected rate"
	case d > qosTolerance && r.atMost:
		return false, "a burst above its share"
	case d > qosTolerance:
		return false, "above its share"
	case d < -qosTolerance && !r.atMost:
		return false, "below its share"
	}
	if !math.IsNaN(r.daemon) && math.Abs(r.daemon/r.got-1) > qosTolerance {
		return false, "completions and the daemon's count disagree"
	}
	return true, ""
}

// qosPhase is one phase's rows.
type qosPhase struct {
	name string
	rows []qosRow
}

// expectRows turns the rates measured for the busy clients of a phase
// into rows whose expectation is mclock.Allocate's split of the
// capacity they achieved together. daemon may be nil.
func expectRows(clients []qosClient, got, daemon []float64) []qosRow {
	var total float64
	loads := make([]mclock.Load, len(clients))
	for i, c := range clients {
		total += got[i]
		loads[i] = mclock.Load{Params: c.params}
	}
	want := mclock.Allocate(total, mclock.ShareSpare, loads)
	rows := make([]qosRow, len(clients))
	for i, c := range clients {
		rows[i] = qosRow{client: c.name, settings: settings(c.params), got: got[i], daemon: math.NaN(), want: want[i]}
		if daemon != nil {
			rows[i].daemon = daemon[i]
		}
	}
	return rows
}

// medianPhases is, cell by cell, the median of the rounds' phases (which
// all have the same phases and rows).
func medianPhases(rounds [][]qosPhase) []qosPhase {
	out := make([]qosPhase, len(rounds[0]))
	for p := range out {
		out[p].name = rounds[0][p].name
		for r := range rounds[0][p].rows {
			row := rounds[0][p].rows[r]
			var got, daemon, want []float64
			for _, rd := range rounds {
				x := rd[p].rows[r]
				got, daemon, want = append(got, x.got), append(daemon, x.daemon), append(want, x.want)
			}
			row.got, row.daemon, row.want = medianFloat(got), medianFloat(daemon), medianFloat(want)
			out[p].rows = append(out[p].rows, row)
		}
	}
	return out
}

// medianFloat is the middle value (the upper one of an even count); NaN
// if any value is NaN (a cell not measured).
func medianFloat(xs []float64) float64 {
	if len(xs) == 0 || slices.ContainsFunc(xs, math.IsNaN) {
		return math.NaN()
	}
	xs = slices.Clone(xs)
	slices.Sort(xs)
	return xs[len(xs)/2]
}

// formatQoS prints the phases as a table and returns it with the rows
// that fail.
func formatQoS(phases []qosPhase) (string, []string) {
	var b strings.Builder
	var failed []string
	fmt.Fprintf(&b, "%-14s %-6s %-10s %8s %8s %10s %8s  %s\n", "phase", "client", "settings", "IOPS", "daemon", "expected", "dev", "verdict")
	for _, p := range phases {
		for i, r := range p.rows {
			label := p.name
			if i > 0 {
				label = ""
			}
			daemon := "-"
			if !math.IsNaN(r.daemon) {
				daemon = fmt.Sprintf("%.1f", r.daemon)
			}
			want := fmt.Sprintf("%.1f", r.want)
			if r.atMost {
				want = "≤" + want
			}
			verdict := "PASS"
			if ok, why := r.verdict(); !ok {
				verdict = "FAIL: " + why
				failed = append(failed, fmt.Sprintf("%s: %s got %.1f IOPS, expected %s (%s)", p.name, r.client, r.got, want, why))
			}
			fmt.Fprintf(&b, "%-14s %-6s %-10s %8.1f %8s %10s %+7.1f%%  %s\n", label, r.client, r.settings, r.got, daemon, want, 100*r.dev(), verdict)
		}
	}
	// The capacity the expectations split: the device's, when every
	// client of the phase was busy all along.
	var caps []string
	for _, p := range phases {
		if len(p.rows) > 1 {
			var total float64
			for _, r := range p.rows {
				total += r.got
			}
			caps = append(caps, fmt.Sprintf("%s %.1f", p.name, total))
		}
	}
	if len(caps) > 0 {
		fmt.Fprintf(&b, "IOPS together: %s\n", strings.Join(caps, ", "))
	}
	return b.String(), failed
}

// benchQoS runs the rounds, each on a daemon and front-ends of its own,
// prints each round's phases and the medians, and fails if a property
// fails in the medians.
func benchQoS(b *budget, rounds int) error {
	work, err := os.MkdirTemp("", "vio-bench-qos-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	vio := os.Getenv("VIO_BIN")
	if vio == "" {
		vio = filepath.Join(work, "vio")
		if err := goBuild(vio, "./cmd/vio"); err != nil {
			return err
		}
	}
	// A sparse file: reads of holes cost the file system nothing, so
	// the throttle alone sets the device's pace.
	disk := filepath.Join(work, "qos.raw")
	if err := os.WriteFile(disk, nil, 0o600); err != nil {
		return err
	}
	if err := os.Truncate(disk, 64<<20); err != nil {
		return err
	}
	var all [][]qosPhase
	var cut error
	for r := range rounds {
		phases, err := qosRound(b, vio, work, disk)
		if err != nil {
			cut = fmt.Errorf("round %d: %w", r+1, err)
			break
		}
		table, _ := formatQoS(phases)
		fmt.Printf("round %d:\n%s", r+1, table)
		all = append(all, phases)
	}
	if len(all) == 0 {
		return cut
	}
	if cut != nil {
		fmt.Printf("\nvio-bench: cut short: %v; the medians below are over the %d rounds that finished\n", cut, len(all))
	}
	fmt.Printf("\nmedians over %d rounds: vio serve-disk on a raw file throttled to %d IOPS (bucket %d ms), --qos-depth %d;\n"+
		"%d front-ends (vudriver), %d reads of %d KiB in flight each; IOPS from completions, daemon from --control stats;\n"+
		"expected: mclock.Allocate (ShareSpare) of the IOPS the busy clients got together; tolerance ±%.0f%%\n",
		len(all), qosThrottleOps, qosBucketMs, qosDepth, len(qosClients), qosFrontDepth, qosReadSize/1024, 100*qosTolerance)
	table, failed := formatQoS(medianPhases(all))
	fmt.Print(table)
	if len(failed) > 0 {
		return fmt.Errorf("QoS properties failed in the medians:\n  %s", strings.Join(failed, "\n  "))
	}
	return cut
}

// qosRound starts serve-disk, connects the front-ends and runs the
// phases: all busy; A idle (B and C take its capacity); A back (no
// burst); C's limit raised over --control.
func qosRound(b *budget, vio, work, disk string) (phases []qosPhase, err error) {
	ctx, cancel, err := b.next()
	if err != nil {
		return nil, err
	}
	defer cancel()
	control := filepath.Join(work, "control.sock")
	args := []string{"serve-disk", "--disk", fmt.Sprintf("path=%s,format=raw,ops_size=%d,ops_refill_time=%d", disk, qosThrottleOps*qosBucketMs/1000, qosBucketMs),
		"--qos-depth", fmt.Sprint(qosDepth), "--control", control}
	socks := []string{control}
	for _, c := range qosClients {
		s := filepath.Join(work, c.name+".sock")
		args = append(args, "--socket", s+",name="+c.name+","+settings(c.params))
		socks = append(socks, s)
	}
	stop, err := startServeDisk(vio, args, socks...)
	if err != nil {
		return nil, err
	}
	defer func() {
		if serr := stop(); err == nil {
			err = serr
		}
	}()
	var fes []*frontEnd
	defer func() {
		for _, fe := range fes {
			if herr := fe.halt(); err == nil && herr != nil {
				err = fmt.Errorf("front-end %s: %w", fe.name, herr)
			}
			fe.d.Close()
		}
	}()
	for i, c := range qosClients {
		d, err := vudriver.Dial(socks[i+1], vudriver.Config{Depth: qosFrontDepth, Size: qosReadSize})
		if err != nil {
			return nil, err
		}
		fe := &frontEnd{name: c.name, d: d}
		fes = append(fes, fe)
		fe.start(ctx)
	}
	measure := func(which []*frontEnd, window time.Duration, daemonToo bool) ([]float64, []float64, error) {
		got, daemon, err := rates(ctx, which, control, window, daemonToo)
		if err == nil {
			err = runErrs(fes)
		}
		return got, daemon, err
	}
	sleep(ctx, qosWarmup)

	// 1: all three busy.
	got, daemon, err := measure(fes, qosWindow, true)
	if err != nil {
		return nil, err
	}
	busy := expectRows(qosClients, got, daemon)
	phases = append(phases, qosPhase{"all busy", busy})

	// 2: A idle; B and C share the device.
	if err := fes[0].halt(); err != nil {
		return nil, fmt.Errorf("front-end a: %w", err)
	}
	sleep(ctx, qosSettle)
	got, daemon, err = measure(fes[1:], qosIdleWindow, true)
	if err != nil {
		return nil, err
	}
	phases = append(phases, qosPhase{"a idle", expectRows(qosClients[1:], got, daemon)})

	// A comes back after the idle time: over its first moments it gets
	// its share as in phase 1, no more.
	fes[0].start(ctx)
	got, _, err = measure(fes[:1], qosReturn, false)
	if err != nil {
		return nil, err
	}
	back := busy[0]
	back.got, back.daemon, back.atMost = got[0], math.NaN(), true
	phases = append(phases, qosPhase{fmt.Sprintf("a back %dms", qosReturn.Milliseconds()), []qosRow{back}})

	// 3: C's limit raised at run time.
	raised := slices.Clone(qosClients)
	raised[2].params.Limit = qosRaisedLimit
	limit := float64(qosRaisedLimit)
	if _, err := controlRequest(control, qosctl.Request{Op: "set", Client: "c", Limit: &limit}); err != nil {
		return nil, err
	}
	sleep(ctx, qosSettle)
	got, daemon, err = measure(fes, qosWindow, true)
	if err != nil {
		return nil, err
	}
	phases = append(phases, qosPhase{fmt.Sprintf("c l=%d", qosRaisedLimit), expectRows(raised, got, daemon)})
	return phases, ctx.Err()
}

// sleep waits d, or less if ctx ends (the caller then finds ctx.Err).
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// frontEnd is one VM's front-end, running (reading) or idle.
type frontEnd struct {
	name string
	d    *vudriver.Driver
	stop context.CancelFunc
	done chan error // the current run's result; nil when idle
}

func (fe *frontEnd) start(ctx context.Context) {
	ctx, fe.stop = context.WithCancel(ctx)
	fe.done = make(chan error, 1)
	go func() { fe.done <- fe.d.Run(ctx, 0) }()
}

// halt stops the run, if any, and returns once its reads have completed.
func (fe *frontEnd) halt() error {
	if fe.done == nil {
		return nil
	}
	fe.stop()
	err := <-fe.done
	fe.done = nil
	return err
}

// runErrs returns the error of a run that ended on its own (a failed
// read), which would make its rate meaningless.
func runErrs(fes []*frontEnd) error {
	for _, fe := range fes {
		if fe.done == nil {
			continue
		}
		select {
		case err := <-fe.done:
			fe.done = nil
			return fmt.Errorf("front-end %s stopped: %v", fe.name, err)
		default:
		}
	}
	return nil
}

// rates counts each front-end's completions over window, and with
// daemonToo the requests the daemon's scheduler served each over the
// same window, in IOPS.
func rates(ctx context.Context, fes []*frontEnd, control string, window time.Duration, daemonToo bool) (got, daemon []float64, err error) {
	var before map[string]uint64
	if daemonToo {
		if before, err = daemonRequests(control); err != nil {
			return nil, nil, err
		}
	}
	counts := make([]uint64, len(fes))
	for i, fe := range fes {
		counts[i] = fe.d.Completed()
	}
	start := time.Now()
	sleep(ctx, window) // the measurement window itself
	got = make([]float64, len(fes))
	el := time.Since(start).Seconds()
	for i, fe := range fes {
		got[i] = float64(fe.d.Completed()-counts[i]) / el
	}
	if !daemonToo {
		return got, nil, ctx.Err()
	}
	after, err := daemonRequests(control)
	if err != nil {
		return nil, nil, err
	}
	el = time.Since(start).Seconds()
	daemon = make([]float64, len(fes))
	for i, fe := range fes {
		daemon[i] = float64(after[fe.name]-before[fe.name]) / el
	}
	return got, daemon, ctx.Err()
}

// daemonRequests returns the requests the daemon's scheduler has served
// each client, by name.
func daemonRequests(control string) (map[string]uint64, error) {
	r, err := controlRequest(control, qosctl.Request{Op: "stats"})
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	for _, c := range r.Clients {
		out[c.Name] = c.Requests
	}
	return out, nil
}

// controlRequest sends one request line to serve-disk's --control socket
// and returns its reply.
func controlRequest(path string, req qosctl.Request) (qosctl.Reply, error) {
	var reply qosctl.Reply
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return reply, fmt.Errorf("serve-disk --control: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := json.Marshal(req)
	if err != nil {
		return reply, err
	}
	if _, err := c.Write(append(line, '\n')); err != nil {
		return reply, fmt.Errorf("serve-disk --control: %w", err)
	}
	resp, err := bufio.NewReader(c).ReadBytes('\n')
	if err != nil {
		return reply, fmt.Errorf("serve-disk --control: reading the reply to %s: %w", line, err)
	}
	if err := json.Unmarshal(resp, &reply); err != nil {
		return reply, fmt.Errorf("serve-disk --control: reply %q: %w", resp, err)
	}
	if reply.Error != "" {
		return reply, fmt.Errorf("serve-disk --control refused %s: %s", line, reply.Error)
	}
	return reply, nil
}
