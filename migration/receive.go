package migration

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/state"
)

// Target builds the VM a migration describes.
type Target interface {
	// Build builds, from the source's VM config (JSON; hostile, so it is
	// checked as strictly as a vm.create body), a VM whose guest RAM is
	// all zero and whose vCPUs do not run, or says why it cannot in a
	// sentence. The layout of its RAM must be the one the source sends.
	Build(config []byte) (Incoming, error)
}

// Incoming is a VM being received.
type Incoming interface {
	// RAM returns guest RAM, which Receive writes in place. It is called
	// once, after Build.
	RAM() []Region
	// Restore applies the device and vCPU state, after the last page
	// has arrived. The VM stays paused: the caller runs it.
	Restore(*state.Snapshot) error
	// Discard releases a VM whose migration failed. Receive calls it on
	// every failure after Build; the VM was never run.
	Discard()
}

// ReceiveOptions tune Receive.
type ReceiveOptions struct {
	// Idle bounds the wait for each record (default 60 s): a source that
	// stalls longer fails the migration.
	Idle time.Duration
	// Progress, if set, hears of each iteration the source ends.
	Progress func(Progress)
	// DiskProgress, if set, hears of the source's disk copy as it
	// reports it (disks.go).
	DiskProgress func(copied, total uint64)
}

// Received is a migration whose VM has all its RAM and state. The caller
// runs the VM, then answers the source with Finish: nil tells it the VM
// runs here (the source stops its own), an error that it did not (after
// the caller has discarded it; the source then resumes its own).
type Received struct {
	VM    Incoming
	Stats Stats
	w     io.Writer
}

// Finish sends the destination's last reply.
func (r *Received) Finish(err error) error { return writeReply(r.w, err) }

// deadliner is what net.Conn offers to bound waits.
type deadliner interface {
	SetReadDeadline(time.Time) error
	SetDeadline(time.Time) error
}

// Receive reads a migration from conn: it builds the VM from the
// source's config through t, fills its RAM, and restores its state. The
// stream is hostile: every length, region, page and record order is
// checked before anything is allocated or written, and on any error the
// VM is discarded, the source is told why (if it still listens), and the
// error is returned. ctx ends the wait early.
func Receive(ctx context.Context, conn io.ReadWriter, t Target, o ReceiveOptions) (*Received, error) {
	if o.Idle == 0 {
		o.Idle = 60 * time.Second
	}
	dl, _ := conn.(deadliner)
	if dl != nil {
		stop := context.AfterFunc(ctx, func() { dl.SetDeadline(time.Unix(1, 0)) })
		defer stop()
	}
	// Buffered: frames are 8 bytes, and a syscall each would cost more
	// than the page they announce.
	br := bufio.NewReaderSize(conn, 1<<20)
	rx := &receiver{r: br, br: br, conn: conn, dl: dl, idle: o.Idle, progress: o.Progress, diskProg: o.DiskProgress, start: time.Now()}
	rec, err := rx.run(t, conn)
	if err != nil {
		if rx.in != nil {
			rx.in.Discard()
		}
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", err, ctx.Err())
		}
		// Best effort: the source may be gone, or be the cause.
		if dl != nil {
			dl.SetDeadline(time.Now().Add(time.Second))
		}
		writeReply(conn, err)
		return nil, err
	}
	if dl != nil {
		dl.SetDeadline(time.Time{})
	}
	return rec, nil
}

type receiver struct {
	r        io.Reader
	br       *bufio.Reader // r, to know what it read ahead
	conn     any           // the connection under r (a UNIX socket passes descriptors)
	dl       deadliner
	idle     time.Duration
	progress func(Progress)
	diskProg func(copied, total uint64)
	start    time.Time

	in      Incoming
	ram     []Region
	touched [][]uint64 // pages written so far, which a zero record must clear
	stats   Stats
	iter    uint32
	local   bool // a same-host migration: RAM is shared, not sent
	disks   bool // the source copies disks (disks.go)
}

func (rx *receiver) next() (frame, error) {
	if rx.dl != nil {
		rx.dl.SetReadDeadline(time.Now().Add(rx.idle))
	}
	f, err := readFrame(rx.r)
	if err == nil {
		rx.stats.Bytes += frameSize + uint64(f.len)
	}
	return f, err
}

func (rx *receiver) expect(typ uint16) (frame, error) {
	f, err := rx.next()
	if err != nil {
		return f, err
	}
	if f.typ != typ {
		return f, protoErr("%v record where a %s record belongs", f, recordNames[typ])
	}
	return f, nil
}

func (rx *receiver) run(t Target, w io.Writer) (*Received, error) {
	if rx.dl != nil {
		rx.dl.SetReadDeadline(time.Now().Add(rx.idle))
	}
	flags, err := readHeader(rx.r)
	if err != nil {
		return nil, err
	}
	rx.local, rx.disks = flags&flagLocal != 0, flags&flagDisks != 0
	if rx.local && rx.disks {
		return nil, protoErr("a local migration that copies disks")
	}
	f, err := rx.expect(recConfig)
	if err != nil {
		return nil, err
	}
	cfg, err := readPayload(rx.r, f)
	if err != nil {
		return nil, err
	}
	if rx.local {
		if rx.in, err = rx.buildShared(t, cfg, w); err != nil {
			return nil, err
		}
	} else {
		if rx.in, err = rx.build(t, cfg); err != nil {
			return nil, err
		}
		rx.ram = rx.in.RAM()
		if f, err = rx.expect(recLayout); err != nil {
			return nil, err
		}
		layout, err := readPayload(rx.r, f)
		if err != nil {
			return nil, err
		}
		if err := rx.checkLayout(layout); err != nil {
			return nil, err
		}
	}
	if err := writeReply(w, nil); err != nil { // ready for pages (or, local, the pause)
		return nil, fmt.Errorf("migration: the source went away: %w", err)
	}
	var snap *state.Snapshot
	for {
		f, err := rx.next()
		if err != nil {
			return nil, err
		}
		switch f.typ {
		case recData, recZero:
			if rx.local {
				return nil, protoErr("%v record in a local migration, whose RAM is shared", f)
			}
			if snap != nil {
				return nil, protoErr("RAM after the device state")
			}
			if err := rx.pages(f); err != nil {
				return nil, err
			}
		case recDiskProgress:
			if !rx.disks || rx.iter != 0 || rx.stats.DataPages+rx.stats.ZeroPages != 0 {
				return nil, protoErr("disk progress record after RAM, or without disks")
			}
			if err := rx.diskProgress(); err != nil {
				return nil, err
			}
		case recIteration:
			if rx.local {
				return nil, protoErr("iteration record in a local migration, whose RAM is shared")
			}
			if err := rx.iteration(f); err != nil {
				return nil, err
			}
		case recState:
			if snap != nil {
				return nil, protoErr("a second state record")
			}
			b, err := readPayload(rx.r, f)
			if err != nil {
				return nil, err
			}
			if snap, err = state.Decode(bytes.NewReader(b)); err != nil {
				if errors.Is(err, state.ErrNewer) {
					return nil, fmt.Errorf("the source's device state: %w", err)
				}
				return nil, protoErr("device state: %v", err)
			}
		case recDone:
			if snap == nil {
				return nil, protoErr("done before the device state")
			}
			if err := rx.in.Restore(snap); err != nil {
				return nil, err
			}
			rx.stats.Total = time.Since(rx.start)
			return &Received{VM: rx.in, Stats: rx.stats, w: w}, nil
		default:
			return nil, protoErr("%v record after the layout", f)
		}
	}
}

// checkLayout compares the source's RAM regions with the ones built here
// from the same config: a difference means the two vios lay RAM out
// differently, and nothing could be restored right.
func (rx *receiver) checkLayout(b []byte) error {
	n := len(b) / 16
	if n != len(rx.ram) {
		return protoErr("the source has %d RAM regions, this VM %d: migrate between the same vio versions", n, len(rx.ram))
	}
	rx.touched = make([][]uint64, n)
	for i, r := range rx.ram {
		gpa, size := le.Uint64(b[16*i:]), le.Uint64(b[16*i+8:])
		if gpa != r.GPA || size != uint64(len(r.Data)) {
			return protoErr("RAM region %d is %#x+%#x at the source, %#x+%#x here: migrate between the same vio versions", i, gpa, size, r.GPA, len(r.Data))
		}
		if size%PageSize != 0 {
			return fmt.Errorf("migration: RAM region %d is not a whole number of pages", i)
		}
		rx.touched[i] = make([]uint64, (size/PageSize+63)/64)
	}
	return nil
}

// pages applies a data or zero record.
func (rx *receiver) pages(f frame) error {
	var h [24]byte
	head := h[:16]
	if f.typ == recZero {
		head = h[:24]
	}
	if _, err := io.ReadFull(rx.r, head); err != nil {
		return protoErr("%v record: %v", f, eofIsUnexpected(err))
	}
	region, page := le.Uint32(head), le.Uint64(head[8:])
	if le.Uint32(head[4:]) != 0 {
		return protoErr("%v record with reserved bits set", f)
	}
	count := (uint64(f.len) - 16) / PageSize
	if f.typ == recZero {
		count = le.Uint64(head[16:])
	}
	if region >= uint32(len(rx.ram)) {
		return protoErr("%v record for RAM region %d; there are %d", f, region, len(rx.ram))
	}
	data := rx.ram[region].Data
	pages := uint64(len(data)) / PageSize
	if count == 0 || page >= pages || count > pages-page {
		return protoErr("%v record for pages %d+%d of region %d, which has %d", f, page, count, region, pages)
	}
	touched := rx.touched[region]
	if f.typ == recData {
		if _, err := io.ReadFull(rx.r, data[page*PageSize:(page+count)*PageSize]); err != nil {
			return protoErr("data record: %v", eofIsUnexpected(err))
		}
		for p := page; p < page+count; p++ {
			touched[p/64] |= 1 << (p % 64)
		}
		rx.stats.DataPages += count
		return nil
	}
	// RAM starts zero: only pages written before need clearing, and
	// untouched ones are never faulted in.
	for p := page; p < page+count; p++ {
		if touched[p/64]&(1<<(p%64)) != 0 {
			clear(data[p*PageSize : (p+1)*PageSize])
			touched[p/64] &^= 1 << (p % 64)
		}
	}
	rx.stats.ZeroPages += count
	return nil
}

func (rx *receiver) iteration(f frame) error {
	var b [16]byte
	if _, err := io.ReadFull(rx.r, b[:]); err != nil {
		return protoErr("iteration record: %v", eofIsUnexpected(err))
	}
	n := le.Uint32(b[:])
	if n != rx.iter+1 || le.Uint32(b[4:]) != 0 {
		return protoErr("iteration %d after %d", n, rx.iter)
	}
	rx.iter = n
	rx.stats.Iterations = int(n)
	if rx.progress != nil {
		rx.progress(Progress{Iteration: int(n), DirtyPages: le.Uint64(b[8:]), Bytes: rx.stats.Bytes, DataPages: rx.stats.DataPages, ZeroPages: rx.stats.ZeroPages})
	}
	return nil
}

// buildShared is the start of a local migration, after the config: the
// layout, a reply asking for the memory, the memory record with guest
// RAM's memfd, its checks, and the VM built on it.
func (rx *receiver) buildShared(t Target, cfg []byte, w io.Writer) (Incoming, error) {
	lt, ok := t.(LocalTarget)
	if !ok {
		return nil, &localError{"this vio cannot receive a local migration"}
	}
	c, err := localConn(rx.conn)
	if err != nil {
		return nil, err
	}
	f, err := rx.expect(recLayout)
	if err != nil {
		return nil, err
	}
	b, err := readPayload(rx.r, f)
	if err != nil {
		return nil, err
	}
	regions := make([]SharedRegion, len(b)/16)
	for i := range regions {
		regions[i] = SharedRegion{GPA: le.Uint64(b[16*i:]), Size: le.Uint64(b[16*i+8:])}
	}
	// The source waits for this before it sends the descriptor, so that
	// nothing after the layout sits in rx.br, which would have dropped it.
	if err := writeReply(w, nil); err != nil {
		return nil, fmt.Errorf("migration: the source went away: %w", err)
	}
	if rx.br.Buffered() > 0 {
		return nil, protoErr("the source sent %d bytes before it was asked for the memory record", rx.br.Buffered())
	}
	if rx.dl != nil {
		rx.dl.SetReadDeadline(time.Now().Add(rx.idle))
	}
	offsets, fd, err := readMemory(c, len(regions))
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	rx.stats.Bytes += frameSize + 8*uint64(len(offsets))
	for i := range regions {
		regions[i].Offset = offsets[i]
	}
	if err := checkSharedRAM(fd, regions); err != nil {
		return nil, err
	}
	in, err := lt.BuildShared(cfg, SharedRAM{FD: fd, Regions: regions})
	if err != nil {
		return nil, err
	}
	rx.in, rx.ram = in, in.RAM()
	if err := rx.checkLayout(b); err != nil {
		return in, err
	}
	return in, nil
}

// build builds the VM; with flagDisks it reads the disks record first and
// has the target open its own images of them for the copy.
func (rx *receiver) build(t Target, cfg []byte) (Incoming, error) {
	if !rx.disks {
		return t.Build(cfg)
	}
	f, err := rx.expect(recDisks)
	if err != nil {
		return nil, err
	}
	b, err := readPayload(rx.r, f)
	if err != nil {
		return nil, err
	}
	token, disks, err := decodeDisks(b)
	if err != nil {
		return nil, err
	}
	dt, ok := t.(DiskTarget)
	if !ok {
		return nil, errors.New("this vio cannot take copies of the source's disks; put them on storage both hosts see and leave out copy_disks")
	}
	return dt.BuildCopying(cfg, disks, token)
}

func (rx *receiver) diskProgress() error {
	var b [16]byte
	if _, err := io.ReadFull(rx.r, b[:]); err != nil {
		return protoErr("disk progress record: %v", eofIsUnexpected(err))
	}
	copied, total := le.Uint64(b[:]), le.Uint64(b[8:])
	rx.stats.DiskBytes = copied
	if rx.diskProg != nil {
		rx.diskProg(copied, total)
	}
	return nil
}
