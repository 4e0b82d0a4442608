package vmm_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/events"
	"github.com/viovmm/vio/migration"
	"github.com/viovmm/vio/migration/migrationtest"
	"github.com/viovmm/vio/vmm"
	"github.com/viovmm/vio/vmm/vmmtest"
)

// A Controller with no VM receives a migration: it builds the Machine
// from the source's config, fills its RAM, restores its state and runs
// it; the source hears that it runs and stops.
func TestReceiveMigration(t *testing.T) {
	c, b, cfg := newController(t)
	c.SetReceive(b.Receive)
	mon := events.NewMonitor()
	sub := mon.Subscribe(64)
	c.SetEvents(mon)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sock := filepath.Join(t.TempDir(), "mig.sock")
	errc := make(chan error, 1)
	go func() { errc <- c.ReceiveMigration(ctx, vmm.ReceiveMigration{ReceiverURL: "unix:" + sock}) }()
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case err := <-errc:
			t.Fatalf("ReceiveMigration: %v", err)
		case <-time.After(5 * time.Millisecond): // waiting for the socket file
		}
	}
	src := migrationtest.NewSource(vmmtest.IncomingRAM)
	cfg.Memory.Size = 1 << 30 // the destination must take the source's config
	src.ConfigJSON, _ = json.Marshal(cfg)
	src.Write(0, 5*migration.PageSize+1, []byte("guest data"))
	ep, _ := migration.ParseURL("unix:" + sock)
	conn, err := migration.Dial(ctx, ep)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := migration.Send(ctx, conn, src, migration.Options{}); err != nil {
		t.Fatalf("Send: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("ReceiveMigration: %v", err)
	}
	wantState(t, c, vmm.StateRunning)
	info, _ := c.Info()
	if info.Config.Memory.Size != 1<<30 {
		t.Errorf("the VM's config has %d bytes of RAM, not the source's", info.Config.Memory.Size)
	}
	m := b.Last()
	if err := m.Err(); err != nil {
		t.Fatal(err)
	}
	if m.Paused() {
		t.Error("the received Machine is not running")
	}
	in, ok := b.LastIncoming()
	if !ok || !strings.HasPrefix(string(in.Regions[0].Data[5*migration.PageSize+1:]), "guest data") || in.State == nil {
		t.Errorf("the Machine did not get the source's RAM and state")
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the socket file stays: %v", err)
	}
	seen := map[string]bool{}
	for len(sub.Events()) > 0 {
		e := <-sub.Events()
		seen[e.Event] = true
	}
	for _, e := range []string{"receiving-migration", "migration-progress", "migration-received"} {
		if !seen[e] {
			t.Errorf("no %s event (saw %v)", e, seen)
		}
	}
	wantWrongState(t, c.ReceiveMigration(ctx, vmm.ReceiveMigration{ReceiverURL: "unix:" + sock}), "cannot receive a migration")
}

// A receiver on TCP port 0 listens on a free port and names it in its
// receiving-migration event, where a sender (an orchestrator) finds it.
func TestReceiveMigrationFreePort(t *testing.T) {
	c, b, cfg := newController(t)
	c.SetReceive(b.Receive)
	mon := events.NewMonitor()
	sub := mon.Subscribe(64)
	c.SetEvents(mon)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- c.ReceiveMigration(ctx, vmm.ReceiveMigration{ReceiverURL: "tcp:127.0.0.1:0"}) }()
	var url string
	for url == "" {
		select {
		case e := <-sub.Events():
			if e.Event == "receiving-migration" {
				url = e.Properties["receiver_url"]
			}
		case err := <-errc:
			t.Fatalf("ReceiveMigration ended before listening: %v", err)
		case <-ctx.Done():
			t.Fatal("no receiving-migration event")
		}
	}
	ep, err := migration.ParseURL(url)
	if err != nil || strings.HasSuffix(url, ":0") {
		t.Fatalf("the event names %q, not the port listened on (%v)", url, err)
	}
	src := migrationtest.NewSource(vmmtest.IncomingRAM)
	src.ConfigJSON, _ = json.Marshal(cfg)
	conn, err := migration.Dial(ctx, ep)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := migration.Send(ctx, conn, src, migration.Options{}); err != nil {
		t.Fatalf("Send: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("ReceiveMigration: %v", err)
	}
	wantState(t, c, vmm.StateRunning)
}

// A failed migration leaves no VM at the destination.
func TestReceiveMigrationFails(t *testing.T) {
	c, b, _ := newController(t)
	c.SetReceive(b.Receive)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sock := filepath.Join(t.TempDir(), "mig.sock")
	errc := make(chan error, 1)
	go func() { errc <- c.ReceiveMigration(ctx, vmm.ReceiveMigration{ReceiverURL: "unix:" + sock}) }()
	// The receiver listens once its socket file exists; it may also
	// fail before that, which ends the wait too.
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case err := <-errc:
			t.Fatalf("ReceiveMigration ended before listening: %v", err)
		case <-ctx.Done():
			t.Fatal("the receiver never made its socket")
		case <-time.After(5 * time.Millisecond):
		}
	}
	src := migrationtest.NewSource(vmmtest.IncomingRAM)
	src.ConfigJSON = []byte(`{"cpus": {"boot_vcpus": 0}}`)
	ep, _ := migration.ParseURL("unix:" + sock)
	conn, err := migration.Dial(ctx, ep)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = migration.Send(ctx, conn, src, migration.Options{})
	if !errors.Is(err, migration.ErrDestination) || !strings.Contains(err.Error(), "the source's VM config") {
		t.Fatalf("Send: %v", err)
	}
	if err := <-errc; err == nil {
		t.Fatal("ReceiveMigration accepted a config it cannot build")
	}
	wantState(t, c, vmm.NoVM)
}

func TestMigrationRequests(t *testing.T) {
	c, b, cfg := newController(t)
	ctx := context.Background()
	if err := c.ReceiveMigration(ctx, vmm.ReceiveMigration{ReceiverURL: "unix:/x"}); !errors.Is(err, vmm.ErrNotImplemented) {
		t.Errorf("ReceiveMigration without SetReceive: %v", err)
	}
	c.SetReceive(b.Receive)
	for _, url := range []string{"", "tcp:nohost", "file:///x", "unix:"} {
		if err := c.ReceiveMigration(ctx, vmm.ReceiveMigration{ReceiverURL: url}); !errors.Is(err, vmm.ErrMigrationRequest) {
			t.Errorf("ReceiveMigration(%q): %v", url, err)
		}
		if err := c.SendMigration(ctx, vmm.SendMigration{DestinationURL: url}); !errors.Is(err, vmm.ErrMigrationRequest) {
			t.Errorf("SendMigration(%q): %v", url, err)
		}
	}
	taken := filepath.Join(t.TempDir(), "taken")
	os.WriteFile(taken, nil, 0o600)
	if err := c.ReceiveMigration(ctx, vmm.ReceiveMigration{ReceiverURL: "unix:" + taken}); !errors.Is(err, vmm.ErrMigrationRequest) || !strings.Contains(err.Error(), "exists") {
		t.Errorf("ReceiveMigration onto an existing file: %v", err)
	}
	if err := c.SendMigration(ctx, vmm.SendMigration{DestinationURL: "unix:/nonexistent"}); !errors.Is(err, vmm.ErrNotCreated) {
		t.Errorf("SendMigration with no VM: %v", err)
	}
	if err := c.Create(cfg); err != nil {
		t.Fatal(err)
	}
	wantWrongState(t, c.SendMigration(ctx, vmm.SendMigration{DestinationURL: "unix:/nonexistent"}), "not been booted")
	if err := c.Boot(); err != nil {
		t.Fatal(err)
	}
	// The double cannot migrate; a real VM is tested in e2e.
	if err := c.SendMigration(ctx, vmm.SendMigration{DestinationURL: "unix:/nonexistent"}); !errors.Is(err, vmm.ErrNotImplemented) {
		t.Errorf("SendMigration of a double: %v", err)
	}
	wantState(t, c, vmm.StateRunning)
}

// startReceiver runs c.ReceiveMigration on a fresh UNIX socket and
// returns its URL once it listens, and the channel of its result.
func startReceiver(t *testing.T, ctx context.Context, c *vmm.Controller) (string, chan error) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "mig.sock")
	errc := make(chan error, 1)
	go func() { errc <- c.ReceiveMigration(ctx, vmm.ReceiveMigration{ReceiverURL: "unix:" + sock}) }()
	for {
		if _, err := os.Stat(sock); err == nil {
			return "unix:" + sock, errc
		}
		select {
		case err := <-errc:
			t.Fatalf("ReceiveMigration ended before listening: %v", err)
		case <-ctx.Done():
			t.Fatal("the receiver never made its socket")
		case <-time.After(5 * time.Millisecond): // waiting for the socket file
		}
	}
}

// A local migration into a Controller: the Machine is built on the
// source's memfd (the same pages, not a copy), restored and run; its RAM
// is unmapped when it stops.
func TestReceiveLocalMigration(t *testing.T) {
	c, b, cfg := newController(t)
	c.SetReceive(b.Receive)
	mon := events.NewMonitor()
	sub := mon.Subscribe(64)
	c.SetEvents(mon)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	url, errc := startReceiver(t, ctx, c)
	src, err := migrationtest.NewSharedSource(vmmtest.IncomingRAM)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	cfg.Memory.Shared = true
	src.ConfigJSON, _ = json.Marshal(cfg)
	src.Write(0, 5*migration.PageSize+1, []byte("guest data"))
	ep, _ := migration.ParseURL(url)
	conn, err := migration.Dial(ctx, ep)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stats, err := migration.Send(ctx, conn, src, migration.Options{Local: true})
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("ReceiveMigration: %v", err)
	}
	wantState(t, c, vmm.StateRunning)
	in, ok := b.LastIncoming()
	if !ok || !in.Shared || in.State == nil || in.Paused() {
		t.Fatalf("the Machine: %+v", in)
	}
	if !strings.HasPrefix(string(in.Regions[0].Data[5*migration.PageSize+1:]), "guest data") {
		t.Error("the Machine does not see the source's RAM")
	}
	in.Regions[0].Data[0] = 0x77
	if src.Regions[0].Data[0] != 0x77 {
		t.Error("the Machine's RAM is a copy, not the source's memfd")
	}
	if stats.DataPages != 0 || stats.Reason != "local" {
		t.Errorf("stats %+v", stats)
	}
	seen := map[string]bool{}
	for len(sub.Events()) > 0 {
		e := <-sub.Events()
		seen[e.Event] = true
	}
	if !seen["migration-received"] {
		t.Errorf("no migration-received event (saw %v)", seen)
	}
	if err := c.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if !in.Unmapped {
		t.Error("the stopped VM still maps the source's RAM")
	}
}

// A local migration that fails before the switch (here the source cannot
// pause) leaves no VM at the destination, its mapping of the source's RAM
// gone.
func TestReceiveLocalMigrationFails(t *testing.T) {
	c, b, cfg := newController(t)
	c.SetReceive(b.Receive)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	url, errc := startReceiver(t, ctx, c)
	src, err := migrationtest.NewSharedSource(vmmtest.IncomingRAM)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	cfg.Memory.Shared = true
	src.ConfigJSON, _ = json.Marshal(cfg)
	src.PauseErr = errors.New("a vCPU would not stop")
	ep, _ := migration.ParseURL(url)
	conn, err := migration.Dial(ctx, ep)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := migration.Send(ctx, conn, src, migration.Options{Local: true}); err == nil || !strings.Contains(err.Error(), "would not stop") {
		t.Fatalf("Send: %v", err)
	}
	conn.Close() // what the source's vio does: the destination sees the end
	if err := <-errc; err == nil {
		t.Fatal("ReceiveMigration succeeded without the state")
	}
	wantState(t, c, vmm.NoVM)
	in, ok := b.LastIncoming()
	if !ok || !in.Shared || !in.Unmapped || !in.Closed() {
		t.Fatalf("the Machine built on the source's RAM was not closed and unmapped: %+v", in)
	}
}

// local is refused with one sentence when it cannot work: RAM not shared
// (say shared=on), a TCP URL.
func TestSendMigrationLocalRefused(t *testing.T) {
	c, _, cfg := newController(t)
	ctx := context.Background()
	if err := c.SendMigration(ctx, vmm.SendMigration{DestinationURL: "tcp:127.0.0.1:1", Local: true}); !errors.Is(err, vmm.ErrMigrationRequest) || !strings.Contains(err.Error(), "UNIX socket") {
		t.Errorf("local over TCP: %v", err)
	}
	if err := c.Create(cfg); err != nil {
		t.Fatal(err)
	}
	if err := c.Boot(); err != nil {
		t.Fatal(err)
	}
	err := c.SendMigration(ctx, vmm.SendMigration{DestinationURL: "unix:/nonexistent", Local: true})
	if !errors.Is(err, vmm.ErrMigrationRequest) || !strings.Contains(err.Error(), "--memory shared=on") {
		t.Errorf("local without shared RAM: %v", err)
	}
	wantState(t, c, vmm.StateRunning)
}
