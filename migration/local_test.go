package migration_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/migration"
	"github.com/viovmm/vio/migration/migrationtest"
)

func sharedSource(t *testing.T, sizes ...int) *migrationtest.SharedSource {
	t.Helper()
	s, err := migrationtest.NewSharedSource(sizes...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// migrateLocal runs a local Send against Receive over a UNIX socket;
// finish is the destination's last answer (nil: it runs the VM).
func migrateLocal(t *testing.T, src migration.Source, tgt migration.Target, finish error) result {
	t.Helper()
	return sendAndReceive(t, src, tgt, migration.Options{Local: true}, finish)
}

// A local migration passes the memfd: the destination maps the source's
// very pages (a write on one side shows on the other), no page crosses
// the socket, the guest's writes up to the pause are there without any
// dirty logging, and the source was paused once and never resumed.
func TestLocalMigration(t *testing.T) {
	sizes := []int{64 * page, 130 * page}
	src := sharedSource(t, sizes...)
	src.Write(0, 5*page+7, []byte("before the migration"))
	src.BeforePause = func(s *migrationtest.Source) {
		s.Write(1, 129*page, []byte("the guest's last write before the pause"))
	}
	tgt := &migrationtest.Target{Sizes: sizes}
	r := migrateLocal(t, src, tgt, nil)
	if r.sendErr != nil || r.recvErr != nil {
		t.Fatalf("send: %v; receive: %v", r.sendErr, r.recvErr)
	}
	if err := src.Err(); err != nil {
		t.Fatal(err)
	}
	if got := src.Calls(); !slices.Equal(got, []string{"pause", "state"}) {
		t.Errorf("the source's calls: %v, want pause and state only (no dirty log, no resume)", got)
	}
	in := tgt.Built[0]
	if !in.Shared || !in.Restored || in.Blob.Data != "device state" {
		t.Fatalf("destination: shared %v, restored %v, state %q", in.Shared, in.Restored, in.Blob.Data)
	}
	checkSame(t, src.Snapshot(), in)
	in.Regions[0].Data[3*page] = 0x5a
	if src.Regions[0].Data[3*page] != 0x5a {
		t.Error("a write at the destination does not show at the source: RAM was copied, not shared")
	}
	if r.stats.DataPages != 0 || r.stats.ZeroPages != 0 || r.stats.Bytes > 64<<10 || r.stats.Reason != "local" {
		t.Errorf("stats %+v: a local migration sends no pages", r.stats)
	}
	if r.stats.Downtime <= 0 || r.stats.Total < r.stats.Downtime {
		t.Errorf("stats %+v", r.stats)
	}
	// The downtime's parts are measured in sequence within it.
	if parts := r.stats.PauseTime + r.stats.SendTime + r.stats.ResumeTime; r.stats.ResumeTime <= 0 || r.stats.SendTime <= 0 || parts > r.stats.Downtime {
		t.Errorf("downtime %v, its parts pause %v + send %v + resume %v", r.stats.Downtime, r.stats.PauseTime, r.stats.SendTime, r.stats.ResumeTime)
	}
	t.Logf("sent %d bytes; downtime %v of %v", r.stats.Bytes, r.stats.Downtime, r.stats.Total)
}

// What cannot migrate locally is refused with one sentence, before the
// source is touched.
func TestLocalRefused(t *testing.T) {
	t.Run("not shared", func(t *testing.T) {
		src := sharedSource(t, 8*page)
		src.SharedErr = errors.New("guest RAM is not shared: start the VM with --memory shared=on")
		r := migrateLocal(t, src, &migrationtest.Target{Sizes: []int{8 * page}}, nil)
		if r.sendErr == nil || !strings.Contains(r.sendErr.Error(), "shared=on") {
			t.Fatalf("send: %v", r.sendErr)
		}
		if len(src.Calls()) != 0 {
			t.Errorf("calls %v", src.Calls())
		}
	})
	t.Run("not a local source", func(t *testing.T) {
		src := migrationtest.NewSource(8 * page)
		r := migrateLocal(t, src, &migrationtest.Target{Sizes: []int{8 * page}}, nil)
		if !errors.Is(r.sendErr, migration.ErrLocal) {
			t.Fatalf("send: %v", r.sendErr)
		}
	})
	t.Run("not a UNIX socket", func(t *testing.T) {
		src := sharedSource(t, 8*page)
		_, err := migration.Send(context.Background(), &rw{Reader: bytes.NewReader(nil)}, src, migration.Options{Local: true})
		if !errors.Is(err, migration.ErrLocal) || !strings.Contains(err.Error(), "unix:") {
			t.Fatalf("send: %v", err)
		}
		if len(src.Calls()) != 0 {
			t.Errorf("calls %v", src.Calls())
		}
	})
	t.Run("receiver cannot", func(t *testing.T) {
		src := sharedSource(t, 8*page)
		r := migrateLocal(t, src, plainTarget{&migrationtest.Target{Sizes: []int{8 * page}}}, nil)
		if !errors.Is(r.sendErr, migration.ErrDestination) || !strings.Contains(r.sendErr.Error(), "cannot receive a local migration") {
			t.Fatalf("send: %v", r.sendErr)
		}
		if len(src.Calls()) != 0 {
			t.Errorf("calls %v", src.Calls())
		}
	})
}

// plainTarget hides Target's BuildShared: a receiver without local
// migration.
type plainTarget struct{ t *migrationtest.Target }

func (p plainTarget) Build(c []byte) (migration.Incoming, error) { return p.t.Build(c) }

// A destination failing before it runs the VM: it unmaps the shared RAM,
// and the source resumes (if it had paused) with the reason.
func TestLocalDestinationFails(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tgt    *migrationtest.Target
		finish error
		paused bool
		want   string
	}{
		{"build", &migrationtest.Target{Sizes: []int{8 * page}, BuildErr: errors.New("no such disk")}, nil, false, "no such disk"},
		{"layout", &migrationtest.Target{Sizes: []int{16 * page}}, nil, false, "is 32768 bytes, this VM's 65536"},
		{"restore", &migrationtest.Target{Sizes: []int{8 * page}, RestoreErr: errors.New("bad device state")}, nil, true, "bad device state"},
		{"run", &migrationtest.Target{Sizes: []int{8 * page}}, errors.New("KVM said no"), true, "KVM said no"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := sharedSource(t, 8*page)
			r := migrateLocal(t, src, tc.tgt, tc.finish)
			if !errors.Is(r.sendErr, migration.ErrDestination) || !strings.Contains(r.sendErr.Error(), tc.want) {
				t.Fatalf("send: %v, want the destination's %q", r.sendErr, tc.want)
			}
			if err := src.Err(); err != nil {
				t.Fatal(err)
			}
			if src.Paused() {
				t.Error("the source stays paused")
			}
			if got := slices.Contains(src.Calls(), "resume"); got != tc.paused {
				t.Errorf("calls %v", src.Calls())
			}
			for _, in := range tc.tgt.Built {
				if !in.Discarded || in.Regions != nil {
					t.Error("the destination kept its VM or its mapping of the source's RAM")
				}
			}
		})
	}
}

// A destination that restores and goes silent may run the guest on the
// shared RAM: the source stays paused.
func TestLocalOutcomeUnknown(t *testing.T) {
	src := sharedSource(t, 8*page)
	sc, dc := pair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() {
		if _, err := migration.Receive(ctx, dc, &migrationtest.Target{Sizes: []int{8 * page}}, migration.ReceiveOptions{}); err == nil {
			dc.Close()
		}
	}()
	_, err := migration.Send(ctx, sc, src, migration.Options{Local: true})
	if !errors.Is(err, migration.ErrOutcomeUnknown) {
		t.Fatalf("send: %v", err)
	}
	if !src.Paused() || slices.Contains(src.Calls(), "resume") {
		t.Errorf("calls %v: the source must stay paused", src.Calls())
	}
}

// hostileLocal plays a source by hand: header, config and layout (two
// regions, 8 and 4 pages, as the test Target), then, once asked, the
// memory record with fds attached.
func hostileLocal(t *testing.T, offsets []uint64, fds []int, ahead bool) (*migrationtest.Target, error, []byte) {
	t.Helper()
	sc, dc := pair(t)
	tgt := &migrationtest.Target{Sizes: []int{8 * page, 4 * page}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := migration.Receive(ctx, dc, tgt, migration.ReceiveOptions{})
		dc.Close() // as vmm does: the source reads the failure to its end
		errc <- err
	}()
	s := new(stream)
	s.WriteString(migration.Magic)
	s.u32(migration.Version).u32(1).config(`{}`).layout()
	mem := new(stream).record(8, uint32(8*len(offsets)))
	for _, o := range offsets {
		mem.u64(o)
	}
	u := sc.(*net.UnixConn)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if ahead {
		// All at once, without waiting to be asked.
		u.WriteMsgUnix(append(s.Bytes(), mem.Bytes()...), oob, nil)
	} else {
		u.Write(s.Bytes())
		var reply [8]byte
		if _, err := u.Read(reply[:]); err != nil {
			t.Fatalf("no reply to the layout: %v", err)
		}
		u.WriteMsgUnix(mem.Bytes(), oob, nil)
	}
	err := <-errc
	var out bytes.Buffer
	sc.SetReadDeadline(time.Now().Add(5 * time.Second))
	out.ReadFrom(sc)
	return tgt, err, out.Bytes()
}

// memfd makes a memfd of size bytes with seals.
func memfd(t *testing.T, name string, size int64, seals int) int {
	t.Helper()
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Ftruncate(fd, size); err != nil {
		t.Fatal(err)
	}
	if seals != 0 {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
			t.Fatal(err)
		}
	}
	return fd
}

// openCopies counts this process's descriptors open on the file named
// name (in /proc/self/fd's links).
func openCopies(t *testing.T, name string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && strings.HasPrefix(l, "/memfd:"+name+" ") {
			n++
		}
	}
	return n
}

// A hostile source's memory record: each bad descriptor or offset is one
// ErrProtocol sentence, sent back too; nothing is built, and every
// descriptor that arrived is closed.
func TestLocalHostile(t *testing.T) {
	const size = 12 * page
	regular, err := os.CreateTemp(t.TempDir(), "ram")
	if err != nil {
		t.Fatal(err)
	}
	regular.Truncate(size)
	defer regular.Close()
	good := func(name string) int { return memfd(t, name, size, migrationtest.Seals) }
	for i, tc := range []struct {
		name    string
		offsets []uint64
		fds     func(name string) []int
		ahead   bool
		want    string
	}{
		{"no descriptor", []uint64{0, 8 * page}, func(string) []int { return nil }, false, "0 descriptors"},
		{"two descriptors", []uint64{0, 8 * page}, func(n string) []int { return []int{good(n), good(n)} }, false, "2 descriptors"},
		{"regular file", []uint64{0, 8 * page}, func(string) []int { return []int{int(regular.Fd())} }, false, "not a memfd"},
		{"stdin", []uint64{0, 8 * page}, func(string) []int { return []int{0} }, false, "not a memfd"},
		{"no seals", []uint64{0, 8 * page}, func(n string) []int { return []int{memfd(t, n, size, 0)} }, false, "seals"},
		{"can shrink", []uint64{0, 8 * page}, func(n string) []int { return []int{memfd(t, n, size, unix.F_SEAL_GROW|unix.F_SEAL_SEAL)} }, false, "seals"},
		{"write-sealed", []uint64{0, 8 * page}, func(n string) []int {
			return []int{memfd(t, n, size, migrationtest.Seals|unix.F_SEAL_WRITE)}
		}, false, "sealed against writes"},
		{"too long", []uint64{0, 8 * page}, func(n string) []int { return []int{memfd(t, n, size+page, migrationtest.Seals)} }, false, "memfd is 53248 bytes, but the layout places 49152"},
		{"too short", []uint64{0, 8 * page}, func(n string) []int { return []int{memfd(t, n, size-page, migrationtest.Seals)} }, false, "is 45056 bytes"},
		{"unaligned", []uint64{1, 8 * page}, func(n string) []int { return []int{good(n)} }, false, "not page aligned"},
		{"overlap", []uint64{0, 4 * page}, func(n string) []int { return []int{good(n)} }, false, "overlap"},
		{"overflow", []uint64{0, 1<<64 - page}, func(n string) []int { return []int{good(n)} }, false, "overflows"},
		{"offset count", []uint64{0}, func(n string) []int { return []int{good(n)} }, false, "memory record of 8 bytes for 2 RAM regions"},
		{"sent ahead", []uint64{0, 8 * page}, func(n string) []int { return []int{good(n)} }, true, "before it was asked"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := fmt.Sprintf("hostile-%d", i)
			fds := tc.fds(name)
			held := openCopies(t, name)
			tgt, err, reply := hostileLocal(t, tc.offsets, fds, tc.ahead)
			if !errors.Is(err, migration.ErrProtocol) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Receive: %v, want ErrProtocol saying %q", err, tc.want)
			}
			if len(tgt.Built) != 0 {
				t.Error("a VM was built")
			}
			if got := openCopies(t, name); got != held {
				t.Errorf("%d descriptors of the passed memfd open after the refusal, the test holds %d", got, held)
			}
			// The "send the memory" reply, then the failure.
			if len(reply) >= 8 && binary.LittleEndian.Uint32(reply) == 0 {
				reply = reply[8:]
			}
			if len(reply) < 8 || binary.LittleEndian.Uint32(reply) != 1 || !strings.Contains(string(reply[8:]), tc.want) {
				t.Errorf("reply %q", reply)
			}
		})
	}
}

// Local and pre-copy records do not mix.
func TestLocalStreamOrder(t *testing.T) {
	for _, tc := range []struct {
		name string
		rest *stream
		want string
	}{
		{"data", new(stream).data(0, 0, 1), "data record in a local migration"},
		{"iteration", new(stream).iteration(1, 0), "iteration record in a local migration"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc, dc := pair(t)
			tgt := &migrationtest.Target{Sizes: []int{8 * page, 4 * page}}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			errc := make(chan error, 1)
			go func() {
				_, err := migration.Receive(ctx, dc, tgt, migration.ReceiveOptions{})
				errc <- err
			}()
			s := new(stream)
			s.WriteString(migration.Magic)
			s.u32(migration.Version).u32(1).config(`{}`).layout()
			u := sc.(*net.UnixConn)
			u.Write(s.Bytes())
			var reply [8]byte
			u.Read(reply[:])
			fd := memfd(t, "order", 12*page, migrationtest.Seals)
			u.WriteMsgUnix(new(stream).record(8, 16).u64(0).u64(8*page).Bytes(), unix.UnixRights(fd), nil)
			u.Read(reply[:]) // ready
			u.Write(tc.rest.Bytes())
			err := <-errc
			if !errors.Is(err, migration.ErrProtocol) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Receive: %v", err)
			}
			if len(tgt.Built) != 1 || !tgt.Built[0].Discarded || tgt.Built[0].Regions != nil {
				t.Error("the VM built on the shared RAM was not discarded and unmapped")
			}
		})
	}
}
