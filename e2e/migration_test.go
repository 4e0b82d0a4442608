package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/lab/initramfs"
	"github.com/viovmm/vio/lab/labtest"
)

// migGuest is the guest half of TestLiveMigration (testdata/migguest),
// built static on the host by TestMain.
var migGuest = os.Getenv("VIO_MIGGUEST")

// buildMigGuest builds testdata/migguest into dir and passes its path on
// to the lab run.
func buildMigGuest(dir string) error {
	out := filepath.Join(dir, "migguest")
	if err := labtest.Build(out, "./testdata/migguest"); err != nil {
		return err
	}
	migGuest = out
	return os.Setenv("VIO_MIGGUEST", out)
}

// migGuestInitrd writes an initramfs whose init runs migguest over mib
// MiB, and returns its path.
func migGuestInitrd(t *testing.T, dir string, mib int) string {
	t.Helper()
	bin, err := os.ReadFile(migGuest)
	if err != nil {
		t.Fatal(err)
	}
	b := initramfs.New()
	b.Busybox(labtest.Assets(t).Busybox)
	b.File("/migguest", bin, 0o755)
	b.File("/guest.sh", []byte(fmt.Sprintf("echo VIO-GUEST-UP\nexec /migguest %d\n", mib)), 0o755)
	b.Init("/bin/sh", "/guest.sh")
	initrd := filepath.Join(dir, "initramfs.cpio.gz")
	if err := b.WriteFile(initrd); err != nil {
		t.Fatal(err)
	}
	return initrd
}

// migLine is one report of the guest program.
type migLine struct {
	pass, bad uint64
	gap       time.Duration // the longest gap in the guest's clock loop since the last line
	hostT     time.Time
}

// migProc is a vio process whose console carries migguest's reports.
type migProc struct {
	cmd   *exec.Cmd
	lines chan migLine
}

func startMigVio(t *testing.T, ctx context.Context, name string, args ...string) *migProc {
	t.Helper()
	p := &migProc{cmd: exec.CommandContext(ctx, vioBin, args...), lines: make(chan migLine, 10000)}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stderr = os.Stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.cmd.Process.Kill(); p.cmd.Wait() })
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			if strings.Contains(line, "VIO-MIG-ERROR") || strings.Contains(line, "Kernel panic") {
				fmt.Fprintf(os.Stderr, "%s console: %s\n", name, line)
			}
			var l migLine
			var gapUS int64
			i := strings.Index(line, "VIO-MIG ")
			if i < 0 {
				continue
			}
			if _, err := fmt.Sscanf(line[i:], "VIO-MIG pass=%d bad=%d gap_us=%d", &l.pass, &l.bad, &gapUS); err == nil {
				l.gap, l.hostT = time.Duration(gapUS)*time.Microsecond, time.Now()
				p.lines <- l
			}
		}
		close(p.lines)
	}()
	return p
}

func (p *migProc) next(t *testing.T, ctx context.Context, what string) migLine {
	t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			t.Fatalf("%s: vio's console closed", what)
		}
		if l.bad != 0 {
			t.Fatalf("%s: the guest found %d pages that lost an update (pass %d)", what, l.bad, l.pass)
		}
		return l
	case <-ctx.Done():
		t.Fatalf("%s: no report from the guest before the deadline", what)
	}
	return migLine{}
}

// TestLiveMigration migrates a running guest between two vio processes
// over a UNIX socket: the guest increments a byte in every page of 64 MiB
// in an endless loop (QEMU's migration-test pattern) and checks each byte
// before incrementing it. The destination's guest must go on where the
// source's stopped, with no page that lost an update, while the source
// ends in Shutdown. Total time, the guest's longest clock gap (its view of
// the downtime), bytes and iterations go to the log.
func TestLiveMigration(t *testing.T) {
	if migGuest == "" {
		t.Fatal("VIO_MIGGUEST is not set: run through TestMain")
	}
	a := labtest.Assets(t)
	dir := t.TempDir()
	initrd := migGuestInitrd(t, dir, 64)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()

	srcSock, dstSock, migSock := filepath.Join(dir, "src.sock"), filepath.Join(dir, "dst.sock"), filepath.Join(dir, "mig.sock")
	evFile := filepath.Join(dir, "src-events.json")
	src := startMigVio(t, ctx, "source", "--api-socket", srcSock, "--event-monitor", "path="+evFile, "-v")
	scl := apiClient(t, ctx, srcSock, func() bool { return src.cmd.ProcessState != nil })
	put(t, ctx, scl, "vm.create", `{
  "payload": {"kernel": "`+a.Kernel+`", "initramfs": "`+initrd+`", "cmdline": "console=ttyS0 panic=-1 quiet"},
  "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
  "memory": {"size": `+strconv.Itoa(guestMemMiB<<20)+`},
  "serial": {"mode": "Tty"}, "console": {"mode": "Off"}
}`)
	put(t, ctx, scl, "vm.boot", "")
	// A few reports: the guest runs, and its clock loop's usual gap.
	var before migLine
	var baseGap time.Duration
	for i := 0; i < 4; i++ {
		before = src.next(t, ctx, "source")
		if i > 0 { // the first interval holds the program's start
			baseGap = max(baseGap, before.gap)
		}
	}
	t.Logf("source guest: pass %d; longest clock gap while running undisturbed: %v", before.pass, baseGap)

	dst := startMigVio(t, ctx, "destination", "--api-socket", dstSock, "-v")
	dcl := apiClient(t, ctx, dstSock, func() bool { return dst.cmd.ProcessState != nil })
	received := make(chan error, 1)
	go func() {
		_, err := dcl.Do(ctx, "PUT", "vm.receive-migration", []byte(`{"receiver_url": "unix:`+migSock+`"}`))
		received <- err
	}()
	for {
		if _, err := os.Stat(migSock); err == nil {
			break
		}
		select {
		case err := <-received:
			t.Fatalf("vm.receive-migration: %v", err)
		case <-ctx.Done():
			t.Fatal("the destination never listened")
		case <-time.After(20 * time.Millisecond): // polling for a socket file, as apiClient does
		}
	}

	start := time.Now()
	if _, err := scl.Do(ctx, "PUT", "vm.send-migration", []byte(`{"destination_url": "unix:`+migSock+`"}`)); err != nil {
		t.Fatalf("vm.send-migration: %v", err)
	}
	total := time.Since(start)
	if err := <-received; err != nil {
		t.Fatalf("vm.receive-migration: %v", err)
	}
	if s := vmState(t, ctx, scl); s != "Shutdown" {
		t.Errorf("the source VM is %s after the migration, want Shutdown", s)
	}
	if s := vmState(t, ctx, dcl); s != "Running" {
		t.Fatalf("the destination VM is %s after the migration, want Running", s)
	}
	// The source's last words, then the destination's.
	last := before
	for drained := false; !drained; {
		select {
		case l, ok := <-src.lines:
			if !ok {
				drained = true
				break
			}
			if l.bad != 0 {
				t.Fatalf("the source guest found %d lost updates", l.bad)
			}
			last = l
		default:
			drained = true
		}
	}
	first := dst.next(t, ctx, "destination")
	if first.pass < last.pass {
		t.Fatalf("the destination's guest is at pass %d, behind the source's last report (%d): it did not continue", first.pass, last.pass)
	}
	downtime := first.gap
	l := first
	for l.pass < first.pass+3 {
		l = dst.next(t, ctx, "destination")
		downtime = max(downtime, l.gap)
	}
	t.Logf("destination guest: pass %d at its first report (source's last: %d), pass %d %v later, no lost update in %d passes checked",
		first.pass, last.pass, l.pass, l.hostT.Sub(first.hostT).Round(time.Millisecond), l.pass)

	// The source's account, from its event stream.
	var migrated map[string]string
	progress := 0
	evs, err := os.ReadFile(evFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(evs), "\n") {
		var e struct {
			Event      string            `json:"event"`
			Properties map[string]string `json:"properties"`
		}
		if json.Unmarshal([]byte(line), &e) != nil {
			continue
		}
		switch e.Event {
		case "migration-progress":
			progress++
			t.Logf("  iteration %s: %s pages (%s data, %s zero so far), %s bytes so far, %s Mbit/s, %s left%s",
				e.Properties["iteration"], e.Properties["dirty_pages"], e.Properties["data_pages"], e.Properties["zero_pages"],
				e.Properties["bytes"], e.Properties["bandwidth_mbps"], e.Properties["remaining_pages"],
				map[string]string{"true": " (stop-and-copy)"}[e.Properties["final"]])
		case "migrated":
			migrated = e.Properties
		}
	}
	if migrated == nil || progress == 0 || strconv.Itoa(progress) != migrated["iterations"] {
		t.Fatalf("the source's events: %d progress events, migrated %v", progress, migrated)
	}
	t.Logf("MIGRATION: total %v (vm.send-migration), %s iterations (%s), %s bytes sent, VMM downtime %s ms, guest's longest clock gap %v (undisturbed: %v)",
		total.Round(time.Millisecond), migrated["iterations"], migrated["reason"], migrated["bytes"], migrated["downtime_ms"],
		downtime.Round(time.Millisecond), baseGap.Round(time.Millisecond))
}
