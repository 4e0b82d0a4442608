package migration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"time"
)

// Source is the running VM that Send migrates.
type Source interface {
	// Config returns the VM config (JSON, as vm.create takes it) that
	// the destination builds the same machine from.
	Config() ([]byte, error)
	// RAM returns guest RAM. Send reads it in place while the guest runs;
	// the regions do not change during a migration.
	RAM() []Region
	// StartDirtyLog starts recording the pages written to RAM, by vCPUs
	// and by the VMM's devices alike. A write that completes before it
	// returns is in RAM as Send reads it next; one after is recorded.
	StartDirtyLog() error
	// Dirty returns the pages of region i written since StartDirtyLog or
	// the previous Dirty(i), and clears the record: a bitmap with bit
	// p%64 of word p/64 for page p, of (pages+63)/64 words.
	Dirty(i int) ([]uint64, error)
	// StopDirtyLog stops recording; Send calls it once after a
	// successful StartDirtyLog, whatever the outcome.
	StopDirtyLog()
	// Pause stops everything that writes guest RAM or device state
	// (vCPUs parked, devices with nothing in flight) and freezes the
	// guest clock; on error nothing is paused. Resume undoes it: Send
	// calls it when the migration failed and the destination cannot be
	// running the VM.
	Pause() error
	Resume() error
	// State returns the paused VM's device and vCPU state, an encoded
	// state container (docs/state-format.md).
	State() ([]byte, error)
}

// TimeoutStrategy is what Send does when Options.Timeout passes before
// pre-copy converged (Cloud Hypervisor's timeout_strategy).
type TimeoutStrategy int

const (
	// Cancel fails the migration; the VM keeps running on the source.
	Cancel TimeoutStrategy = iota
	// Ignore stops the VM and copies what is left, however long it takes.
	Ignore
)

// Options tune Send. Zero values take the defaults.
type Options struct {
	// Downtime is the pause the migration aims for (default 300 ms):
	// pre-copy iterates until the pages left can be sent in that time
	// at the bandwidth the last iteration measured.
	Downtime time.Duration
	// MaxIterations bounds pre-copy (default 20, counting the first full
	// copy); then the VM is stopped and the rest copied, whatever the
	// downtime. A guest that dirties memory faster than the link moves
	// it never converges otherwise.
	MaxIterations int
	// Timeout bounds the pre-copy phase (default 1 hour); OnTimeout
	// says what happens then.
	Timeout   time.Duration
	OnTimeout TimeoutStrategy
	// Progress, if set, hears of each iteration as it ends.
	Progress func(Progress)
	// Local migrates on the same host: the Source must be a LocalSource
	// and the connection a UNIX socket. Guest RAM's memfd is passed, not
	// copied, so there is no pre-copy: Send pauses the source as soon as
	// the destination has mapped RAM, and sends only the device state.
	// Downtime, MaxIterations and Timeout do not apply.
	Local bool
	// Disks, if set, copies disks that are not on shared storage
	// (disks.go): they are in sync before RAM is copied, and the time
	// that takes counts against Timeout. Not with Local.
	Disks DiskCopier
	// DiskProgress, if set, hears of the disks' copy once a second while
	// Send waits for it, and once when it is in sync.
	DiskProgress func(copied, total uint64)
}

// Defaults.
const (
	DefaultDowntime      = 300 * time.Millisecond
	DefaultMaxIterations = 20
	DefaultTimeout       = time.Hour
)

func (o Options) withDefaults() Options {
	if o.Downtime <= 0 {
		o.Downtime = DefaultDowntime
	}
	if o.MaxIterations <= 0 {
		o.MaxIterations = DefaultMaxIterations
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	return o
}

// Progress is one iteration's account.
type Progress struct {
	Iteration  int     // 1 is the full copy; the last is the stop-and-copy
	Final      bool    // this was the stop-and-copy, with the VM paused
	DirtyPages uint64  // pages this iteration sent (data and zero)
	DataPages  uint64  // pages sent with their data, in total so far
	ZeroPages  uint64  // pages sent as zero, in total so far
	Bytes      uint64  // bytes sent in total so far
	Bandwidth  float64 // bytes/s of this iteration
	Remaining  uint64  // pages dirtied while it ran
}

// Stats is the account of a whole migration.
type Stats struct {
	Iterations int // including the stop-and-copy
	Bytes      uint64
	DataPages  uint64
	ZeroPages  uint64
	Total      time.Duration // from the start to the destination's last reply
	Downtime   time.Duration // from the pause to the destination's last reply
	Reason     string        // why pre-copy stopped: converged, iteration cap, timeout
	// The downtime's parts: pausing the VM (vCPUs, devices, the disks'
	// release), sending the last pages and the state, and the
	// destination's restore and resume until its "running".
	PauseTime, SendTime, ResumeTime time.Duration
	// DiskBytes is what the disks' copy moved before they were in sync
	// (their guest writes since go to both sides and are not counted),
	// and DiskTime how long that took; zero without a disk copy.
	DiskBytes uint64
	DiskTime  time.Duration
}

// ErrOutcomeUnknown: the source sent everything but heard no answer, so
// the destination may be running the VM. The source VM stays paused: do
// not resume it before checking the destination.
var ErrOutcomeUnknown = errors.New("the migration's outcome is unknown")

// ErrTimeout: pre-copy did not converge within Options.Timeout and the
// strategy was Cancel.
var ErrTimeout = errors.New("the migration did not converge in time")

// step is what follows a pre-copy iteration.
type step int

const (
	stepIterate step = iota
	stepStopAndCopy
	stepCancel
)

// nextStep decides what follows pre-copy iteration done (1 = the full
// copy), with dirty pages left to send, bw the bytes/s the iteration
// achieved and elapsed the time since the migration started.
func nextStep(done int, dirty uint64, bw float64, elapsed time.Duration, o Options) (step, string) {
	if fitsDowntime(dirty, bw, o.Downtime) {
		return stepStopAndCopy, "converged"
	}
	if elapsed >= o.Timeout {
		if o.OnTimeout == Ignore {
			return stepStopAndCopy, "timeout"
		}
		return stepCancel, "timeout"
	}
	if done >= o.MaxIterations {
		return stepStopAndCopy, "iteration cap"
	}
	return stepIterate, ""
}

// fitsDowntime reports whether pages can be sent within d at bw bytes/s.
func fitsDowntime(pages uint64, bw float64, d time.Duration) bool {
	if pages == 0 {
		return true
	}
	if bw <= 0 {
		return false
	}
	return float64(pages)*PageSize/bw <= d.Seconds()
}

// Send migrates src over conn to a receiver (Receive): the config, then
// all of RAM while the guest runs, then the pages dirtied since, in
// iterations, until what is left fits the downtime, the iteration cap is
// reached or the timeout passes; then it pauses src, sends the last pages
// and the device state, and waits for the destination to run the VM.
//
// On success the VM runs at the destination and src is paused: the
// caller stops it. On failure src runs again (Resume), except with
// ErrOutcomeUnknown. ctx cancels the migration.
func Send(ctx context.Context, conn io.ReadWriter, src Source, o Options) (Stats, error) {
	o = o.withDefaults()
	s := &sender{src: src, enc: newEncoder(conn), o: o, start: time.Now(), ctx: ctx, conn: conn}
	if dl, ok := conn.(deadliner); ok {
		s.dl = dl
		stop := context.AfterFunc(ctx, func() { dl.SetDeadline(time.Unix(1, 0)) })
		defer stop()
	}
	var err error
	if o.Local && o.Disks != nil && len(o.Disks.Disks()) > 0 {
		err = &localError{"a local migration does not copy disks: the destination on this host opens the same images; leave out copy_disks"}
	} else if o.Local {
		err = s.runLocal(conn)
	} else {
		err = s.run(conn)
	}
	s.stats.Bytes = s.enc.bytes
	if err != nil && ctx.Err() != nil && !errors.Is(err, ErrOutcomeUnknown) {
		why := ctx.Err()
		if c := context.Cause(ctx); c != why {
			// The canceller said why (the guest stopped under the
			// migration, say): the user reads that first.
			why = fmt.Errorf("%w: %w", c, why)
		}
		err = fmt.Errorf("migration cancelled: %w (%w)", why, err)
	}
	return s.stats, err
}

type sender struct {
	src   Source
	enc   *encoder
	o     Options
	start time.Time
	ctx   context.Context
	conn  io.Reader
	dl    deadliner // nil if conn has no deadlines
	ram   []Region
	stats Stats
	// With Options.Disks: the disks the record names, and its token.
	disks []Disk
	token Token
}

// preamble sends the stream's header (with flags), the VM's config and
// RAM's layout, and waits for the destination's answer.
func (s *sender) preamble(conn io.Reader, flags uint32, cfg []byte) error {
	if err := s.enc.header(flags); err != nil {
		return s.ioErr(err)
	}
	if err := s.enc.config(cfg); err != nil {
		return err
	}
	if flags&flagDisks != 0 {
		if err := s.enc.disks(s.token, s.disks); err != nil {
			return err
		}
	}
	if err := s.enc.layout(s.ram); err != nil {
		return err
	}
	if err := s.enc.flush(); err != nil {
		return s.ioErr(err)
	}
	return readReply(conn)
}

func (s *sender) run(conn io.Reader) error {
	cfg, err := s.src.Config()
	if err != nil {
		return err
	}
	s.ram = s.src.RAM()
	for i, r := range s.ram {
		if len(r.Data)%PageSize != 0 {
			return fmt.Errorf("migration: RAM region %d is not a whole number of pages", i)
		}
	}
	var flags uint32
	if s.o.Disks != nil {
		if s.disks = s.o.Disks.Disks(); len(s.disks) > 0 {
			flags |= flagDisks
			s.token = NewToken()
		}
	}
	// The destination answers once it has built the VM (and opened the
	// images it takes copies into): a config it cannot build fails
	// here, before any RAM is sent.
	if err := s.preamble(conn, flags, cfg); err != nil {
		return err
	}
	if flags&flagDisks != 0 {
		if err := s.copyDisks(); err != nil {
			return err
		}
	}
	if err := s.src.StartDirtyLog(); err != nil {
		return fmt.Errorf("starting dirty logging: %w", err)
	}
	defer s.src.StopDirtyLog()

	dirty := make([][]uint64, len(s.ram))
	for i, r := range s.ram {
		dirty[i] = allPages(uint64(len(r.Data)) / PageSize)
	}
	iter := 0
	for {
		iter++
		t0, b0 := time.Now(), s.enc.bytes
		n, err := s.sendPages(dirty, iter)
		if err != nil {
			return err
		}
		bw := float64(s.enc.bytes-b0) / max(time.Since(t0).Seconds(), 1e-6)
		if dirty, err = s.collect(); err != nil {
			return err
		}
		left := countPages(dirty)
		s.report(Progress{Iteration: iter, DirtyPages: n, Bandwidth: bw, Remaining: left})
		if err := s.ctx.Err(); err != nil {
			return err
		}
		if err := s.disksErr(); err != nil {
			return err
		}
		st, why := nextStep(iter, left, bw, time.Since(s.start), s.o)
		if st == stepCancel {
			return fmt.Errorf("%w: after %d iterations in %v, %d pages were still dirty (%v at %.0f MB/s; the target is %v): give a longer timeout_s, a larger downtime_ms, or timeout_strategy Ignore",
				ErrTimeout, iter, time.Since(s.start).Round(time.Second), left,
				time.Duration(float64(left)*PageSize/max(bw, 1)*float64(time.Second)).Round(time.Millisecond), bw/1e6, s.o.Downtime)
		}
		if st == stepStopAndCopy {
			s.stats.Reason = why
			break
		}
	}
	return s.stopAndCopy(conn, dirty, iter+1)
}

// runLocal is a same-host migration: the config and layout, then guest
// RAM's memfd once the destination asks for it, then, once it has built
// the VM on that RAM, the pause and the state.
func (s *sender) runLocal(conn io.Reader) error {
	ls, ok := s.src.(LocalSource)
	if !ok {
		return &localError{"this VM cannot migrate locally"}
	}
	c, err := localConn(s.conn)
	if err != nil {
		return err
	}
	cfg, err := s.src.Config()
	if err != nil {
		return err
	}
	s.ram = s.src.RAM()
	fd, offsets, err := ls.SharedRAM()
	if err != nil {
		return err
	}
	if len(offsets) != len(s.ram) {
		return fmt.Errorf("migration: %d offsets for %d RAM regions", len(offsets), len(s.ram))
	}
	// The destination asks for the memory only once it has read all the
	// rest: a descriptor that arrived while it read ahead would be lost.
	if err := s.preamble(conn, flagLocal, cfg); err != nil {
		return err
	}
	if err := sendMemory(c, fd, offsets); err != nil {
		return s.ioErr(err)
	}
	s.enc.bytes += frameSize + 8*uint64(len(offsets))
	// Then it maps RAM and builds the VM, or says why it cannot.
	if err := readReply(conn); err != nil {
		return err
	}
	s.stats.Reason = "local"
	return s.stopAndCopy(conn, nil, 1)
}

// stopAndCopy pauses the source and sends what is left: the pages in
// dirty (none in a local migration, whose dirty is nil) and the state.
func (s *sender) stopAndCopy(conn io.Reader, dirty [][]uint64, iter int) (err error) {
	pausedAt := time.Now()
	if err := s.src.Pause(); err != nil {
		return fmt.Errorf("pausing the VM: %w", err)
	}
	s.stats.PauseTime = time.Since(pausedAt)
	sentAll := false
	defer func() {
		// Once everything is sent only the destination's own "failed"
		// proves it is not running the VM.
		if err != nil && (!sentAll || errors.Is(err, ErrDestination)) {
			if rerr := s.src.Resume(); rerr != nil {
				err = fmt.Errorf("%w; resuming the VM here failed too: %v", err, rerr)
			}
		}
	}()
	t0, b0 := time.Now(), s.enc.bytes
	var n uint64
	if dirty != nil {
		last, err := s.collect()
		if err != nil {
			return err
		}
		for i := range dirty {
			for w := range dirty[i] {
				dirty[i][w] |= last[i][w]
			}
		}
		t0 = time.Now()
		if n, err = s.sendPages(dirty, iter); err != nil {
			return err
		}
	}
	st, err := s.src.State()
	if err != nil {
		return fmt.Errorf("saving the device state: %w", err)
	}
	if err := s.enc.state(st); err != nil {
		return err
	}
	if err := s.enc.done(); err != nil {
		return s.ioErr(err)
	}
	if err := s.enc.flush(); err != nil {
		return s.ioErr(err)
	}
	sentAll = true
	sentAt := time.Now()
	s.stats.SendTime = sentAt.Sub(pausedAt) - s.stats.PauseTime
	bw := float64(s.enc.bytes-b0) / max(time.Since(t0).Seconds(), 1e-6)
	if err := readReply(conn); err != nil {
		if errors.Is(err, ErrDestination) {
			return err
		}
		return fmt.Errorf("%w: everything was sent but the destination did not answer (%v); the VM stays paused here: check whether it runs at the destination before resuming it", ErrOutcomeUnknown, err)
	}
	s.stats.Iterations = iter
	s.stats.ResumeTime = time.Since(sentAt)
	s.stats.Downtime = time.Since(pausedAt)
	s.stats.Total = time.Since(s.start)
	s.stats.Bytes = s.enc.bytes
	s.report(Progress{Iteration: iter, Final: true, DirtyPages: n, Bandwidth: bw})
	return nil
}

func (s *sender) report(p Progress) {
	s.stats.Iterations = p.Iteration
	if s.o.Progress == nil {
		return
	}
	p.Bytes, p.DataPages, p.ZeroPages = s.enc.bytes, s.stats.DataPages, s.stats.ZeroPages
	s.o.Progress(p)
}

// ioErr explains a failed write: ctx ended, or the destination gave up,
// in which case it has sent its reason before closing (read here with a
// short deadline), or it went away.
func (s *sender) ioErr(err error) error {
	if s.ctx.Err() != nil {
		return s.ctx.Err()
	}
	if s.dl != nil {
		s.dl.SetReadDeadline(time.Now().Add(time.Second))
		if rerr := readReply(s.conn); errors.Is(rerr, ErrDestination) {
			return rerr
		}
	}
	return fmt.Errorf("sending to the destination: %w", err)
}

// collect fetches every region's dirty pages.
func (s *sender) collect() ([][]uint64, error) {
	out := make([][]uint64, len(s.ram))
	for i, r := range s.ram {
		b, err := s.src.Dirty(i)
		if err != nil {
			return nil, fmt.Errorf("collecting dirty pages: %w", err)
		}
		pages := uint64(len(r.Data)) / PageSize
		if uint64(len(b)) != (pages+63)/64 {
			return nil, fmt.Errorf("migration: the dirty bitmap of region %d has %d words, want %d", i, len(b), (pages+63)/64)
		}
		if pages%64 != 0 && b[len(b)-1]>>(pages%64) != 0 {
			return nil, fmt.Errorf("migration: the dirty bitmap of region %d marks pages beyond its end", i)
		}
		out[i] = b
	}
	return out, nil
}

// sendPages sends the dirty pages of every region, zero pages as runs
// without data, then the iteration's end; it returns how many it sent.
func (s *sender) sendPages(dirty [][]uint64, iter int) (uint64, error) {
	var total uint64
	for i, r := range s.ram {
		n, err := s.sendRegion(i, r.Data, dirty[i])
		if err != nil {
			return 0, err
		}
		total += n
		if err := s.ctx.Err(); err != nil {
			return 0, err
		}
	}
	if err := s.enc.iteration(uint32(iter), total); err != nil {
		return 0, s.ioErr(err)
	}
	if err := s.enc.flush(); err != nil {
		return 0, s.ioErr(err)
	}
	return total, nil
}

var zeroPage [PageSize]byte

func (s *sender) sendRegion(i int, data []byte, bm []uint64) (uint64, error) {
	var start, n uint64
	zero := false
	var sent uint64
	emit := func() error {
		if n == 0 {
			return nil
		}
		sent += n
		if zero {
			s.stats.ZeroPages += n
			return s.enc.zero(i, start, n)
		}
		s.stats.DataPages += n
		return s.enc.data(i, start, data[start*PageSize:(start+n)*PageSize])
	}
	for w, word := range bm {
		for word != 0 {
			p := uint64(w)*64 + uint64(bits.TrailingZeros64(word))
			word &= word - 1
			// bytes.Equal is the vectorised memequal: a zero page costs a
			// read of it, no bytes on the wire.
			z := bytes.Equal(data[p*PageSize:(p+1)*PageSize], zeroPage[:])
			if n > 0 && p == start+n && z == zero && (z || n < MaxRunPages) {
				n++
				continue
			}
			if err := emit(); err != nil {
				return 0, s.ioErr(err)
			}
			start, n, zero = p, 1, z
		}
	}
	if err := emit(); err != nil {
		return 0, s.ioErr(err)
	}
	return sent, nil
}

// allPages is a bitmap with pages bits set.
func allPages(pages uint64) []uint64 {
	b := make([]uint64, (pages+63)/64)
	for w := range b {
		b[w] = ^uint64(0)
	}
	if r := pages % 64; r != 0 {
		b[len(b)-1] = 1<<r - 1
	}
	return b
}

func countPages(dirty [][]uint64) uint64 {
	var n uint64
	for _, b := range dirty {
		for _, w := range b {
			n += uint64(bits.OnesCount64(w))
		}
	}
	return n
}

// copyDisks starts the disks' copy and waits until every disk is in sync,
// telling the destination how far it got once a second (which also keeps
// the stream inside the receiver's idle bound). It fails when a copy
// fails, when ctx ends, and when Timeout passes first, whatever the
// timeout strategy: the switchover needs the disks in sync.
func (s *sender) copyDisks() error {
	dc := s.o.Disks
	start := time.Now()
	if err := dc.Start(s.token); err != nil {
		return fmt.Errorf("starting the disks' copy: %w", err)
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	tell := func() error {
		copied, total := dc.Progress()
		s.stats.DiskBytes = copied
		if s.o.DiskProgress != nil {
			s.o.DiskProgress(copied, total)
		}
		if err := s.enc.diskProgress(copied, total); err != nil {
			return s.ioErr(err)
		}
		if err := s.enc.flush(); err != nil {
			return s.ioErr(err)
		}
		return nil
	}
	for {
		select {
		case <-dc.Ready():
			if err := dc.Err(); err != nil {
				return fmt.Errorf("copying the disks: %w", err)
			}
			s.stats.DiskTime = time.Since(start)
			return tell()
		case <-tick.C:
			if err := tell(); err != nil {
				return err
			}
			if time.Since(s.start) >= s.o.Timeout {
				copied, total := dc.Progress()
				return fmt.Errorf("%w: the disks were not in sync after %v (%d of %d bytes copied): give a longer timeout_s",
					ErrTimeout, time.Since(s.start).Round(time.Second), copied, total)
			}
		case <-s.ctx.Done():
			return s.ctx.Err()
		}
	}
}

// disksErr fails the migration once a disk's copy has failed: its
// destination no longer gets the guest's writes.
func (s *sender) disksErr() error {
	if s.o.Disks == nil || len(s.disks) == 0 {
		return nil
	}
	if err := s.o.Disks.Err(); err != nil {
		return fmt.Errorf("copying the disks: %w", err)
	}
	return nil
}
