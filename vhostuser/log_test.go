package vhostuser

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/queuetest"
)

// The back-end's marks (backendLog, mapped from the front-end's memfd as
// a back-end maps it) come out of the front-end's Take exactly, for any
// range and alignment, and Take clears only what it returns.
func TestDirtyLogTakeMatchesMarks(t *testing.T) {
	const end = 1 << 30 // 256 Ki pages
	fl, err := NewDirtyLog(end)
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()
	if fl.Covers() < end {
		t.Fatalf("the log covers %#x, asked %#x", fl.Covers(), end)
	}
	bl, err := mapBackendLog(fl.Log(), fl.FD())
	if err != nil {
		t.Fatal(err)
	}
	defer bl.close()
	rng := rand.New(rand.NewPCG(1, 2))
	model := map[uint64]bool{}
	for range 2000 {
		gpa := rng.Uint64N(end - 1<<20)
		n := 1 + rng.Uint64N(3*LogPageSize)
		bl.mark(gpa, n)
		for p := gpa / LogPageSize; p <= (gpa+n-1)/LogPageSize; p++ {
			model[p] = true
		}
	}
	if got := fl.Count(); got != len(model) {
		t.Fatalf("%d pages marked, the model has %d", got, len(model))
	}
	// Take regions of every alignment, in pieces, and check each against
	// the model; what is left after each Take is the model's rest.
	for fl.Count() > 0 {
		first := rng.Uint64N(end / LogPageSize)
		pages := 1 + rng.Uint64N(min(end/LogPageSize-first, 5000))
		dst := make([]uint64, (pages+63)/64)
		dst[0] = 1 // Take ORs: a bit already set stays
		if err := fl.Take(first*LogPageSize, pages, dst); err != nil {
			t.Fatal(err)
		}
		for i := range pages {
			got := dst[i/64]&(1<<(i%64)) != 0
			want := model[first+i] || i == 0
			if got != want {
				t.Fatalf("page %#x (bit %d of a take from %#x): %v, want %v", first+i, i, first, got, want)
			}
			delete(model, first+i)
		}
		if pages%64 != 0 && dst[len(dst)-1]>>(pages%64) != 0 {
			t.Fatalf("a take of %d pages set bits past them", pages)
		}
		if got := fl.Count(); got != len(model) {
			t.Fatalf("after a take of %#x+%#x: %d pages marked, the model has %d", first, pages, got, len(model))
		}
	}
	if err := fl.Take(end, fl.Covers()/LogPageSize, make([]uint64, 1<<20)); err == nil {
		t.Fatal("a take past the log's end succeeded")
	}
	if err := fl.Take(1, 1, make([]uint64, 1)); err == nil {
		t.Fatal("an unaligned take succeeded")
	}
	// Marks past the log are dropped and counted, never written.
	bl.mark(bl.pages*LogPageSize, 1)
	bl.mark(^uint64(0)-10, 100)
	if bl.beyond.Load() != 2 || fl.Count() != 0 {
		t.Fatalf("marks past the log: %d counted, %d pages marked", bl.beyond.Load(), fl.Count())
	}
}

// loggedQueue is one queue of a front-end driven from the test, whose
// back-end logs into log.
type loggedQueue struct {
	*qsdBlk
	mem *memory.Memory
	log *DirtyLog
}

// The guest RAM layout of the logging tests: 2 MiB at 0, queue 0 at
// 0x1000, whose rings (64 entries) fill page 1 and whose data area starts
// at page 2; requests place their buffers on pages of their own (place).
const (
	logRAM       = 2 << 20
	logQueueBase = 0x1000
	logQueueSize = 64
)

// startLoggedQueue sets queue 0 up, running, without logging: the
// migration turns logging on later, on running rings (enableLog).
func startLoggedQueue(t *testing.T, f *Frontend) *loggedQueue {
	t.Helper()
	mem, err := memory.NewWithOptions([]memory.Layout{{GPA: 0, Size: logRAM}}, memory.Options{Backing: memory.Memfd})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	features, proto, err := f.Negotiate(virtioFVersion1|FLogAll, ProtocolMQ|ProtocolReplyAck|ProtocolConfig|ProtocolLogShmfd)
	if err != nil {
		t.Fatal(err)
	}
	if features&FLogAll == 0 || proto&ProtocolLogShmfd == 0 {
		t.Fatalf("the back-end does not offer LOG_ALL and LOG_SHMFD (features %#x, protocol %#x)", features, proto)
	}
	// Logging is off until the migration: acknowledge without LOG_ALL.
	if err := f.SetFeatures(features &^ FLogAll); err != nil {
		t.Fatal(err)
	}
	if err := f.SetMemTable(mem); err != nil {
		t.Fatal(err)
	}
	drv, err := queuetest.New(mem, logQueueBase, logQueueSize, 1<<20, false)
	if err != nil {
		t.Fatal(err)
	}
	kickFD, callFD := rawEventfd(t), rawEventfd(t)
	q := &qsdBlk{f: f, drv: drv, kickFD: kickFD, callFD: callFD}
	t.Cleanup(func() { closeQueueFDs(q) })
	for _, step := range []func() error{
		func() error { return f.SetVringNum(0, logQueueSize) },
		func() error { return f.SetVringBase(0, 0) },
		func() error { return f.SetVringAddrGPA(0, drv.Config()) },
		func() error { return f.SetVringCall(0, callFD) },
		func() error { return f.SetVringKick(0, kickFD) },
		func() error { return f.SetVringEnable(0, true) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	log, err := NewDirtyLog(logRAM)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { log.Close() })
	return &loggedQueue{qsdBlk: q, mem: mem, log: log}
}

// setLogging turns logging on or off as a migration does, on the running
// ring: the log (once), LOG_ALL, the used ring's flag, then a round trip
// so that it is in effect.
func (q *loggedQueue) setLogging(t *testing.T, on bool, features uint64) {
	t.Helper()
	if on {
		if err := q.f.SetLogBase(q.log.Log(), q.log.FD()); err != nil {
			t.Fatal(err)
		}
		features |= FLogAll
	}
	if err := q.f.SetFeatures(features); err != nil {
		t.Fatal(err)
	}
	if err := q.f.SetVringAddrLog(0, q.drv.Config(), on); err != nil {
		t.Fatal(err)
	}
	if err := q.f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// place moves the driver's next buffers so that the one after skip bytes
// of the request starts at page p.
func (q *loggedQueue) place(t *testing.T, p, skip uint64) {
	t.Helper()
	a, err := q.drv.Alloc(0)
	if err != nil {
		t.Fatal(err)
	}
	want := p*LogPageSize - skip
	if want < a {
		t.Fatalf("page %#x is behind the driver's next buffer at %#x", p, a)
	}
	if _, err := q.drv.Alloc(want - a); err != nil {
		t.Fatal(err)
	}
}

// read reads sector sec into a 4 KiB buffer on pages p and p+1 (the
// status byte follows it on p+1); the header is on page p-1, which the
// back-end only reads.
func (q *loggedQueue) read(t *testing.T, p, sec uint64) []byte {
	t.Helper()
	q.place(t, p, 16)
	u := q.do(t, [][]byte{blkHeader(blkTIn, sec)}, []uint32{LogPageSize, 1})
	if len(u.Data) != LogPageSize+1 || u.Data[LogPageSize] != 0 {
		t.Fatalf("read of sector %d: used len %d", sec, u.Len)
	}
	return u.Data[:LogPageSize]
}

// writeSector writes one sector from page p (header and data), its
// status byte at the start of page p+1.
func (q *loggedQueue) writeSector(t *testing.T, p, sec uint64, data []byte) {
	t.Helper()
	q.place(t, p+1, 16+sector)
	u := q.do(t, [][]byte{blkHeader(blkTOut, sec), data}, []uint32{1})
	if len(u.Data) != 1 || u.Data[0] != 0 {
		t.Fatalf("write of sector %d: used len %d", sec, u.Len)
	}
}

// take takes the log of guest RAM and returns the marked pages.
func (q *loggedQueue) take(t *testing.T) []uint64 {
	t.Helper()
	dst := make([]uint64, logRAM/LogPageSize/64)
	if err := q.log.Take(0, logRAM/LogPageSize, dst); err != nil {
		t.Fatal(err)
	}
	return slices.Collect(memory.DirtyPages(dst))
}

// checkLogging runs the migration's view of one back-end: no mark while
// logging is off; with it on, exactly the pages the back-end wrote (the
// buffers of reads, the status bytes, the used ring), not those it only
// read (headers, the data of writes; the descriptor table and the driver
// area share page 1 with the used ring); a take clears what it returns,
// and the
// pages written since come out of the next; with logging off again,
// nothing more is marked.
func checkLogging(t *testing.T, q *loggedQueue, features uint64) {
	const ringPage = logQueueBase / LogPageSize
	data := make([]byte, sector)
	for i := range data {
		data[i] = byte(i * 3)
	}
	q.read(t, 0x10, 1)
	if got := q.take(t); len(got) != 0 {
		t.Fatalf("pages %#x marked with logging off", got)
	}
	q.setLogging(t, true, features)
	q.read(t, 0x20, 2)
	q.writeSector(t, 0x40, 9, data)
	q.read(t, 0x60, 9)
	want := []uint64{ringPage, 0x20, 0x21, 0x41, 0x60, 0x61}
	if got := q.take(t); !slices.Equal(got, want) {
		t.Fatalf("marked pages %#x, want %#x (the used ring, read buffers, status bytes)", got, want)
	}
	if got := q.take(t); len(got) != 0 {
		t.Fatalf("pages %#x still marked after a take", got)
	}
	if got := q.read(t, 0x80, 9); string(got[:sector]) != string(data) {
		t.Fatal("the sector written while logging reads back different")
	}
	if got, want := q.take(t), []uint64{ringPage, 0x80, 0x81}; !slices.Equal(got, want) {
		t.Fatalf("marked pages %#x after a take and a read, want %#x", got, want)
	}
	q.setLogging(t, false, features)
	q.read(t, 0xa0, 3)
	if got := q.take(t); len(got) != 0 {
		t.Fatalf("pages %#x marked after logging was turned off", got)
	}
}

// TestLogVioBackend: vio's own back-end logs what it writes, as above.
func TestLogVioBackend(t *testing.T) {
	var ref refusals
	disk := blocktest.NewMem(1 << 20)
	f, _ := serveOnPair(t, blkBackend(disk, blk.Config{}, &ref))
	q := startLoggedQueue(t, f)
	checkLogging(t, q, virtioFVersion1|FProtocolFeatures)
	if len(ref.errs) > 0 {
		t.Fatalf("refusals: %v", ref.errs)
	}
}

// TestLogQSD: qemu-storage-daemon's back-end (libvhost-user) logs what
// it writes, and vio's front-end takes its SET_LOG_BASE answer.
func TestLogQSD(t *testing.T) {
	img := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	f := startQSD(t, img)
	q := startLoggedQueue(t, f)
	checkLogging(t, q, virtioFVersion1|FProtocolFeatures)
}

// A log the back-end cannot use is refused with a status the front-end
// reports as ErrFailed, and the connection goes on; a ring logged at an
// address other than its used ring's, or logging without LOG_SHMFD, is
// refused too.
func TestBackendRefusesBadLogs(t *testing.T) {
	var ref refusals
	f, _ := serveOnPair(t, blkBackend(blocktest.NewMem(1<<20), blk.Config{}, &ref))
	q := startLoggedQueue(t, f)
	memfd := func(size int64, seals int) int {
		fd, err := unix.MemfdCreate("log", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
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
	plain, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if err := plain.Truncate(8192); err != nil {
		t.Fatal(err)
	}
	pipe := make([]int, 2)
	if err := unix.Pipe2(pipe, unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pipe[0])
	defer unix.Close(pipe[1])
	for _, c := range []struct {
		name string
		log  Log
		fd   int
	}{
		{"a file shorter than the log", Log{MmapSize: 8192}, memfd(4096, unix.F_SEAL_SHRINK)},
		{"an offset past the file", Log{MmapSize: 4096, MmapOffset: 8192}, memfd(8192, unix.F_SEAL_SHRINK)},
		{"an unaligned offset", Log{MmapSize: 4096, MmapOffset: 100}, memfd(8192, unix.F_SEAL_SHRINK)},
		{"a memfd that may shrink", Log{MmapSize: 4096}, memfd(8192, unix.F_SEAL_SEAL)},
		{"a regular file", Log{MmapSize: 4096}, int(plain.Fd())},
		{"a pipe", Log{MmapSize: 4096}, pipe[0]},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := f.SetLogBase(c.log, c.fd); !errors.Is(err, ErrFailed) {
				t.Fatalf("SET_LOG_BASE: %v", err)
			}
		})
	}
	if !ref.has(SetLogBase, ErrBadLog) {
		t.Fatalf("refusals: %v", ref.errs)
	}
	// A ring that logs its used ring elsewhere.
	cfg := q.drv.Config()
	ua, err := f.userAddr(cfg.UsedRing, virtio.UsedRingSize(cfg.Size))
	if err != nil {
		t.Fatal(err)
	}
	da, _ := f.userAddr(cfg.DescTable, virtio.DescTableSize(cfg.Size))
	aa, _ := f.userAddr(cfg.AvailRing, virtio.AvailRingSize(cfg.Size))
	err = f.SetVringAddr(VringAddr{Flags: VringFlagLog, Desc: da, Avail: aa, Used: ua, Log: cfg.UsedRing + 4096})
	if !errors.Is(err, ErrFailed) || !ref.has(SetVringAddr, ErrBadRing) {
		t.Fatalf("a used ring logged elsewhere: %v (refusals %v)", err, ref.errs)
	}
	// Moving a running ring is still refused.
	err = f.SetVringAddr(VringAddr{Desc: da, Avail: aa, Used: ua + 64})
	if !errors.Is(err, ErrFailed) || !ref.has(SetVringAddr, ErrRingRunning) {
		t.Fatalf("a running ring moved: %v", err)
	}
	// And the connection still serves: logging works.
	checkLogging(t, q, virtioFVersion1|FProtocolFeatures)
}

// Without LOG_SHMFD negotiated, SET_LOG_BASE and used-ring logging are
// refused by the front-end before anything is sent, and by the back-end
// when sent anyway.
func TestLogNeedsLogShmfd(t *testing.T) {
	var ref refusals
	f, _ := serveOnPair(t, blkBackend(blocktest.NewMem(1<<20), blk.Config{}, &ref))
	mem := guestRAM(t)
	negotiate(t, f, mem, virtioFVersion1|FLogAll)
	log, err := NewDirtyLog(2 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	if err := f.SetLogBase(log.Log(), log.FD()); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("SET_LOG_BASE without LOG_SHMFD: %v", err)
	}
	drv, err := queuetest.New(mem, 0x1000, 64, 4096, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.SetVringAddrLog(0, drv.Config(), true); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("used-ring logging without LOG_SHMFD: %v", err)
	}
	// Sent anyway (REPLY_ACK is on): refused, the connection goes on.
	if _, err := f.call(SetLogBase, log.Log().Marshal(), []int{log.FD()}, false); !errors.Is(err, ErrFailed) {
		t.Fatalf("SET_LOG_BASE sent without LOG_SHMFD: %v", err)
	}
	if !ref.has(SetLogBase, ErrNotNegotiated) {
		t.Fatalf("refusals: %v", ref.errs)
	}
	if _, err := f.GetQueueNum(); err != nil {
		t.Fatal(err)
	}
}

// The front-end takes the three shapes of SET_LOG_BASE answer that
// back-ends send, and nothing else.
func TestFrontendLogBaseReplies(t *testing.T) {
	l := Log{MmapSize: 8192}
	for _, c := range []struct {
		reply []byte
		want  error
	}{
		{U64(0), nil},
		{U64(8192), nil},
		{l.Marshal(), nil},
		{U64(1), ErrFailed},
		{U64(4096), ErrFailed},
		{Log{MmapSize: 4096}.Marshal(), ErrMalformed},
		{Log{MmapSize: 8192, MmapOffset: 4096}.Marshal(), ErrMalformed},
		{nil, ErrMalformed},
		{make([]byte, 12), ErrMalformed},
	} {
		t.Run(fmt.Sprintf("%x", c.reply), func(t *testing.T) {
			if err := CheckLogBaseReply(c.reply, l); !errors.Is(err, c.want) || (c.want == nil) != (err == nil) {
				t.Fatalf("%v, want %v", err, c.want)
			}
			// And through a back-end that sends it.
			f := fakeBackend(t, 5e9, func(m *Message) (Header, []byte, bool) {
				if m.Request == SetLogBase {
					if m.NeedReply() {
						t.Error("SET_LOG_BASE sent with NEED_REPLY")
					}
					return Header{Request: SetLogBase, Flags: FlagReply}, c.reply, true
				}
				if m.Request == GetProtocolFeatures {
					return Header{Request: m.Request, Flags: FlagReply}, U64(ProtocolLogShmfd | ProtocolReplyAck), true
				}
				return honest(m)
			})
			if _, _, err := f.Negotiate(1<<32, ProtocolLogShmfd|ProtocolReplyAck); err != nil {
				t.Fatal(err)
			}
			log, err := NewDirtyLog(1 << 20)
			if err != nil {
				t.Fatal(err)
			}
			defer log.Close()
			err = f.SetLogBase(l, log.FD())
			if !errors.Is(err, c.want) || (c.want == nil) != (err == nil) {
				t.Fatalf("SetLogBase: %v, want %v", err, c.want)
			}
		})
	}
}
