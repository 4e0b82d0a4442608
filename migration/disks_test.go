package migration_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/internal/tlsdir/tlsdirtest"
	"github.com/viovmm/vio/migration"
	"github.com/viovmm/vio/migration/migrationtest"
)

var twoDisks = []migration.Disk{{ID: "d0", Size: 1 << 20}, {ID: "data", Size: 3 << 20}}

// diskRun runs Send with a Copier against Receive with a DiskTarget;
// onDisk, if set, hears of each disk progress record at the receiver.
func diskRun(t *testing.T, src *migrationtest.Source, tgt migration.Target, o migration.Options, onDisk func(copied, total uint64)) result {
	t.Helper()
	sc, dc := pair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var r result
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.rec, r.recvErr = migration.Receive(ctx, dc, tgt, migration.ReceiveOptions{DiskProgress: onDisk})
		if r.recvErr == nil {
			r.rec.Finish(nil)
		}
	}()
	r.stats, r.sendErr = migration.Send(ctx, sc, src, o)
	sc.Close()
	<-done
	if err := src.Err(); err != nil {
		t.Fatalf("Send broke the Source's contract: %v", err)
	}
	return r
}

// The disks are announced with the config, their copy starts once the
// destination has built the VM, and RAM is copied only once they are in
// sync: until then the source tells the destination how far the copy got
// (records the destination hears while no RAM has moved).
func TestSendCopiesDisksBeforeRAM(t *testing.T) {
	src := migrationtest.NewSource(16 * page)
	src.Write(0, 3*page, []byte("ram"))
	cp := migrationtest.NewCopier(twoDisks, src.Calls)
	tgt := &migrationtest.DiskTarget{Target: migrationtest.Target{Sizes: []int{16 * page}}}
	var heard []uint64
	var srcHeard int
	r := diskRun(t, src, tgt, migration.Options{Disks: cp, DiskProgress: func(uint64, uint64) { srcHeard++ }}, func(copied, total uint64) {
		heard = append(heard, copied)
		if total != 4<<20 {
			t.Errorf("the destination heard of %d bytes to copy, want %d", total, 4<<20)
		}
		if len(heard) > 1 {
			return // the "in sync" record: the source goes on meanwhile
		}
		if calls := src.Calls(); len(calls) != 0 {
			t.Errorf("the source was at %v while its disks were still copying", calls)
		}
		if tgt.Built[0].Regions[0].Data[3*page] != 0 {
			t.Error("RAM arrived before the disks were in sync")
		}
		cp.Sync() // the second record says "in sync"
	})
	if r.sendErr != nil || r.recvErr != nil {
		t.Fatalf("send: %v; receive: %v", r.sendErr, r.recvErr)
	}
	token, ok := cp.Started()
	if !ok || token != tgt.Token || token == (migration.Token{}) {
		t.Fatalf("the copy started %v with token %x, the destination got %x", ok, token, tgt.Token)
	}
	if !slices.Equal(tgt.Disks, twoDisks) {
		t.Fatalf("the destination was asked for %v, want %v", tgt.Disks, twoDisks)
	}
	if len(cp.StartCalls()) != 0 {
		t.Fatalf("the copy started after %v: it must start before RAM", cp.StartCalls())
	}
	if len(heard) != 2 || heard[0] != 0 || heard[1] != 4<<20 || srcHeard != 2 {
		t.Fatalf("the destination heard %v, the source reported %d times; want 0 then every byte", heard, srcHeard)
	}
	if r.stats.DiskBytes != 4<<20 || r.stats.DiskTime <= 0 || r.rec.Stats.DiskBytes != 4<<20 {
		t.Fatalf("source stats %+v, destination stats %+v", r.stats, r.rec.Stats)
	}
	checkSame(t, src.Snapshot(), tgt.Built[0])
}

// A copy that fails before the disks are in sync fails the migration
// before any RAM moves: the source never paused, and the destination
// discards its VM.
func TestSendDiskCopyFails(t *testing.T) {
	src := migrationtest.NewSource(16 * page)
	cp := migrationtest.NewCopier(twoDisks, nil)
	boom := errors.New("the destination's image went away")
	cp.Fail(boom)
	tgt := &migrationtest.DiskTarget{Target: migrationtest.Target{Sizes: []int{16 * page}}}
	r := diskRun(t, src, tgt, migration.Options{Disks: cp}, nil)
	if !errors.Is(r.sendErr, boom) || !strings.Contains(r.sendErr.Error(), "copying the disks") {
		t.Fatalf("send: %v", r.sendErr)
	}
	if r.recvErr == nil || !tgt.Built[0].Discarded {
		t.Fatalf("receive: %v, discarded %v", r.recvErr, tgt.Built[0].Discarded)
	}
	if calls := src.Calls(); len(calls) != 0 {
		t.Fatalf("the source went through %v", calls)
	}
}

// A disk that falls out of sync during RAM's pre-copy (the destination
// stopped taking its writes) fails the migration at the end of that
// iteration: the source never pauses.
func TestSendDiskFallsOutOfSync(t *testing.T) {
	src := migrationtest.NewSource(16 * page)
	cp := migrationtest.NewCopier(twoDisks, nil)
	cp.Sync()
	boom := errors.New("disk d0 fell out of sync")
	src.Step = func(s *migrationtest.Source, round int) {
		s.Write(0, 0, []byte{byte(round)})
		cp.Fail(boom)
	}
	tgt := &migrationtest.DiskTarget{Target: migrationtest.Target{Sizes: []int{16 * page}}}
	r := diskRun(t, src, tgt, migration.Options{Disks: cp}, nil)
	if !errors.Is(r.sendErr, boom) {
		t.Fatalf("send: %v", r.sendErr)
	}
	if got, want := src.Calls(), []string{"start-log", "stop-log"}; !slices.Equal(got, want) {
		t.Fatalf("the source went through %v, want %v", got, want)
	}
	if r.recvErr == nil {
		t.Fatal("the destination received a migration whose disk fell out of sync")
	}
}

// A destination that cannot take the disks (the target's one sentence)
// fails the migration before the copy starts; one that cannot take
// copies at all says so.
func TestDestinationRefusesDisks(t *testing.T) {
	refusal := errors.New("disk d0: the destination has no image at /x: create one")
	for name, tgt := range map[string]migration.Target{
		"refused": &migrationtest.DiskTarget{Target: migrationtest.Target{Sizes: []int{16 * page}}, DisksErr: refusal},
		"unable":  &migrationtest.Target{Sizes: []int{16 * page}},
	} {
		t.Run(name, func(t *testing.T) {
			src := migrationtest.NewSource(16 * page)
			cp := migrationtest.NewCopier(twoDisks, nil)
			r := diskRun(t, src, tgt, migration.Options{Disks: cp}, nil)
			if !errors.Is(r.sendErr, migration.ErrDestination) {
				t.Fatalf("send: %v", r.sendErr)
			}
			want := refusal.Error()
			if name == "unable" {
				want = "cannot take copies of the source's disks"
			}
			if !strings.Contains(r.sendErr.Error(), want) {
				t.Fatalf("send: %v, want it to say %q", r.sendErr, want)
			}
			if _, started := cp.Started(); started {
				t.Fatal("the copy started although the destination refused")
			}
		})
	}
}

// A local migration does not copy disks.
func TestLocalRefusesDisks(t *testing.T) {
	src := migrationtest.NewSource(16 * page)
	cp := migrationtest.NewCopier(twoDisks, nil)
	sc, _ := pair(t)
	_, err := migration.Send(context.Background(), sc, src, migration.Options{Local: true, Disks: cp})
	if err == nil || !strings.Contains(err.Error(), "does not copy disks") {
		t.Fatalf("Send: %v", err)
	}
}

// The receiver refuses disk records where they do not belong.
func TestReceiveHostileDisks(t *testing.T) {
	disks := func(s *stream, payload []byte) *stream {
		s.record(9, uint32(len(payload)))
		s.Write(payload)
		return s
	}
	okDisks := append(make([]byte, 16), 1, 0, 0, 0)
	okDisks = append(okDisks, 0, 0, 0x10, 0, 0, 0, 0, 0, 2, 'd', '0')
	withFlag := func() *stream {
		s := new(stream)
		s.WriteString(migration.Magic)
		return s.u32(migration.Version).u32(2).config(`{}`)
	}
	progress := func(s *stream) *stream { return s.record(10, 16).u64(1).u64(2) }
	for name, b := range map[string][]byte{
		"progress without disks": progress(good()).Bytes(),
		"disks without the flag": disks(new(stream).header().config(`{}`), okDisks).layout().Bytes(),
		"no disks record":        withFlag().layout().Bytes(),
		"progress after RAM":     progress(disks(withFlag(), okDisks).layout().data(0, 1, 1)).Bytes(),
		"a second disks record":  disks(disks(withFlag(), okDisks).layout(), okDisks).Bytes(),
		"disks record cut short": disks(withFlag(), okDisks[:len(okDisks)-1]).layout().Bytes(),
		"local and disks":        append(append([]byte(migration.Magic), 2, 0, 0, 0, 3, 0, 0, 0), new(stream).config(`{}`).Bytes()...),
	} {
		t.Run(name, func(t *testing.T) {
			tgt := &migrationtest.DiskTarget{Target: migrationtest.Target{Sizes: []int{8 * page, 4 * page}}}
			c := &rw{Reader: bytes.NewReader(b)}
			_, err := migration.Receive(context.Background(), c, tgt, migration.ReceiveOptions{})
			if !errors.Is(err, migration.ErrProtocol) {
				t.Fatalf("%v, want a protocol error", err)
			}
			for _, in := range tgt.Built {
				if !in.Discarded {
					t.Fatal("the VM was kept")
				}
			}
		})
	}
}

// listen returns a migration listener on TCP loopback whose migration
// stream is accepted (over TLS when cfg is set), and the endpoint.
func listen(t *testing.T, srv, cli *tls.Config) (*migration.Listener, migration.Endpoint) {
	t.Helper()
	ep, _ := migration.ParseURL("tcp:127.0.0.1:0")
	l, err := migration.Listen(ep)
	if err != nil {
		t.Fatal(err)
	}
	ep.Address = l.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type accepted struct {
		c  net.Conn
		dl *migration.Listener
		e  error
	}
	ch := make(chan accepted, 1)
	go func() {
		c, dl, err := migration.AcceptMigration(ctx, l, srv)
		ch <- accepted{c, dl, err}
	}()
	mc, err := migration.Dial(ctx, ep)
	if err != nil {
		t.Fatal(err)
	}
	if cli != nil {
		if mc, err = migration.Secure(ctx, mc, cli, false); err != nil {
			t.Fatal(err)
		}
	}
	a := <-ch
	if a.e != nil {
		t.Fatal(a.e)
	}
	t.Cleanup(func() { mc.Close(); a.c.Close(); a.dl.Close() })
	return a.dl, ep
}

// served collects the connections a Listener hands on and the ones it
// rejects.
type served struct {
	conns    chan net.Conn
	rejected chan error
}

func serveDisks(t *testing.T, dl *migration.Listener, token migration.Token) *served {
	s := &served{conns: make(chan net.Conn, 16), rejected: make(chan error, 64)}
	dl.Rejected = func(_ string, err error) { s.rejected <- err }
	if err := dl.Serve(token, func(c net.Conn) { s.conns <- c }); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *served) wantRejected(t *testing.T, what string) error {
	t.Helper()
	select {
	case err := <-s.rejected:
		return err
	case c := <-s.conns:
		c.Close()
		t.Fatalf("%s was served", what)
	case <-time.After(migration.DiskPrefaceTimeout + 10*time.Second):
		t.Fatalf("%s was neither served nor rejected", what)
	}
	return nil
}

// A disk connection with the migration's token reaches the server, with
// its bytes after the preface intact; garbage, a wrong token and a peer
// that closes mid-preface are rejected, and none of them disturbs the
// next good connection.
func TestListenerRoutesDiskConnections(t *testing.T) {
	for _, withTLS := range []bool{false, true} {
		name := "plain"
		var srv, cli *tls.Config
		if withTLS {
			name = "tls"
			dir := tlsdirtest.Write(t, "migration CA")
			var err error
			ep, _ := migration.ParseURL("tcp:127.0.0.1:1")
			if srv, err = migration.ReceiverTLS(ep, dir); err != nil {
				t.Fatal(err)
			}
			if cli, err = migration.SenderTLS(ep, dir); err != nil {
				t.Fatal(err)
			}
		}
		t.Run(name, func(t *testing.T) {
			dl, ep := listen(t, srv, cli)
			token := migration.NewToken()
			s := serveDisks(t, dl, token)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			raw := func() net.Conn {
				c, err := migration.Dial(ctx, ep)
				if err != nil {
					t.Fatal(err)
				}
				if cli != nil {
					if c, err = migration.Secure(ctx, c, cli, false); err != nil {
						t.Fatal(err)
					}
				}
				return c
			}
			c := raw()
			c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
			if err := s.wantRejected(t, "garbage"); !errors.Is(err, migration.ErrDiskConn) {
				t.Fatalf("garbage: %v", err)
			}
			c.Close()
			c, err := migration.DialDisk(ctx, ep, cli, migration.NewToken())
			if err != nil {
				t.Fatal(err)
			}
			if err := s.wantRejected(t, "a wrong token"); err == nil || !strings.Contains(err.Error(), "wrong token") {
				t.Fatalf("a wrong token: %v", err)
			}
			c.Close()
			c = raw()
			c.Write([]byte(migration.DiskMagic))
			c.Close()
			if err := s.wantRejected(t, "half a preface"); !errors.Is(err, migration.ErrDiskConn) {
				t.Fatalf("half a preface: %v", err)
			}
			good, err := migration.DialDisk(ctx, ep, cli, token)
			if err != nil {
				t.Fatal(err)
			}
			defer good.Close()
			good.Write([]byte("nbd follows"))
			var got net.Conn
			select {
			case got = <-s.conns:
			case err := <-s.rejected:
				t.Fatalf("the good connection was rejected: %v", err)
			}
			defer got.Close()
			b := make([]byte, 11)
			got.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(got, b); err != nil || string(b) != "nbd follows" {
				t.Fatalf("the served connection reads %q, %v", b, err)
			}
		})
	}
}

// Peers that connect and say nothing are bounded: beyond a few waiting
// for their preface the listener refuses at once, and Close ends the
// waits without waiting for their timeout.
func TestListenerBoundsSilentPeers(t *testing.T) {
	dl, ep := listen(t, nil, nil)
	s := serveDisks(t, dl, migration.NewToken())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 12 {
		c, err := migration.Dial(ctx, ep)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// The 4 beyond the limit are refused at once.
	for range 4 {
		if err := s.wantRejected(t, "a silent peer beyond the limit"); err == nil || !strings.Contains(err.Error(), "being checked already") {
			t.Fatalf("a silent peer beyond the limit: %v", err)
		}
	}
	start := time.Now()
	dl.Close()
	if d := time.Since(start); d >= migration.DiskPrefaceTimeout {
		t.Fatalf("Close took %v: it waited for the silent peers' timeout", d)
	}
	for range 8 {
		if err := s.wantRejected(t, "a silent peer at Close"); err == nil {
			t.Fatal("nil rejection")
		}
	}
}

// A Listener serves once, and not after Close.
func TestListenerServeOnce(t *testing.T) {
	dl, _ := listen(t, nil, nil)
	if err := dl.Serve(migration.NewToken(), func(c net.Conn) { c.Close() }); err != nil {
		t.Fatal(err)
	}
	if err := dl.Serve(migration.NewToken(), func(c net.Conn) { c.Close() }); err == nil {
		t.Fatal("a second Serve succeeded")
	}
	dl.Close()
	dl2, _ := listen(t, nil, nil)
	dl2.Close()
	if err := dl2.Serve(migration.NewToken(), func(c net.Conn) { c.Close() }); err == nil {
		t.Fatal("Serve after Close succeeded")
	}
}
