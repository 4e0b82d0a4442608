package vmm_test

import (
	"context"
	"encoding/json"
	"errors"
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

// The destination takes the disks after the state is restored and before
// the VM starts; if it cannot, the migration fails there with a sentence
// the source hears, the source resumes, and the destination has no VM.
// (migrate_disk_internal_test.go does the same with real VMs and images.)
func TestReceiveMigrationTakesDisks(t *testing.T) {
	for _, fail := range []bool{false, true} {
		c, b, cfg := newController(t)
		c.SetReceive(b.Receive)
		if fail {
			b.FailTakeResources(errors.New("disk d0: the image is in use by another process"))
		}
		mon := events.NewMonitor()
		sub := mon.Subscribe(64)
		c.SetEvents(mon)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		url := "unix:" + filepath.Join(t.TempDir(), "mig.sock")
		errc := make(chan error, 1)
		go func() { errc <- c.ReceiveMigration(ctx, vmm.ReceiveMigration{ReceiverURL: url}) }()
		for listening := false; !listening; {
			select {
			case e := <-sub.Events():
				listening = e.Event == "receiving-migration"
			case err := <-errc:
				t.Fatalf("ReceiveMigration ended before listening: %v", err)
			}
		}
		ep, err := migration.ParseURL(url)
		if err != nil {
			t.Fatal(err)
		}
		src := migrationtest.NewSource(vmmtest.IncomingRAM)
		src.ConfigJSON, _ = json.Marshal(cfg)
		conn, err := migration.Dial(ctx, ep)
		if err != nil {
			t.Fatal(err)
		}
		_, sendErr := migration.Send(ctx, conn, src, migration.Options{})
		recvErr := <-errc
		conn.Close()
		cancel()
		in, ok := b.LastIncoming()
		if !ok {
			t.Fatal("no Machine was built")
		}
		if err := in.Err(); err != nil {
			t.Fatal(err)
		}
		if !fail {
			if sendErr != nil || recvErr != nil || !in.DisksTaken {
				t.Fatalf("send %v, receive %v, disks taken %v", sendErr, recvErr, in.DisksTaken)
			}
			wantState(t, c, vmm.StateRunning)
			continue
		}
		if !errors.Is(sendErr, migration.ErrDestination) || !strings.Contains(sendErr.Error(), "the destination cannot open the VM's disks (disk d0: the image is in use by another process)") {
			t.Fatalf("the source: %v", sendErr)
		}
		if src.Paused() {
			t.Error("the source did not resume after the destination failed to take the disks")
		}
		if recvErr == nil || in.Started() || !in.Closed() {
			t.Fatalf("the destination: %v, started %v, closed %v", recvErr, in.Started(), in.Closed())
		}
		wantState(t, c, vmm.NoVM)
	}
}
