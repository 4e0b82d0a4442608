package migration_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/viovmm/vio/internal/tlsdir/tlsdirtest"
	"github.com/viovmm/vio/migration"
	"github.com/viovmm/vio/migration/migrationtest"
)

const page = migration.PageSize

// pair returns the two ends of a UNIX socket connection.
func pair(t testing.TB) (src, dst net.Conn) {
	t.Helper()
	ep, err := migration.ParseURL("unix:" + filepath.Join(t.TempDir(), "m.sock"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := migration.Listen(ep)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := migration.Accept(ctx, l)
		accepted <- c
	}()
	src, err = migration.Dial(ctx, ep)
	if err != nil {
		t.Fatal(err)
	}
	dst = <-accepted
	if dst == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { src.Close(); dst.Close() })
	return src, dst
}

type result struct {
	stats   migration.Stats
	sendErr error
	rec     *migration.Received
	recvErr error
}

// migrate runs Send and Receive against each other; finish is the
// destination's last answer (nil: it runs the VM).
func migrate(t *testing.T, src *migrationtest.Source, tgt *migrationtest.Target, o migration.Options, finish error) result {
	t.Helper()
	r := sendAndReceive(t, src, tgt, o, finish)
	if err := src.Err(); err != nil {
		t.Fatalf("Send broke the Source's contract: %v", err)
	}
	return r
}

// sendAndReceive runs Send with o against Receive over a socket pair,
// the destination answering finish at the end (nil: it runs the VM).
func sendAndReceive(t *testing.T, src migration.Source, tgt migration.Target, o migration.Options, finish error) result {
	t.Helper()
	sc, dc := pair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var r result
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.rec, r.recvErr = migration.Receive(ctx, dc, tgt, migration.ReceiveOptions{})
		if r.recvErr == nil {
			if finish != nil {
				r.rec.VM.Discard()
			}
			r.rec.Finish(finish)
		}
	}()
	r.stats, r.sendErr = migration.Send(ctx, sc, src, o)
	sc.Close() // as the caller does: the receiver sees the end
	<-done
	return r
}

func checkSame(t *testing.T, want [][]byte, in *migrationtest.Incoming) {
	t.Helper()
	for i, r := range in.Regions {
		if !bytes.Equal(r.Data, want[i]) {
			for p := 0; p < len(r.Data); p += page {
				if !bytes.Equal(r.Data[p:p+page], want[i][p:p+page]) {
					t.Fatalf("region %d page %d differs at the destination", i, p/page)
				}
			}
		}
	}
}

// A guest that writes a few pages between collections: everything it
// wrote, including pages written after they were first copied, arrives,
// and the migration converges once the writes stop.
func TestSendReceive(t *testing.T) {
	sizes := []int{64 * page, 130 * page} // the second ends inside a bitmap word
	src := migrationtest.NewSource(sizes...)
	src.Write(0, 5*page+7, []byte("before the migration"))
	src.Write(1, 129*page, bytes.Repeat([]byte{0xaa}, page))
	src.Step = func(s *migrationtest.Source, round int) {
		if round > 3 {
			return // the guest goes idle: pre-copy converges
		}
		s.Write(0, round*page, []byte{byte(round)})                      // a fresh page
		s.Write(0, 5*page+7, []byte{byte(round)})                        // a page copied already
		s.Write(1, 64*page-3, bytes.Repeat([]byte{byte(round + 1)}, 10)) // across two pages
		s.Write(1, 129*page, make([]byte, page))                         // back to zero
	}
	tgt := &migrationtest.Target{Sizes: sizes}
	var progress []migration.Progress
	r := migrate(t, src, tgt, migration.Options{Downtime: time.Nanosecond, MaxIterations: 10,
		Progress: func(p migration.Progress) { progress = append(progress, p) }}, nil)
	if r.sendErr != nil || r.recvErr != nil {
		t.Fatalf("send: %v; receive: %v", r.sendErr, r.recvErr)
	}
	in := tgt.Built[0]
	checkSame(t, src.Snapshot(), in)
	if !in.Restored || in.Blob.Data != "device state" || string(in.Config) != `{"test":true}` {
		t.Errorf("destination: restored %v, blob %q, config %s", in.Restored, in.Blob.Data, in.Config)
	}
	if got, want := src.Calls(), []string{"start-log", "pause", "state", "stop-log"}; !slices.Equal(got, want) {
		t.Errorf("source calls %v, want %v", got, want)
	}
	// Rounds 1-3 dirty pages, round 4 is quiet: iterations 1 (full copy)
	// to 4 pre-copy, converged with nothing left, then the stop-and-copy.
	if r.stats.Iterations != 5 || r.stats.Reason != "converged" {
		t.Errorf("%d iterations (%s), want 5 (converged)", r.stats.Iterations, r.stats.Reason)
	}
	if len(progress) != 5 || !progress[4].Final || progress[0].DirtyPages != 194 || progress[4].DirtyPages != 0 {
		t.Errorf("progress %+v", progress)
	}
	// The full copy sent 2 pages of data and the rest as zero runs.
	if progress[0].DataPages != 2 || progress[0].ZeroPages != 192 {
		t.Errorf("full copy: %d data and %d zero pages, want 2 and 192", progress[0].DataPages, progress[0].ZeroPages)
	}
	if r.stats.Bytes > 40*page {
		t.Errorf("%d bytes sent for a mostly zero guest", r.stats.Bytes)
	}
	if r.rec.Stats.Iterations != 5 || r.rec.Stats.DataPages != r.stats.DataPages || r.rec.Stats.ZeroPages != r.stats.ZeroPages {
		t.Errorf("receiver counted %+v, sender %+v", r.rec.Stats, r.stats)
	}
}

// A guest that dirties pages faster than the downtime allows never
// converges: pre-copy stops at the iteration cap, and still everything
// arrives.
func TestIterationCap(t *testing.T) {
	src := migrationtest.NewSource(256 * page)
	src.Step = func(s *migrationtest.Source, round int) {
		for p := 0; p < 256; p += 2 {
			s.Write(0, p*page, []byte{byte(round), 1})
		}
	}
	// Written after the last pre-copy collection: only the collection
	// after the pause has it.
	src.BeforePause = func(s *migrationtest.Source) { s.Write(0, 255*page, []byte("last word")) }
	tgt := &migrationtest.Target{Sizes: []int{256 * page}}
	r := migrate(t, src, tgt, migration.Options{Downtime: time.Nanosecond, MaxIterations: 4}, nil)
	if r.sendErr != nil || r.recvErr != nil {
		t.Fatalf("send: %v; receive: %v", r.sendErr, r.recvErr)
	}
	checkSame(t, src.Snapshot(), tgt.Built[0])
	if r.stats.Iterations != 5 || r.stats.Reason != "iteration cap" {
		t.Errorf("%d iterations (%s), want 4 and the stop-and-copy (iteration cap)", r.stats.Iterations, r.stats.Reason)
	}
}

// With a timeout that passes and the Cancel strategy the migration fails
// and the source was never paused; with Ignore it completes.
func TestTimeout(t *testing.T) {
	dirtying := func(s *migrationtest.Source, round int) { s.Write(0, 0, []byte{byte(round)}) }
	src := migrationtest.NewSource(16 * page)
	src.Step = dirtying
	tgt := &migrationtest.Target{Sizes: []int{16 * page}}
	r := migrate(t, src, tgt, migration.Options{Downtime: time.Nanosecond, Timeout: time.Nanosecond}, nil)
	if !errors.Is(r.sendErr, migration.ErrTimeout) || r.recvErr == nil {
		t.Fatalf("send: %v; receive: %v", r.sendErr, r.recvErr)
	}
	if !tgt.Built[0].Discarded {
		t.Error("the destination kept the VM of a cancelled migration")
	}
	if src.Paused() || slices.Contains(src.Calls(), "pause") {
		t.Errorf("calls %v: the source was paused", src.Calls())
	}

	src = migrationtest.NewSource(16 * page)
	src.Step = dirtying
	tgt = &migrationtest.Target{Sizes: []int{16 * page}}
	r = migrate(t, src, tgt, migration.Options{Downtime: time.Nanosecond, Timeout: time.Nanosecond, OnTimeout: migration.Ignore}, nil)
	if r.sendErr != nil || r.stats.Reason != "timeout" {
		t.Fatalf("send: %v (%s)", r.sendErr, r.stats.Reason)
	}
	checkSame(t, src.Snapshot(), tgt.Built[0])
}

// The destination failing at any stage leaves the source running, with
// the destination's sentence in the error.
func TestDestinationFails(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tgt    *migrationtest.Target
		finish error
		paused bool // whether the source got as far as pausing
	}{
		{"build", &migrationtest.Target{Sizes: []int{8 * page}, BuildErr: errors.New("no such disk")}, nil, false},
		{"layout", &migrationtest.Target{Sizes: []int{16 * page}}, nil, false},
		{"restore", &migrationtest.Target{Sizes: []int{8 * page}, RestoreErr: errors.New("bad device state")}, nil, true},
		{"run", &migrationtest.Target{Sizes: []int{8 * page}}, errors.New("KVM said no"), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := migrationtest.NewSource(8 * page)
			r := migrate(t, src, tc.tgt, migration.Options{}, tc.finish)
			if !errors.Is(r.sendErr, migration.ErrDestination) {
				t.Fatalf("send: %v, want the destination's refusal", r.sendErr)
			}
			t.Logf("source's error: %v", r.sendErr)
			want := map[string]string{"build": "no such disk", "layout": "migrate between the same vio versions", "restore": "bad device state", "run": "KVM said no"}[tc.name]
			if !bytes.Contains([]byte(r.sendErr.Error()), []byte(want)) {
				t.Errorf("the error does not carry the destination's reason %q", want)
			}
			if src.Paused() {
				t.Error("the source stays paused")
			}
			if got := slices.Contains(src.Calls(), "resume"); got != tc.paused {
				t.Errorf("calls %v", src.Calls())
			}
			for _, in := range tc.tgt.Built {
				if tc.name != "run" && !in.Discarded {
					t.Error("the destination VM was not discarded")
				}
			}
		})
	}
}

// A destination that takes everything and then goes silent may be
// running the VM: the source stays paused and says so.
func TestOutcomeUnknown(t *testing.T) {
	src := migrationtest.NewSource(8 * page)
	sc, dc := pair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() {
		rec, err := migration.Receive(ctx, dc, &migrationtest.Target{Sizes: []int{8 * page}}, migration.ReceiveOptions{})
		if err == nil {
			_ = rec
			dc.Close() // no answer
		}
	}()
	_, err := migration.Send(ctx, sc, src, migration.Options{})
	if !errors.Is(err, migration.ErrOutcomeUnknown) {
		t.Fatalf("send: %v", err)
	}
	if !src.Paused() || slices.Contains(src.Calls(), "resume") {
		t.Errorf("calls %v: the source must stay paused", src.Calls())
	}
}

// Cancelling the context ends a migration promptly, and the source runs.
func TestCancel(t *testing.T) {
	src := migrationtest.NewSource(64 * page)
	ctx, cancel := context.WithCancel(context.Background())
	src.Step = func(s *migrationtest.Source, round int) {
		s.Write(0, 0, bytes.Repeat([]byte{1}, 64*page))
		if round == 2 {
			cancel()
		}
	}
	sc, dc := pair(t)
	go migration.Receive(context.Background(), dc, &migrationtest.Target{Sizes: []int{64 * page}}, migration.ReceiveOptions{})
	_, err := migration.Send(ctx, sc, src, migration.Options{Downtime: time.Nanosecond})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("send: %v", err)
	}
	if src.Paused() {
		t.Error("the source stays paused")
	}
}

// A canceller's cause (vio's: the guest stopped under the migration) is
// in the error, which is still context.Canceled.
func TestCancelCause(t *testing.T) {
	src := migrationtest.NewSource(64 * page)
	ctx, cancel := context.WithCancelCause(context.Background())
	why := errors.New("the guest stopped (reboot: triple fault)")
	src.Step = func(s *migrationtest.Source, round int) {
		s.Write(0, 0, bytes.Repeat([]byte{1}, 64*page))
		if round == 2 {
			cancel(why)
		}
	}
	sc, dc := pair(t)
	go migration.Receive(context.Background(), dc, &migrationtest.Target{Sizes: []int{64 * page}}, migration.ReceiveOptions{})
	_, err := migration.Send(ctx, sc, src, migration.Options{Downtime: time.Nanosecond})
	if !errors.Is(err, context.Canceled) || !errors.Is(err, why) {
		t.Fatalf("send: %v; want context.Canceled with the cause", err)
	}
}

// The same over TCP (loopback), the transport between hosts.
func TestSendReceiveTCP(t *testing.T) {
	ep, err := migration.ParseURL("tcp:127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := migration.Listen(ep)
	if err != nil {
		t.Fatal(err)
	}
	ep, _ = migration.ParseURL("tcp:" + l.Addr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tgt := &migrationtest.Target{Sizes: []int{32 * page}}
	errc := make(chan error, 1)
	go func() {
		c, err := migration.Accept(ctx, l)
		if err != nil {
			errc <- err
			return
		}
		defer c.Close()
		rec, err := migration.Receive(ctx, c, tgt, migration.ReceiveOptions{})
		if err == nil {
			err = rec.Finish(nil)
		}
		errc <- err
	}()
	src := migrationtest.NewSource(32 * page)
	src.Write(0, 31*page, []byte("over TCP"))
	conn, err := migration.Dial(ctx, ep)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := migration.Send(ctx, conn, src, migration.Options{}); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	checkSame(t, src.Snapshot(), tgt.Built[0])
}

// TestSendReceiveTLS: the same over mutual TLS; a sender without a
// certificate, or trusting another CA, gets nothing through.
func TestSendReceiveTLS(t *testing.T) {
	dir := tlsdirtest.Write(t, "migration CA")
	ep, _ := migration.ParseURL("tcp:127.0.0.1:0")
	if _, err := migration.SenderTLS(migration.Endpoint{Network: "unix", Address: "/x"}, dir); !errors.Is(err, migration.ErrBadURL) {
		t.Errorf("TLS over a UNIX socket: %v", err)
	}
	srvCfg, err := migration.ReceiverTLS(ep, dir)
	if err != nil {
		t.Fatal(err)
	}
	run := func(cliDir string, withCert bool) (sendErr, recvErr error) {
		l, err := migration.Listen(ep)
		if err != nil {
			t.Fatal(err)
		}
		dest, _ := migration.ParseURL("tcp:" + l.Addr().String())
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		tgt := &migrationtest.Target{Sizes: []int{16 * page}}
		errc := make(chan error, 1)
		go func() {
			c, err := migration.Accept(ctx, l)
			if err != nil {
				errc <- err
				return
			}
			if c, err = migration.Secure(ctx, c, srvCfg, true); err != nil {
				errc <- err
				return
			}
			defer c.Close()
			rec, err := migration.Receive(ctx, c, tgt, migration.ReceiveOptions{})
			if err == nil {
				err = rec.Finish(nil)
			}
			errc <- err
		}()
		src := migrationtest.NewSource(16 * page)
		src.Write(0, 15*page, []byte("over TLS"))
		cfg, err := migration.SenderTLS(dest, cliDir)
		if err != nil {
			t.Fatal(err)
		}
		if !withCert {
			cfg.Certificates = nil
		}
		conn, err := migration.Dial(ctx, dest)
		if err != nil {
			t.Fatal(err)
		}
		if conn, sendErr = migration.Secure(ctx, conn, cfg, false); sendErr == nil {
			_, sendErr = migration.Send(ctx, conn, src, migration.Options{})
			conn.Close()
		}
		recvErr = <-errc
		if recvErr == nil {
			checkSame(t, src.Snapshot(), tgt.Built[0])
		}
		return sendErr, recvErr
	}
	if s, r := run(dir, true); s != nil || r != nil {
		t.Fatalf("with the right credentials: send %v, receive %v", s, r)
	}
	if _, r := run(dir, false); r == nil {
		t.Error("the receiver took a migration from a sender with no certificate")
	}
	if s, r := run(tlsdirtest.Write(t, "another CA"), true); s == nil || r == nil {
		t.Errorf("a sender trusting another CA: send %v, receive %v", s, r)
	}
}
