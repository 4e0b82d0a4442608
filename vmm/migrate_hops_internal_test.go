package vmm

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/events"
	"github.com/viovmm/vio/loader/loadertest"
)

// hopLog keeps the debug lines both Controllers and their VMs log, so
// that each hop's finer breakdown (the state's save and encode, the
// restore's slowest sections, the destination's start) can be printed
// beside the migrated event's figures.
type hopLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *hopLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// take returns the lines logged since the last take that say where a
// migration's pause went.
func (l *hopLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, line := range strings.Split(l.buf.String(), "\n") {
		for _, m := range []string{"migration downtime", "warmed up", "state saved for the migration", "state restored", "MSRs", "migrated VM running", "disks and TAP devices taken"} {
			if strings.Contains(line, m) {
				out = append(out, line)
			}
		}
	}
	l.buf.Reset()
	return out
}

// A VM like the lab's TestLocalMigration one (1 vCPU, 1 GiB of shared
// RAM, no virtio device; here a synthetic guest that halts) migrates
// locally back and forth between two Controllers of this process, three
// hops, each checked: the destination runs, the source is shut down, and
// what the source wrote into guest RAM just before the hop is there at
// the destination. Each hop's pause, send and resume times, and the finer
// breakdown of the debug log, are logged: the first hop in a fresh
// process pays every first-use cost, the later ones the steady state
// (go test -c once, then run the binary with -test.run
// TestLocalMigrationHops -test.v several times to compare medians).
func TestLocalMigrationHops(t *testing.T) {
	dir := t.TempDir()
	opts := loadertest.Default()
	opts.Entry64 = idleEntry
	kernel := filepath.Join(dir, "bzImage")
	if err := os.WriteFile(kernel, loadertest.BzImage(opts), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.Payload.Kernel = kernel
	cfg.Memory.Size, cfg.Memory.Shared = 1<<30, true
	cfg.Serial.Mode = config.ModeOff

	logs := &hopLog{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	vopts := Options{AllowPVM: true, Log: log}
	var ctls [2]*Controller
	for i := range ctls {
		c := NewController(Builder(IO{}, vopts), log)
		c.SetReceive(Receiver(IO{}, vopts))
		t.Cleanup(func() { c.Shutdown(); c.Delete() })
		ctls[i] = c
	}
	if err := ctls[0].Create(cfg.Clone()); err != nil {
		t.Fatal(err)
	}
	if err := ctls[0].Boot(); err != nil {
		if errors.Is(err, ErrNoKVM) {
			t.Skip("no /dev/kvm here")
		}
		t.Fatal(err)
	}
	logs.take()

	const hops = 3
	for hop := 1; hop <= hops; hop++ {
		src, dst := ctls[(hop+1)%2], ctls[hop%2]
		marker := []byte(fmt.Sprintf("hop %d, written by the source", hop))
		const at = 0x200000
		if _, err := vmOf(t, src).Memory().WriteAt(marker, at); err != nil {
			t.Fatal(err)
		}
		mon := events.NewMonitor()
		sub := mon.Subscribe(64)
		src.SetEvents(mon)
		hopDir := filepath.Join(dir, "hop"+strconv.Itoa(hop))
		if err := os.Mkdir(hopDir, 0o700); err != nil {
			t.Fatal(err)
		}
		sendErr, recvErr := migrate(t, hopDir, src, dst, true, nil)
		if sendErr != nil || recvErr != nil {
			t.Fatalf("hop %d: send: %v; receive: %v", hop, sendErr, recvErr)
		}
		wantControllerState(t, src, StateShutdown, "the source")
		wantControllerState(t, dst, StateRunning, "the destination")
		got := make([]byte, len(marker))
		if _, err := vmOf(t, dst).Memory().ReadAt(got, at); err != nil || !bytes.Equal(got, marker) {
			t.Fatalf("hop %d: the destination's RAM holds %q (%v), want %q", hop, got, err, marker)
		}
		var migrated map[string]string
		for migrated == nil {
			select {
			case e := <-sub.Events():
				if e.Event == "migrated" {
					migrated = e.Properties
				}
			default:
				t.Fatalf("hop %d: the source published no migrated event", hop)
			}
		}
		if migrated["reason"] != "local" || migrated["data_pages"] != "0" {
			t.Fatalf("hop %d was not a local migration: %v", hop, migrated)
		}
		t.Logf("hop %d: downtime_ms=%s pause_ms=%s send_ms=%s resume_ms=%s total_ms=%s", hop,
			migrated["downtime_ms"], migrated["pause_ms"], migrated["send_ms"], migrated["resume_ms"], migrated["total_ms"])
		for _, line := range logs.take() {
			t.Logf("hop %d:   %s", hop, line)
		}
		if err := src.Delete(); err != nil {
			t.Fatal(err)
		}
	}
}
