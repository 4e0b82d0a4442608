package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/viovmm/vio/api"
	"github.com/viovmm/vio/lab/initramfs"
)

// The migration benchmark: one guest migrated once over TCP loopback,
// between two vio processes and between two QEMU processes, for each guest
// size and load, the two VMMs interleaved round after round.
const (
	// migDowntimeMs is vio's default downtime target (docs/migration.md,
	// downtime_ms), which QEMU gets as its downtime-limit.
	migDowntimeMs = 300
	// migQEMUBandwidth is QEMU's max-bandwidth in bytes/s. vio has no
	// bandwidth limit; QEMU's default caps a migration at 128 MiB/s.
	migQEMUBandwidth = 10_000_000_000
	// migIterCap is vio's pre-copy iteration cap. QEMU has none and
	// iterates for as long as the guest dirties memory faster than the
	// link moves it; once its dirty-sync-count reaches this, the benchmark
	// raises QEMU's downtime-limit to QEMU's maximum, which makes it stop
	// and copy the rest at its next check, as vio does at its cap.
	migIterCap = 20
	// migQEMUMaxDowntimeMs is QEMU's largest downtime-limit (2000 s).
	migQEMUMaxDowntimeMs = 2_000_000
	// migDirtyMiB is the area migguest rewrites in the dirtying guest:
	// fixed rather than a share of RAM, so the three sizes differ only in
	// RAM the guest does not touch, and the same load as e2e's
	// TestLiveMigration. A quarter of 2 GiB (512 MiB) would not converge
	// at the lab's copy rates (10 to 90 Mbit/s, docs/migration.md): every
	// run would end at vio's iteration cap after many minutes.
	migDirtyMiB = 100
	migCmdline  = "console=ttyS0 panic=-1 quiet"
	idleMarker  = "VIO-BENCH-IDLE"
	clockMarker = "VIO-BENCH-CLOCK"
)

// migCase is one guest: its RAM and what it does.
type migCase struct {
	mib  int
	load string // "idle" (a shell that sleeps) or "dirty" (migguest)
}

func (c migCase) String() string {
	if c.mib%1024 == 0 {
		return fmt.Sprintf("%d GiB %s", c.mib/1024, c.load)
	}
	return fmt.Sprintf("%d MiB %s", c.mib, c.load)
}

// migResult is one migration, as the VMMs and the guest saw it.
type migResult struct {
	total    time.Duration // the VMM's own figure (vio total_ms, QEMU total-time)
	downtime time.Duration // the source's pause to the destination's guest running
	// srcDowntime is the source's own account: QEMU's downtime (its stop
	// to the last byte sent; it does not wait for the destination), vio's
	// pause_ms + send_ms. resume is vio's resume_ms (0 for QEMU).
	srcDowntime, pause, send, resume time.Duration
	guestGap, baseGap                time.Duration // migguest's longest clock gap across the migration and undisturbed; -1 if not measured
	bytes                            uint64        // vio: the whole stream; QEMU: ram.transferred
	pausedBytes                      uint64        // sent while paused: vio the stop-and-copy's share of the stream; QEMU ram.downtime-bytes
	iterations                       int           // vio: iterations (the stop-and-copy included); QEMU: ram.dirty-sync-count
	note                             string        // why pre-copy stopped
	clock                            string        // the guest's clocksource
}

// benchMigrate runs every size and load on vio and QEMU, interleaved, and
// prints a table per size and load.
func benchMigrate(e *env, b *budget, rounds int, sizes []int, loads []string) error {
	migguest := os.Getenv("VIO_MIGGUEST")
	if migguest == "" {
		migguest = filepath.Join(e.work, "migguest")
		if err := buildStatic(migguest, "./e2e/testdata/migguest"); err != nil {
			return err
		}
	}
	initrds := map[string]string{}
	for _, load := range loads {
		var err error
		if initrds[load], err = migInitrd(e, migguest, load); err != nil {
			return err
		}
	}
	var cases []migCase
	for _, mib := range sizes {
		for _, load := range loads {
			cases = append(cases, migCase{mib, load})
		}
	}
	fmt.Printf("vio-bench migrate: one migration per guest over TCP loopback, 1 vCPU; dirty: migguest rewriting %d MiB; vio with its defaults (downtime_ms %d, no bandwidth limit), QEMU with downtime-limit %d ms and max-bandwidth %d GB/s (its default caps at 128 MiB/s)\n",
		migDirtyMiB, migDowntimeMs, migDowntimeMs, migQEMUBandwidth/1_000_000_000)
	type vmm struct {
		name string
		run  func(context.Context, *env, string, migCase, string) (migResult, error)
	}
	vmms := []vmm{{"vio", vioMigrateOnce}, {"qemu", qemuMigrateOnce}}
	results := map[migCase]map[string][]migResult{}
	failures := map[migCase]map[string][]string{}
	for _, c := range cases {
		results[c], failures[c] = map[string][]migResult{}, map[string][]string{}
	}
	var cut error
rounds:
	for r := 1; r <= rounds; r++ {
		for _, c := range cases {
			for _, v := range vmms {
				res, err := migrateRun(b, e, c, initrds[c.load], v.run)
				if errors.Is(err, errLabHazard) {
					// LAB.md: detect a lab hazard, say so, retry at most once.
					fmt.Printf("vio-bench: lab hazard in %s %s round %d (%v); running it once more\n", v.name, c, r, firstLine(err))
					res, err = migrateRun(b, e, c, initrds[c.load], v.run)
				}
				if errors.Is(err, errBudget) {
					cut = err
					break rounds
				}
				if err != nil {
					fmt.Printf("round %d %-12s %-4s FAILED: %v\n", r, c, v.name, err)
					failures[c][v.name] = append(failures[c][v.name], firstLine(err))
					continue
				}
				fmt.Printf("round %d %-12s %-4s %s\n", r, c, v.name, res.line())
				results[c][v.name] = append(results[c][v.name], res)
			}
		}
	}
	if cut != nil {
		fmt.Printf("\nvio-bench: cut short (%v); the medians below are over the runs that finished\n", cut)
	}
	for _, c := range cases {
		printMigrate(os.Stdout, c, results[c]["vio"], results[c]["qemu"], failures[c])
	}
	fmt.Println(migNotes)
	return cut
}

// migNotes says what the table's figures are.
const migNotes = `
total: the VMM's own figure (vio total_ms, QEMU total-time). downtime: from the source's pause
to the destination's guest running (vio downtime_ms; QEMU: the destination's RESUME event's
timestamp less the source's STOP event's, both QMP wall-clock stamps on this host). source's
downtime: vio pause_ms + send_ms, QEMU its query-migrate downtime (which ends at the source's
last byte, not waiting for the destination). guest gap: the longest gap in migguest's clock
loop across the migration (undisturbed: its longest gap before it), the guest's own view,
which bounds the downtime from above. bytes: vio everything on the stream (RAM, zero runs,
device state); QEMU ram.transferred (RAM with page headers, no device state). while paused:
vio the stream's bytes after the last pre-copy iteration (last pages and state), QEMU
ram.downtime-bytes (RAM only). iterations: vio's (the stop-and-copy included), QEMU's
ram.dirty-sync-count. QEMU runs marked 'forced' reached vio's cap of 20 iterations and were
made to stop and copy by raising their downtime-limit, as vio does at its cap.`

var errBudget = errors.New("the -timeout leaves too little for another guest run")

// migrateRun gives one VMM run its share of the budget and a directory.
func migrateRun(b *budget, e *env, c migCase, initrd string, run func(context.Context, *env, string, migCase, string) (migResult, error)) (migResult, error) {
	ctx, cancel, err := b.next()
	if err != nil {
		return migResult{}, err
	}
	defer cancel()
	dir, err := os.MkdirTemp(e.work, "mig-")
	if err != nil {
		return migResult{}, err
	}
	defer os.RemoveAll(dir)
	res, err := run(ctx, e, dir, c, initrd)
	if err != nil && ctx.Err() != nil && !errors.Is(err, errLabHazard) {
		err = fmt.Errorf("killed after its share of -timeout: %w", err)
	}
	return res, err
}

// line is one run's figures on one line.
func (r migResult) line() string {
	ms := func(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }
	gap := "-"
	if r.guestGap >= 0 {
		gap = ms(r.guestGap) + " ms (undisturbed " + ms(r.baseGap) + ")"
	}
	parts := "source's " + ms(r.srcDowntime)
	if r.pause+r.send+r.resume > 0 {
		parts += ": pause " + ms(r.pause) + ", send " + ms(r.send) + ", resume " + ms(r.resume)
	}
	return fmt.Sprintf("total %6.1f s  downtime %5s ms (%s)  guest gap %s  %.1f MB (%.2f MB paused)  %d iterations (%s)  clock %s",
		r.total.Seconds(), ms(r.downtime), parts, gap, float64(r.bytes)/1e6, float64(r.pausedBytes)/1e6, r.iterations, r.note, r.clock)
}

// printMigrate prints one size and load: each figure's median over the
// runs that finished, per VMM, and their ratio.
func printMigrate(w io.Writer, c migCase, vio, qemu []migResult, failed map[string][]string) {
	fmt.Fprintf(w, "\n%s: medians over %d vio and %d QEMU runs\n", c, len(vio), len(qemu))
	for _, name := range []string{"vio", "qemu"} {
		for _, f := range failed[name] {
			fmt.Fprintf(w, "  %s run failed: %s\n", name, f)
		}
	}
	if len(vio) == 0 && len(qemu) == 0 {
		return
	}
	ms := func(d time.Duration) float64 { return float64(d.Milliseconds()) }
	rows := []struct {
		name string
		f    func(migResult) float64
		fmt  string
	}{
		{"total time (s)", func(r migResult) float64 { return r.total.Seconds() }, "%10.1f"},
		{"downtime, pause to running (ms)", func(r migResult) float64 { return ms(r.downtime) }, "%10.0f"},
		{"downtime, source's account (ms)", func(r migResult) float64 { return ms(r.srcDowntime) }, "%10.0f"},
		{"  vio: pause / send / resume (ms)", nil, ""},
		{"guest's longest clock gap (ms)", func(r migResult) float64 { return ms(r.guestGap) }, "%10.0f"},
		{"  undisturbed (ms)", func(r migResult) float64 { return ms(r.baseGap) }, "%10.0f"},
		{"bytes sent (MB)", func(r migResult) float64 { return float64(r.bytes) / 1e6 }, "%10.1f"},
		{"  of which while paused (MB)", func(r migResult) float64 { return float64(r.pausedBytes) / 1e6 }, "%10.2f"},
		{"iterations", func(r migResult) float64 { return float64(r.iterations) }, "%10.0f"},
	}
	fmt.Fprintf(w, "  %-34s %10s %10s %9s\n", "", "vio", "qemu", "vio/qemu")
	for _, row := range rows {
		if row.f == nil {
			if len(vio) > 0 {
				fmt.Fprintf(w, "  %-34s %s / %s / %s\n", row.name,
					fmtMedian(vio, func(r migResult) float64 { return ms(r.pause) }, "%.0f"),
					fmtMedian(vio, func(r migResult) float64 { return ms(r.send) }, "%.0f"),
					fmtMedian(vio, func(r migResult) float64 { return ms(r.resume) }, "%.0f"))
			}
			continue
		}
		if c.load != "dirty" && (strings.Contains(row.name, "gap") || strings.Contains(row.name, "undisturbed")) {
			continue // the idle guest has no clock loop
		}
		a, b := fmtMedian(vio, row.f, row.fmt), fmtMedian(qemu, row.f, row.fmt)
		ratio := ""
		if len(vio) > 0 && len(qemu) > 0 {
			if q := medianOf(qemu, row.f); q != 0 {
				ratio = fmt.Sprintf("%9.2f", medianOf(vio, row.f)/q)
			}
		}
		fmt.Fprintln(w, strings.TrimRight(fmt.Sprintf("  %-34s %10s %10s %9s", row.name, a, b, ratio), " "))
	}
	var notes []string
	for _, rs := range [][]migResult{vio, qemu} {
		for _, r := range rs {
			if !slices.Contains(notes, r.note) {
				notes = append(notes, r.note)
			}
		}
	}
	fmt.Fprintf(w, "  pre-copy ended: %s\n", strings.Join(notes, ", "))
}

// medianOf is the median of f over rs (the upper middle one of an even
// count); 0 for none.
func medianOf(rs []migResult, f func(migResult) float64) float64 {
	if len(rs) == 0 {
		return 0
	}
	xs := make([]float64, len(rs))
	for i, r := range rs {
		xs[i] = f(r)
	}
	slices.Sort(xs)
	return xs[len(xs)/2]
}

func fmtMedian(rs []migResult, f func(migResult) float64, format string) string {
	if len(rs) == 0 {
		return "-"
	}
	return strings.TrimSpace(fmt.Sprintf(format, medianOf(rs, f)))
}

// buildStatic builds a Go program for the guest (static, no cgo).
func buildStatic(out, pkg string) error {
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("building %s (run vio-bench from the repository root): %w", pkg, err)
	}
	return nil
}

// migInitrd writes the guest of a load: a shell that sleeps, or migguest
// over migDirtyMiB. Both first name their clocksource: whether the guest's
// clock runs on through a pause depends on it and on the VMM.
func migInitrd(e *env, migguest, load string) (string, error) {
	b := initramfs.New()
	b.Busybox(e.assets.Busybox)
	script := "echo " + clockMarker + " $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)\n"
	if load == "dirty" {
		bin, err := os.ReadFile(migguest)
		if err != nil {
			return "", err
		}
		b.File("/migguest", bin, 0o755)
		script += "exec /migguest " + strconv.Itoa(migDirtyMiB) + "\n"
	} else {
		script += "echo " + idleMarker + "\nwhile :; do sleep 3600; done\n"
	}
	b.File("/guest.sh", []byte(script), 0o755)
	b.Init("/bin/sh", "/guest.sh")
	initrd := filepath.Join(e.work, "mig-"+load+".cpio.gz")
	return initrd, b.WriteFile(initrd)
}

// ---- the guest's console ----

// errLabHazard is a guest that reported a stalled CPU: a hazard of the
// nested lab (LAB.md), not of either VMM.
var errLabHazard = errors.New("the guest reported a stalled CPU (a lab hazard)")

// hazards are what a guest's kernel prints when the lab stalls one of its
// CPUs.
var hazards = []string{timerStall, "soft lockup", "self-detected stall", "rcu_preempt detected stalls", "rcu_sched detected stalls"}

// vmmProc is a VMM process whose stdout is the guest's console.
type vmmProc struct {
	name  string
	cmd   *exec.Cmd
	lines chan string // console lines (dropped if nobody reads 4096 of them)
	done  chan struct{}

	mu     sync.Mutex
	tail   []string // console and stderr, last lines
	hazard string   // the console line that showed a lab hazard
}

func startVMM(ctx context.Context, name string, argv []string) (*vmmProc, error) {
	p := &vmmProc{name: name, cmd: exec.CommandContext(ctx, argv[0], argv[1:]...), lines: make(chan string, 4096), done: make(chan struct{})}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	errOut, err := p.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		defer close(p.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			p.record(line)
			if hazardIn(line) != "" {
				p.mu.Lock()
				if p.hazard == "" {
					p.hazard = line
					p.cmd.Process.Kill() // it would only wait out its budget
				}
				p.mu.Unlock()
			}
			select {
			case p.lines <- line:
			default:
			}
		}
	}()
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(errOut)
		for sc.Scan() {
			p.record("stderr: " + sc.Text())
		}
	}()
	go func() { wg.Wait(); p.cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *vmmProc) record(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tail = append(p.tail, line); len(p.tail) > consoleTail {
		p.tail = p.tail[1:]
	}
}

func (p *vmmProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *vmmProc) stop() {
	p.cmd.Process.Kill()
	<-p.done
}

// fail is err with the process's last lines, as a lab hazard if its guest
// reported one.
func (p *vmmProc) fail(err error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	tail := p.tail[max(0, len(p.tail)-20):]
	msg := fmt.Sprintf("%s: %v\n  %s, last lines:\n    %s", p.name, err, p.name, strings.Join(tail, "\n    "))
	if p.hazard != "" {
		return fmt.Errorf("%w: %q; %s", errLabHazard, p.hazard, msg)
	}
	return errors.New(msg)
}

// hazardOf returns a lab hazard error if any of procs' guests reported one
// (a VMM killed for it makes the other side's request fail), else err.
func hazardOf(err error, procs ...*vmmProc) error {
	for _, p := range procs {
		p.mu.Lock()
		h := p.hazard
		p.mu.Unlock()
		if h != "" && !errors.Is(err, errLabHazard) {
			return fmt.Errorf("%w in %s: %q; %w", errLabHazard, p.name, h, err)
		}
	}
	return err
}

// next returns the next console line that match accepts.
func (p *vmmProc) next(ctx context.Context, what string, match func(string) bool) (string, error) {
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				return "", p.fail(fmt.Errorf("exited while waiting for %s", what))
			}
			if match(l) {
				return l, nil
			}
		case <-ctx.Done():
			return "", p.fail(fmt.Errorf("waiting for %s: %w", what, ctx.Err()))
		}
	}
}

// migReport is one of migguest's lines.
type migReport struct {
	pass, bad uint64
	gap       time.Duration
}

// parseMigReport reads "VIO-MIG pass=N bad=B gap_us=G" anywhere in line.
func parseMigReport(line string) (migReport, bool) {
	i := strings.Index(line, "VIO-MIG ")
	if i < 0 {
		return migReport{}, false
	}
	var r migReport
	var us int64
	if _, err := fmt.Sscanf(line[i:], "VIO-MIG pass=%d bad=%d gap_us=%d", &r.pass, &r.bad, &us); err != nil {
		return migReport{}, false
	}
	r.gap = time.Duration(us) * time.Microsecond
	return r, true
}

func isMigReport(l string) bool { _, ok := parseMigReport(l); return ok }

// guestReady waits until the guest on p runs its load: the idle shell's
// marker, or four migguest reports (the first holds the program's start;
// the longest gap of the next three is the undisturbed one). It returns
// the clocksource and that gap (-1 when idle).
func guestReady(ctx context.Context, p *vmmProc, load string) (clock string, baseGap time.Duration, err error) {
	l, err := p.next(ctx, "the guest's clocksource", func(l string) bool { return strings.Contains(l, clockMarker) })
	if err != nil {
		return "", 0, err
	}
	clock = strings.TrimSpace(l[strings.Index(l, clockMarker)+len(clockMarker):])
	if load != "dirty" {
		if _, err := p.next(ctx, "the idle guest's marker", func(l string) bool { return strings.Contains(l, idleMarker) }); err != nil {
			return "", 0, err
		}
		// Let the kernel's late boot work settle before the migration.
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
		}
		return clock, -1, ctx.Err()
	}
	for i := 0; i < 4; i++ {
		l, err := p.next(ctx, "migguest's reports", isMigReport)
		if err != nil {
			return "", 0, err
		}
		r, _ := parseMigReport(l)
		if r.bad != 0 {
			return "", 0, p.fail(fmt.Errorf("migguest found %d lost updates before any migration", r.bad))
		}
		if i > 0 {
			baseGap = max(baseGap, r.gap)
		}
	}
	return clock, baseGap, nil
}

// guestAfter reads the first migguest report at the destination: its gap
// spans the migration's pause. (Whether every update survived is
// e2e's TestLiveMigration's to check; a lost one seen here fails the run.)
func guestAfter(ctx context.Context, p *vmmProc) (time.Duration, error) {
	l, err := p.next(ctx, "migguest's first report at the destination", isMigReport)
	if err != nil {
		return 0, err
	}
	first, _ := parseMigReport(l)
	if first.bad != 0 {
		return 0, p.fail(fmt.Errorf("migguest found %d pages that lost an update in the migration", first.bad))
	}
	return first.gap, nil
}

// ---- vio ----

// vioEvent is one line of vio's event file.
type vioEvent struct {
	Event      string            `json:"event"`
	Properties map[string]string `json:"properties"`
}

func parseVioEvents(b []byte) []vioEvent {
	var evs []vioEvent
	for _, line := range strings.Split(string(b), "\n") {
		var e vioEvent
		if json.Unmarshal([]byte(line), &e) == nil && e.Event != "" {
			evs = append(evs, e)
		}
	}
	return evs
}

// lastVioEvent returns the properties of the last event called name.
func lastVioEvent(evs []vioEvent, name string) (map[string]string, bool) {
	for i := len(evs) - 1; i >= 0; i-- {
		if evs[i].Event == name {
			return evs[i].Properties, true
		}
	}
	return nil, false
}

// vioPausedBytes is what the last migration in evs sent in its
// stop-and-copy: its migrated event's bytes less those of the last
// pre-copy iteration's progress event.
func vioPausedBytes(evs []vioEvent) (uint64, bool) {
	var before uint64
	for _, e := range evs {
		switch e.Event {
		case "migrating":
			before = 0
		case "migration-progress":
			if e.Properties["final"] != "true" {
				before, _ = strconv.ParseUint(e.Properties["bytes"], 10, 64)
			}
		case "migrated":
			total, err := strconv.ParseUint(e.Properties["bytes"], 10, 64)
			if err != nil || total < before || before == 0 {
				return 0, false
			}
			return total - before, true
		}
	}
	return 0, false
}

// vioMigrated reads the source's migrated event.
func vioMigrated(m map[string]string) (migResult, error) {
	var r migResult
	var missing []string
	num := func(key string) int64 {
		v, err := strconv.ParseInt(m[key], 10, 64)
		if err != nil {
			missing = append(missing, key)
		}
		return v
	}
	dur := func(key string) time.Duration { return time.Duration(num(key)) * time.Millisecond }
	r.total, r.downtime = dur("total_ms"), dur("downtime_ms")
	r.pause, r.send, r.resume = dur("pause_ms"), dur("send_ms"), dur("resume_ms")
	r.srcDowntime = r.pause + r.send
	r.bytes = uint64(num("bytes"))
	r.iterations = int(num("iterations"))
	r.note = m["reason"]
	if len(missing) > 0 {
		return r, fmt.Errorf("the migrated event %v lacks %s", m, strings.Join(missing, ", "))
	}
	return r, nil
}

// vioServe is a `vio serve` with its API client and event file.
type vioServe struct {
	*vmmProc
	cl     *api.Client
	evFile string
}

func startVioServe(ctx context.Context, e *env, dir, name string) (*vioServe, error) {
	sock, ev := filepath.Join(dir, name+".sock"), filepath.Join(dir, name+"-events.json")
	p, err := startVMM(ctx, "vio "+name, []string{e.vio, "serve", "--api-socket", sock, "--event-monitor", "path=" + ev})
	if err != nil {
		return nil, err
	}
	v := &vioServe{vmmProc: p, cl: api.NewClient(sock), evFile: ev}
	for {
		if _, err := v.cl.Do(ctx, http.MethodGet, "vmm.ping", nil); err == nil {
			return v, nil
		}
		if p.exited() || ctx.Err() != nil {
			p.stop()
			return nil, p.fail(errors.New("never answered on its API socket"))
		}
		time.Sleep(20 * time.Millisecond) // polling a socket that is not there yet
	}
}

func (v *vioServe) put(ctx context.Context, endpoint, body string) error {
	var b []byte
	if body != "" {
		b = []byte(body)
	}
	if _, err := v.cl.Do(ctx, http.MethodPut, endpoint, b); err != nil {
		return v.fail(fmt.Errorf("%s: %w", endpoint, err))
	}
	return nil
}

// waitEvent polls v's event file until an event called name is there.
func (v *vioServe) waitEvent(ctx context.Context, name string, failed <-chan error) (map[string]string, error) {
	for {
		b, _ := os.ReadFile(v.evFile)
		if m, ok := lastVioEvent(parseVioEvents(b), name); ok {
			return m, nil
		}
		select {
		case err := <-failed:
			return nil, v.fail(fmt.Errorf("before its %s event: %w", name, err))
		case <-ctx.Done():
			return nil, v.fail(fmt.Errorf("no %s event: %w", name, ctx.Err()))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// vioMigrateOnce boots the guest in one vio serve and migrates it to
// another over TCP.
func vioMigrateOnce(ctx context.Context, e *env, dir string, c migCase, initrd string) (res migResult, err error) {
	src, err := startVioServe(ctx, e, dir, "src")
	if err != nil {
		return res, err
	}
	defer src.stop()
	dst, err := startVioServe(ctx, e, dir, "dst")
	if err != nil {
		return res, err
	}
	defer dst.stop()
	defer func() {
		if err != nil {
			err = hazardOf(err, src.vmmProc, dst.vmmProc)
		}
	}()
	cfg, _ := json.Marshal(map[string]any{
		"payload": map[string]string{"kernel": e.assets.Kernel, "initramfs": initrd, "cmdline": migCmdline},
		"cpus":    map[string]int{"boot_vcpus": 1, "max_vcpus": 1},
		"memory":  map[string]int64{"size": int64(c.mib) << 20},
		"serial":  map[string]string{"mode": "Tty"},
		"console": map[string]string{"mode": "Off"},
	})
	if err := src.put(ctx, "vm.create", string(cfg)); err != nil {
		return res, err
	}
	if err := src.put(ctx, "vm.boot", ""); err != nil {
		return res, err
	}
	clock, baseGap, err := guestReady(ctx, src.vmmProc, c.load)
	if err != nil {
		return res, err
	}
	received := make(chan error, 1)
	go func() {
		received <- dst.put(ctx, "vm.receive-migration", `{"receiver_url": "tcp:127.0.0.1:0"}`)
	}()
	// The receiver names its bound port in its receiving-migration event.
	recv, err := dst.waitEvent(ctx, "receiving-migration", received)
	if err != nil {
		return res, err
	}
	url, _ := json.Marshal(map[string]string{"destination_url": recv["receiver_url"]})
	if err := src.put(ctx, "vm.send-migration", string(url)); err != nil {
		return res, err
	}
	if err := <-received; err != nil {
		return res, err
	}
	m, err := src.waitEvent(ctx, "migrated", nil)
	if err != nil {
		return res, err
	}
	if res, err = vioMigrated(m); err != nil {
		return res, src.fail(err)
	}
	b, _ := os.ReadFile(src.evFile)
	res.pausedBytes, _ = vioPausedBytes(parseVioEvents(b))
	res.clock, res.baseGap, res.guestGap = clock, baseGap, -1
	if c.load == "dirty" {
		if res.guestGap, err = guestAfter(ctx, dst.vmmProc); err != nil {
			return res, err
		}
	}
	return res, nil
}

// ---- QEMU ----

// qmpClient is a QMP connection: commands one at a time, and the events
// that arrive meanwhile kept with QEMU's timestamps.
type qmpClient struct {
	conn   io.ReadWriteCloser
	dec    *json.Decoder
	events []qmpEvent
}

type qmpEvent struct {
	name string
	at   time.Time // QEMU's timestamp (host wall clock)
}

// qmpMessage is anything QEMU sends: the greeting, a command's return or
// error, or an event.
type qmpMessage struct {
	QMP    json.RawMessage `json:"QMP"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event     string `json:"event"`
	Timestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// newQMP reads QEMU's greeting on conn and leaves capabilities
// negotiation mode.
func newQMP(conn io.ReadWriteCloser) (*qmpClient, error) {
	q := &qmpClient{conn: conn, dec: json.NewDecoder(conn)}
	var hello qmpMessage
	if err := q.dec.Decode(&hello); err != nil {
		return nil, fmt.Errorf("QMP greeting: %w", err)
	}
	if hello.QMP == nil {
		return nil, errors.New("QMP: the first message is not a greeting")
	}
	if _, err := q.execute("qmp_capabilities", nil); err != nil {
		return nil, err
	}
	return q, nil
}

// dialQMP connects to QEMU's QMP socket once it is there.
func dialQMP(ctx context.Context, path string, p *vmmProc) (*qmpClient, error) {
	for {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			if dl, ok := ctx.Deadline(); ok {
				conn.SetDeadline(dl)
			}
			q, err := newQMP(conn)
			if err != nil {
				conn.Close()
				return nil, p.fail(err)
			}
			return q, nil
		}
		if p.exited() || ctx.Err() != nil {
			return nil, p.fail(fmt.Errorf("no QMP socket: %w", err))
		}
		time.Sleep(20 * time.Millisecond) // polling a socket that is not there yet
	}
}

// execute runs a command and returns its "return" value, keeping the
// events that came before it.
func (q *qmpClient) execute(cmd string, args any) (json.RawMessage, error) {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("QMP %s: %w", cmd, err)
	}
	for {
		var m qmpMessage
		if err := q.dec.Decode(&m); err != nil {
			return nil, fmt.Errorf("QMP %s: %w", cmd, err)
		}
		switch {
		case m.Event != "":
			q.events = append(q.events, qmpEvent{m.Event, time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000)})
		case m.Error != nil:
			return nil, fmt.Errorf("QMP %s: %s: %s", cmd, m.Error.Class, m.Error.Desc)
		case m.Return != nil:
			return m.Return, nil
		}
	}
}

// event returns the last event called name received so far.
func (q *qmpClient) event(name string) (qmpEvent, bool) {
	for i := len(q.events) - 1; i >= 0; i-- {
		if q.events[i].name == name {
			return q.events[i], true
		}
	}
	return qmpEvent{}, false
}

func (q *qmpClient) close() { q.conn.Close() }

// qemuMigration is the part of query-migrate's answer the benchmark reads.
type qemuMigration struct {
	Status    string `json:"status"`
	TotalTime int64  `json:"total-time"` // ms
	Downtime  int64  `json:"downtime"`   // ms
	ErrorDesc string `json:"error-desc"`
	RAM       struct {
		Transferred    uint64 `json:"transferred"`
		DowntimeBytes  uint64 `json:"downtime-bytes"`
		DirtySyncCount int    `json:"dirty-sync-count"`
	} `json:"ram"`
}

func parseQEMUMigration(b json.RawMessage) (qemuMigration, error) {
	var m qemuMigration
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("query-migrate: %w", err)
	}
	return m, nil
}

// qemuCompleted waits until the source of a completed migration is in
// "postmigrate" and reads query-migrate once more.
func qemuCompleted(ctx context.Context, sq *qmpClient) (qemuMigration, error) {
	for {
		b, err := sq.execute("query-status", nil)
		if err != nil {
			return qemuMigration{}, err
		}
		var st struct {
			Status string `json:"status"`
		}
		json.Unmarshal(b, &st)
		if st.Status == "postmigrate" {
			break
		}
		select {
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			return qemuMigration{}, fmt.Errorf("the source is %q, not postmigrate, after the migration completed: %w", st.Status, ctx.Err())
		}
	}
	b, err := sq.execute("query-migrate", nil)
	if err != nil {
		return qemuMigration{}, err
	}
	m, err := parseQEMUMigration(b)
	if err == nil && (m.Status != "completed" || m.TotalTime <= 0) {
		err = fmt.Errorf("query-migrate after the migration: status %q, total-time %d ms", m.Status, m.TotalTime)
	}
	return m, err
}

// qemuMigArgs is QEMU's command line for the benchmark's guest: the same
// kernel, initramfs, command line, RAM and vCPU as vio's.
func qemuMigArgs(e *env, mib int, initrd, qmp string) []string {
	return []string{e.qemu, "-enable-kvm", "-cpu", "host", "-m", strconv.Itoa(mib), "-smp", "1", "-nodefaults",
		"-display", "none", "-no-reboot", "-serial", "stdio", "-kernel", e.assets.Kernel, "-initrd", initrd,
		"-append", migCmdline, "-qmp", "unix:" + qmp + ",server=on,wait=off"}
}

// freePort returns a TCP port on loopback that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// qemuMigrateOnce boots the guest in one QEMU and migrates it to another
// (started with -incoming defer) over TCP.
func qemuMigrateOnce(ctx context.Context, e *env, dir string, c migCase, initrd string) (res migResult, err error) {
	srcQMP, dstQMP := filepath.Join(dir, "src.qmp"), filepath.Join(dir, "dst.qmp")
	src, err := startVMM(ctx, "qemu src", qemuMigArgs(e, c.mib, initrd, srcQMP))
	if err != nil {
		return res, err
	}
	defer src.stop()
	dst, err := startVMM(ctx, "qemu dst", append(qemuMigArgs(e, c.mib, initrd, dstQMP), "-incoming", "defer"))
	if err != nil {
		return res, err
	}
	defer dst.stop()
	defer func() {
		if err != nil {
			err = hazardOf(err, src, dst)
		}
	}()
	sq, err := dialQMP(ctx, srcQMP, src)
	if err != nil {
		return res, err
	}
	defer sq.close()
	dq, err := dialQMP(ctx, dstQMP, dst)
	if err != nil {
		return res, err
	}
	defer dq.close()
	clock, baseGap, err := guestReady(ctx, src, c.load)
	if err != nil {
		return res, err
	}
	if res, err = qemuMigrate(ctx, src, dst, sq, dq); err != nil {
		return res, err
	}
	res.clock, res.baseGap, res.guestGap = clock, baseGap, -1
	if c.load == "dirty" {
		if res.guestGap, err = guestAfter(ctx, dst); err != nil {
			return res, err
		}
	}
	return res, nil
}

// qemuMigrate migrates the VM of the QEMU src to the QEMU dst (started
// with -incoming defer), with vio's downtime target and no bandwidth
// limit to speak of, and reads the figures: query-migrate's, and the
// downtime from the source's STOP to the destination's RESUME.
func qemuMigrate(ctx context.Context, src, dst *vmmProc, sq, dq *qmpClient) (migResult, error) {
	var res migResult
	if _, err := sq.execute("migrate-set-parameters", map[string]any{"downtime-limit": migDowntimeMs, "max-bandwidth": migQEMUBandwidth}); err != nil {
		return res, src.fail(err)
	}
	var uri string
	for try := 0; ; try++ {
		port, err := freePort()
		if err != nil {
			return res, err
		}
		uri = "tcp:127.0.0.1:" + strconv.Itoa(port)
		if _, err = dq.execute("migrate-incoming", map[string]string{"uri": uri}); err == nil {
			break
		} else if try == 1 {
			return res, dst.fail(err)
		}
	}
	if _, err := sq.execute("migrate", map[string]string{"uri": uri}); err != nil {
		return res, src.fail(err)
	}
	forced := false
	var m qemuMigration
	for {
		b, err := sq.execute("query-migrate", nil)
		if err != nil {
			return res, src.fail(err)
		}
		if m, err = parseQEMUMigration(b); err != nil {
			return res, src.fail(err)
		}
		if m.Status == "completed" {
			// QEMU 7.2 says "completed" before it computes total-time
			// and downtime (both read 0 until then, seen in the lab);
			// it does that, under its big lock, just before the source
			// enters "postmigrate". Read them after that.
			if m, err = qemuCompleted(ctx, sq); err != nil {
				return res, src.fail(err)
			}
			break
		}
		if m.Status == "failed" || m.Status == "cancelled" {
			return res, src.fail(fmt.Errorf("migration %s: %s", m.Status, m.ErrorDesc))
		}
		if !forced && m.RAM.DirtySyncCount >= migIterCap {
			if _, err := sq.execute("migrate-set-parameters", map[string]any{"downtime-limit": migQEMUMaxDowntimeMs}); err != nil {
				return res, src.fail(err)
			}
			forced = true
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			return res, src.fail(fmt.Errorf("migration still %s after %d dirty syncs: %w", m.Status, m.RAM.DirtySyncCount, ctx.Err()))
		}
	}
	// The destination runs the guest once it has loaded the last state;
	// its RESUME event marks the end of the downtime.
	for {
		b, err := dq.execute("query-status", nil)
		if err != nil {
			return res, dst.fail(err)
		}
		var st struct {
			Status string `json:"status"`
		}
		json.Unmarshal(b, &st)
		if _, ok := dq.event("RESUME"); ok && st.Status == "running" {
			break
		}
		if st.Status != "inmigrate" && st.Status != "running" && st.Status != "finish-migrate" && st.Status != "paused" {
			return res, dst.fail(fmt.Errorf("the destination is %q after the migration", st.Status))
		}
		select {
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
			return res, dst.fail(fmt.Errorf("the destination never ran the guest (%s): %w", st.Status, ctx.Err()))
		}
	}
	stop, ok := sq.event("STOP")
	if !ok {
		return res, src.fail(errors.New("no STOP event from the source"))
	}
	resume, _ := dq.event("RESUME")
	res = migResult{
		total: time.Duration(m.TotalTime) * time.Millisecond, downtime: resume.at.Sub(stop.at),
		srcDowntime: time.Duration(m.Downtime) * time.Millisecond,
		bytes:       m.RAM.Transferred, pausedBytes: m.RAM.DowntimeBytes, iterations: m.RAM.DirtySyncCount, note: "converged",
	}
	if forced {
		res.note = "forced"
	}
	return res, nil
}
