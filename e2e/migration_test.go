package e2e

import (
	"bufio"
	"context"
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

// liveHops is how many TCP migrations TestLiveMigration makes in the
// suite; make soak-migration makes 20 (migrationHops).
const liveHops = 4

// TestLiveMigration migrates a running guest by pre-copy over TCP between
// two vio processes, back and forth liveHops times (20 in make
// soak-migration): the guest increments
// a byte in every page of 100 MiB in an endless loop (QEMU's
// migration-test pattern) and checks each byte before incrementing it.
// Every destination's guest must go on where its source's stopped, with
// no page that lost an update, every source ends in Shutdown, and after
// the last hop a full pass finds every byte consistent. Each hop's total
// time, iterations, bytes, the VMM's downtime and the guest's longest
// clock gap (its view of the downtime) go to the log.
func TestLiveMigration(t *testing.T) {
	labRetry(t, func(t *testing.T, reset *labReset) {
		if migGuest == "" {
			t.Fatal("VIO_MIGGUEST is not set: run through TestMain")
		}
		a := labtest.Assets(t)
		dir := t.TempDir()
		initrd := migGuestInitrd(t, dir, 100)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()

		vios := [2]*hopVio{startHopVio(t, ctx, dir, "a"), startHopVio(t, ctx, dir, "b")}
		put(t, ctx, vios[0].cl, "vm.create", `{
	  "payload": {"kernel": "`+a.Kernel+`", "initramfs": "`+initrd+`", "cmdline": "console=ttyS0 panic=-1 quiet"},
	  "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
	  "memory": {"size": `+strconv.Itoa(guestMemMiB<<20)+`},
	  "serial": {"mode": "Tty"}, "console": {"mode": "Off"}
	}`)
		put(t, ctx, vios[0].cl, "vm.boot", "")
		// A few reports: the guest runs, and its clock loop's usual gap.
		var last migLine
		var baseGap time.Duration
		for i := 0; i < 4; i++ {
			last = vios[0].p.next(t, ctx, "a")
			if i > 0 { // the first interval holds the program's start
				baseGap = max(baseGap, last.gap)
			}
		}
		t.Logf("guest on a: pass %d; longest clock gap while running undisturbed: %v", last.pass, baseGap)
		figs := migrateHops(t, ctx, vios, last, hopPlan{
			reset: reset,
			hops:  migrationHops(t, liveHops),
			// Port 0: the receiver picks a free port and names it in its
			// receiving-migration event.
			url: func(int) string { return "tcp:127.0.0.1:0" },
			check: func(m map[string]string) string {
				if m["reason"] == "local" || m["data_pages"] == "0" {
					return "no RAM was copied"
				}
				return ""
			},
		})
		t.Logf("MIGRATION over TCP: %s", hopSummary(figs, baseGap))
	})
}
