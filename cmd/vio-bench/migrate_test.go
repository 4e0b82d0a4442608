package main

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// fakeQMP plays QEMU on the far end of a pipe: it sends the greeting,
// then answers each command with the next of replies (several lines each,
// events before the answer), and records the commands.
func fakeQMP(t *testing.T, replies ...string) (*qmpClient, <-chan map[string]any) {
	t.Helper()
	ours, theirs := net.Pipe()
	t.Cleanup(func() { ours.Close(); theirs.Close() })
	cmds := make(chan map[string]any, len(replies))
	go func() {
		defer close(cmds)
		theirs.Write([]byte(`{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18"}, "capabilities": ["oob"]}}` + "\r\n"))
		sc := bufio.NewScanner(theirs)
		for _, r := range replies {
			if !sc.Scan() {
				return
			}
			var cmd map[string]any
			if err := json.Unmarshal(sc.Bytes(), &cmd); err != nil {
				t.Errorf("not JSON: %q", sc.Text())
				return
			}
			cmds <- cmd
			theirs.Write([]byte(r + "\r\n"))
		}
	}()
	ours.SetDeadline(time.Now().Add(10 * time.Second))
	q, err := newQMP(ours)
	if err != nil {
		t.Fatal(err)
	}
	return q, cmds
}

func TestQMP(t *testing.T) {
	q, cmds := fakeQMP(t,
		`{"return": {}}`,
		`{"return": {}}`,
		`{"timestamp": {"seconds": 1765080000, "microseconds": 250000}, "event": "STOP"}`+"\r\n"+
			`{"return": {"status": "completed", "total-time": 12345, "downtime": 42, "setup-time": 3, "ram": {"transferred": 123456789, "downtime-bytes": 65536, "dirty-sync-count": 4, "total": 268574720, "duplicate": 60000, "normal": 30000, "mbps": 812.5}}}`,
		`{"error": {"class": "GenericError", "desc": "Failed to bind socket: Address already in use"}}`,
		`{"timestamp": {"seconds": 1765080000, "microseconds": 900000}, "event": "RESUME"}`+"\r\n"+`{"return": {"status": "running", "singlestep": false, "running": true}}`,
	)
	if c := <-cmds; c["execute"] != "qmp_capabilities" {
		t.Fatalf("first command %v, want qmp_capabilities", c)
	}
	if _, err := q.execute("migrate-set-parameters", map[string]any{"downtime-limit": migDowntimeMs, "max-bandwidth": migQEMUBandwidth}); err != nil {
		t.Fatal(err)
	}
	c := <-cmds
	args, _ := c["arguments"].(map[string]any)
	if c["execute"] != "migrate-set-parameters" || args["downtime-limit"] != 300.0 || args["max-bandwidth"] != 1e10 {
		t.Errorf("sent %v", c)
	}
	b, err := q.execute("query-migrate", nil)
	if err != nil {
		t.Fatal(err)
	}
	if c := <-cmds; c["execute"] != "query-migrate" || c["arguments"] != nil {
		t.Errorf("sent %v", c)
	}
	m, err := parseQEMUMigration(b)
	if err != nil {
		t.Fatal(err)
	}
	if m.Status != "completed" || m.TotalTime != 12345 || m.Downtime != 42 || m.RAM.Transferred != 123456789 || m.RAM.DirtySyncCount != 4 || m.RAM.DowntimeBytes != 65536 {
		t.Errorf("query-migrate read as %+v", m)
	}
	if _, err := q.execute("migrate-incoming", map[string]string{"uri": "tcp:127.0.0.1:1"}); err == nil || !strings.Contains(err.Error(), "Address already in use") {
		t.Errorf("an error reply gave %v", err)
	}
	<-cmds
	if _, err := q.execute("query-status", nil); err != nil {
		t.Fatal(err)
	}
	stop, ok1 := q.event("STOP")
	resume, ok2 := q.event("RESUME")
	if !ok1 || !ok2 || resume.at.Sub(stop.at) != 650*time.Millisecond {
		t.Errorf("events %+v: STOP %v RESUME %v", q.events, stop, resume)
	}
	if _, ok := q.event("SHUTDOWN"); ok {
		t.Error("an event that never came was found")
	}
}

func TestQMPNoGreeting(t *testing.T) {
	ours, theirs := net.Pipe()
	defer ours.Close()
	go func() { theirs.Write([]byte(`{"return": {}}` + "\n")); theirs.Close() }()
	if _, err := newQMP(ours); err == nil {
		t.Error("a stream without QMP's greeting was accepted")
	}
}

func TestParseQEMUMigrationActive(t *testing.T) {
	m, err := parseQEMUMigration(json.RawMessage(`{"expected-downtime": 300, "status": "active", "setup-time": 2, "total-time": 5000, "ram": {"total": 2164654080, "remaining": 1000, "transferred": 99, "dirty-sync-count": 21, "dirty-pages-rate": 12000}}`))
	if err != nil || m.Status != "active" || m.RAM.DirtySyncCount != 21 {
		t.Errorf("%+v, %v", m, err)
	}
	if _, err := parseQEMUMigration(json.RawMessage(`[1]`)); err == nil {
		t.Error("not an object, accepted")
	}
}

func TestVioMigrated(t *testing.T) {
	file := `{"timestamp":{"secs":1,"nanos":5},"source":"vm","event":"booted","properties":null}
{"timestamp":{"secs":9,"nanos":0},"source":"vm","event":"migrating","properties":{"destination_url":"tcp:127.0.0.1:40123"}}
{"timestamp":{"secs":12,"nanos":0},"source":"vm","event":"migration-progress","properties":{"iteration":"1","final":"false","bytes":"1000"}}
{"timestamp":{"secs":15,"nanos":0},"source":"vm","event":"migration-progress","properties":{"iteration":"2","final":"false","bytes":"20000000"}}
{"timestamp":{"secs":20,"nanos":0},"source":"vm","event":"migration-progress","properties":{"iteration":"3","final":"true","bytes":"20480000"}}
{"timestamp":{"secs":20,"nanos":0},"source":"vm","event":"migrated","properties":{"destination_url":"tcp:127.0.0.1:40123","iterations":"3","bytes":"20480000","data_pages":"5000","zero_pages":"60000","total_ms":"11000","downtime_ms":"310","reason":"converged","pause_ms":"12","send_ms":"250","resume_ms":"48"}}
not json
`
	evs := parseVioEvents([]byte(file))
	if len(evs) != 6 {
		t.Fatalf("%d events, want 6", len(evs))
	}
	if n, ok := vioPausedBytes(evs); !ok || n != 480000 {
		t.Errorf("paused bytes %d %v, want 480000", n, ok)
	}
	if _, ok := vioPausedBytes(evs[:4]); ok {
		t.Error("paused bytes without a migrated event")
	}
	if m, ok := lastVioEvent(evs, "migrating"); !ok || m["destination_url"] != "tcp:127.0.0.1:40123" {
		t.Errorf("migrating: %v", m)
	}
	m, ok := lastVioEvent(evs, "migrated")
	if !ok {
		t.Fatal("no migrated event")
	}
	r, err := vioMigrated(m)
	if err != nil {
		t.Fatal(err)
	}
	want := migResult{total: 11 * time.Second, downtime: 310 * time.Millisecond, srcDowntime: 262 * time.Millisecond,
		pause: 12 * time.Millisecond, send: 250 * time.Millisecond, resume: 48 * time.Millisecond,
		bytes: 20480000, iterations: 3, note: "converged"}
	if r != want {
		t.Errorf("read %+v\nwant %+v", r, want)
	}
	delete(m, "send_ms")
	if _, err := vioMigrated(m); err == nil || !strings.Contains(err.Error(), "send_ms") {
		t.Errorf("a migrated event without send_ms: %v", err)
	}
	if _, ok := lastVioEvent(evs, "migration-failed"); ok {
		t.Error("found an event that is not there")
	}
}

func TestParseMigReport(t *testing.T) {
	r, ok := parseMigReport("[   12.3] VIO-MIG pass=17 bad=0 gap_us=412345")
	if !ok || r.pass != 17 || r.bad != 0 || r.gap != 412345*time.Microsecond {
		t.Errorf("%+v %v", r, ok)
	}
	for _, l := range []string{"VIO-MIG-ERROR cannot allocate memory", "VIO-MIG pass=x", "hello"} {
		if _, ok := parseMigReport(l); ok {
			t.Errorf("%q read as a report", l)
		}
	}
}

func TestMedianOf(t *testing.T) {
	rs := []migResult{{iterations: 5}, {iterations: 2}, {iterations: 9}, {iterations: 3}}
	f := func(r migResult) float64 { return float64(r.iterations) }
	if got := medianOf(rs, f); got != 5 {
		t.Errorf("median %v, want 5 (the upper middle)", got)
	}
	if rs[0].iterations != 5 {
		t.Error("medianOf reordered the runs")
	}
	if medianOf(nil, f) != 0 || fmtMedian(nil, f, "%.0f") != "-" {
		t.Error("no runs")
	}
}

func TestMigCaseString(t *testing.T) {
	for c, want := range map[migCase]string{{256, "idle"}: "256 MiB idle", {2048, "dirty"}: "2 GiB dirty"} {
		if c.String() != want {
			t.Errorf("%q, want %q", c.String(), want)
		}
	}
}

// TestQEMUMigrate runs qemuMigrate against the real QEMU: a machine with
// no CPU and 64 MiB of RAM (no guest, no KVM, a second of work), to check
// the commands, arguments and replies the benchmark relies on.
func TestQEMUMigrate(t *testing.T) {
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 is not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	start := func(name string, extra ...string) (*vmmProc, *qmpClient) {
		sock := filepath.Join(dir, name+".qmp")
		argv := append([]string{qemu, "-machine", "none", "-m", "64", "-nodefaults", "-display", "none", "-serial", "none",
			"-qmp", "unix:" + sock + ",server=on,wait=off"}, extra...)
		p, err := startVMM(ctx, name, argv)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.stop)
		q, err := dialQMP(ctx, sock, p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(q.close)
		return p, q
	}
	src, sq := start("src")
	dst, dq := start("dst", "-incoming", "defer")
	res, err := qemuMigrate(ctx, src, dst, sq, dq)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	if res.iterations < 1 || res.bytes == 0 || res.downtime < 0 || res.total <= 0 || res.note != "converged" {
		t.Errorf("figures %+v", res)
	}
	b, err := dq.execute("query-status", nil)
	if err != nil || !strings.Contains(string(b), `"running"`) {
		t.Errorf("destination after the migration: %s %v", b, err)
	}
}

func TestPrintMigrate(t *testing.T) {
	vio := []migResult{
		{total: 10 * time.Second, downtime: 300 * time.Millisecond, srcDowntime: 250 * time.Millisecond, pause: 10 * time.Millisecond, send: 240 * time.Millisecond, resume: 50 * time.Millisecond, bytes: 20e6, iterations: 3, note: "converged", guestGap: 900 * time.Millisecond, baseGap: 400 * time.Millisecond},
		{total: 12 * time.Second, downtime: 200 * time.Millisecond, srcDowntime: 150 * time.Millisecond, bytes: 22e6, iterations: 4, note: "converged", guestGap: 700 * time.Millisecond, baseGap: 300 * time.Millisecond},
	}
	qemu := []migResult{{total: 20 * time.Second, downtime: 400 * time.Millisecond, srcDowntime: 380 * time.Millisecond, bytes: 40e6, iterations: 21, note: "forced", guestGap: 100 * time.Millisecond, baseGap: 300 * time.Millisecond}}
	var b strings.Builder
	printMigrate(&b, migCase{1024, "dirty"}, vio, qemu, map[string][]string{"qemu": {"killed after its share of -timeout"}})
	out := b.String()
	t.Log("\n" + out)
	for _, want := range []string{
		"1 GiB dirty: medians over 2 vio and 1 QEMU runs",
		"qemu run failed: killed after its share of -timeout",
		"total time (s)                           12.0       20.0      0.60",
		"downtime, pause to running (ms)           300        400      0.75",
		"guest's longest clock gap (ms)            900        100      9.00",
		"iterations                                  4         21      0.19",
		"pre-copy ended: converged, forced",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in the table", want)
		}
	}
	b.Reset()
	printMigrate(&b, migCase{256, "idle"}, vio, nil, nil)
	if out := b.String(); strings.Contains(out, "gap") || strings.Contains(out, "undisturbed") || !regexp.MustCompile(`\n  bytes sent \(MB\) +22\.0 +-\n`).MatchString(out) {
		t.Errorf("the idle table:\n%s", out)
	}
}

// TestQEMUCompleted: QEMU 7.2 answers "completed" with total-time 0 for a
// moment; the figures are read once the source is in postmigrate.
func TestQEMUCompleted(t *testing.T) {
	q, _ := fakeQMP(t,
		`{"return": {}}`,
		`{"return": {"status": "finish-migrate", "running": false}}`,
		`{"return": {"status": "postmigrate", "running": false}}`,
		`{"return": {"status": "completed", "total-time": 2210, "downtime": 23, "ram": {"transferred": 98500000, "dirty-sync-count": 3}}}`,
	)
	m, err := qemuCompleted(context.Background(), q)
	if err != nil || m.TotalTime != 2210 || m.Downtime != 23 {
		t.Errorf("%+v, %v", m, err)
	}
	q, _ = fakeQMP(t,
		`{"return": {}}`,
		`{"return": {"status": "postmigrate", "running": false}}`,
		`{"return": {"status": "completed", "total-time": 0, "downtime": 0, "ram": {"transferred": 98500000, "dirty-sync-count": 3}}}`,
	)
	if _, err := qemuCompleted(context.Background(), q); err == nil {
		t.Error("total-time 0 accepted")
	}
}
