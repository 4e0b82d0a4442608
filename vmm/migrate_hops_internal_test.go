package vmm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/events"
	"github.com/viovmm/vio/kvm"
	"github.com/viovmm/vio/loader/loadertest"
	"github.com/viovmm/vio/migration"
	"github.com/viovmm/vio/state"
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
		for _, m := range []string{"migration downtime", "warmed up", "section ", "state saved for the migration", "state restored", "MSRs", "migrated VM running", "disks and TAP devices taken"} {
			if strings.Contains(line, m) {
				out = append(out, line)
			}
		}
	}
	l.buf.Reset()
	return out
}

// checkedIncoming is a migration's destination that compares, once its
// state is restored and before it runs, what it holds with what the
// source sent: nothing done to it before the restore (such as warmUpKVM)
// may show through.
type checkedIncoming struct {
	IncomingMachine
	sent    *state.Snapshot
	checked bool
	err     error
}

func (c *checkedIncoming) RestoreState(s *state.Snapshot) error {
	c.sent = s
	return c.IncomingMachine.RestoreState(s)
}

// migrationSource lets the VM migrate on from here.
func (c *checkedIncoming) migrationSource(ctx context.Context, paused, local bool) (*migrationSource, error) {
	return c.IncomingMachine.(*VM).migrationSource(ctx, paused, local)
}

func (c *checkedIncoming) TakeResources() error {
	c.checked = true
	c.err = sameState(c.sent, c.IncomingMachine.(*VM))
	return c.IncomingMachine.TakeResources()
}

// sameState compares the state the source sent with the one restored in
// v, section by section: the same bytes, except in the vCPUs' sections,
// where the TSC has moved on (it counts while the state is read), and in
// the PIT's, whose channels' load times the kernel keeps in its own
// clock's terms.
func sameState(sent *state.Snapshot, v *VM) error {
	got, err := v.saveState(nil)
	if err != nil {
		return err
	}
	have := map[string][]byte{}
	for _, sec := range got.Sections() {
		have[sec.ID] = sec.Data
	}
	for _, sec := range sent.Sections() {
		h, ok := have[sec.ID]
		switch {
		case !ok:
			return fmt.Errorf("the destination has no section %s", sec.ID)
		case sec.Kind == "kvm-vcpu":
			a, err := decodeCPUState(sec.Data)
			if err != nil {
				return err
			}
			b, err := decodeCPUState(h)
			if err != nil {
				return err
			}
			for _, s := range []*kvm.VCPUState{a, b} {
				s.MSRs = slices.DeleteFunc(s.MSRs, func(e kvm.MSREntry) bool { return e.Index == msrTSC })
			}
			if !reflect.DeepEqual(a, b) {
				return fmt.Errorf("section %s: the destination's vCPU state is not the source's:\n sent %+v\n have %+v", sec.ID, a, b)
			}
		case sec.Kind == "kvm-pit":
			var a, b kvm.PITState2
			if err := state.Unmarshal(sec.Data, &a); err != nil {
				return err
			}
			if err := state.Unmarshal(h, &b); err != nil {
				return err
			}
			for i := range a.Channels {
				a.Channels[i].CountLoadTime, b.Channels[i].CountLoadTime = 0, 0
			}
			if a != b {
				return fmt.Errorf("section pit: the destination's PIT is not the source's:\n sent %+v\n have %+v", a, b)
			}
		case !bytes.Equal(sec.Data, h):
			return fmt.Errorf("section %s: the source sent %s, the destination has %s", sec.ID, sec.Data, h)
		}
	}
	return nil
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
	var checked []*checkedIncoming
	for i := range ctls {
		c := NewController(Builder(IO{}, vopts), log)
		real := Receiver(IO{}, vopts)
		c.SetReceive(func(cfg *config.VM, ram *migration.SharedRAM) (IncomingMachine, error) {
			m, err := real(cfg, ram)
			if err != nil {
				return nil, err
			}
			ci := &checkedIncoming{IncomingMachine: m}
			checked = append(checked, ci)
			return ci, nil
		})
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
		if len(checked) != hop || !checked[hop-1].checked {
			t.Fatalf("hop %d: the destination's restored state was not checked", hop)
		}
		if err := checked[hop-1].err; err != nil {
			t.Fatalf("hop %d: %v", hop, err)
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
