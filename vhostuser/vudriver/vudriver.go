// Package vudriver is a vhost-user-blk front-end without a VM, for
// benchmarks and tests: it connects to a back-end, shares a memfd as the
// "guest" RAM, negotiates, sets up one request queue and keeps reads in
// flight on it, playing the guest's virtio-blk driver itself (the ring
// is package virtio/queuetest's driver side, the same one vio's device
// tests use). `vio-bench qos` drives `vio serve-disk` with it, and
// vhostuser's TestBackendQoS drives a Backend with it.
//
// Each read has a slot of its own in guest RAM (header, data, status),
// reused as soon as the read completes, so a Driver keeps the same
// number of reads in flight for as long as it runs: the back-end never
// sees the front-end pause.
package vudriver

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/vhostuser"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/queuetest"
)

// Config tunes a Driver; the zero value is 16 reads of 4 KiB in flight.
type Config struct {
	// Depth is how many reads Run keeps in flight (default 16, at most
	// MaxDepth).
	Depth int
	// Size is the bytes of one read, a multiple of 512 (default 4096).
	Size int
	// Timeout bounds each vhost-user exchange and the wait for a read to
	// complete (default 10 s): a back-end that hangs fails the run
	// instead of blocking it.
	Timeout time.Duration
	// Check, when set, is given each completed read's offset (bytes) and
	// data; an error from it ends Run.
	Check func(off int64, data []byte) error
}

// MaxDepth bounds Config.Depth: three descriptors a read in a queue of
// 256 entries, the queue size vio's back-end accepts by default.
const MaxDepth = 64

const sector = 512

// Driver is one front-end with one queue. Run must not be called
// concurrently with itself; Completed may be called at any time.
type Driver struct {
	cfg     Config
	f       *vhostuser.Frontend
	mem     *memory.Memory
	q       *queuetest.Driver
	kickFD  int
	callFD  int
	sectors uint64 // the disk's capacity

	slots  []slot
	free   []int          // slots not in flight
	byHead map[uint16]int // slot of each chain in flight
	rng    *rand.Rand

	done atomic.Uint64 // reads completed
}

// slot is one read's buffers in guest RAM.
type slot struct {
	hdr, data, status uint64 // guest physical addresses
	off               int64  // the read in flight, in bytes
}

// Dial connects to a vhost-user-blk back-end listening at path and sets
// up a Driver on the connection.
func Dial(path string, cfg Config) (*Driver, error) {
	f, err := vhostuser.Dial(path, cfg.Timeout)
	if err != nil {
		return nil, err
	}
	d, err := New(f, cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return d, nil
}

// New sets up a Driver on a connected front-end, which it then owns
// (Close closes it; so does a failed New): the opening (VERSION_1 and
// protocol features MQ, REPLY_ACK, CONFIG), guest RAM, the disk's
// capacity from the configuration space, and queue 0, enabled.
func New(f *vhostuser.Frontend, cfg Config) (*Driver, error) {
	d, err := newDriver(f, cfg)
	if err != nil {
		f.Close()
	}
	return d, err
}

func newDriver(f *vhostuser.Frontend, cfg Config) (*Driver, error) {
	if cfg.Depth == 0 {
		cfg.Depth = 16
	}
	if cfg.Size == 0 {
		cfg.Size = 4096
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Depth < 1 || cfg.Depth > MaxDepth {
		return nil, fmt.Errorf("vudriver: depth %d: give 1 to %d reads in flight", cfg.Depth, MaxDepth)
	}
	if cfg.Size < sector || cfg.Size%sector != 0 {
		return nil, fmt.Errorf("vudriver: read size %d: give a multiple of %d bytes", cfg.Size, sector)
	}
	// Descriptors: three a read (header, data, status), rounded up to a
	// power of two.
	qsize := uint16(4)
	for int(qsize) < 3*cfg.Depth {
		qsize *= 2
	}
	const ringBase = 0x1000
	ringEnd := uint64(ringBase) + virtio.DescTableSize(qsize) + virtio.AvailRingSize(qsize) + virtio.UsedRingSize(qsize) + 64
	dataBase := (ringEnd + 4095) &^ 4095
	stride := (uint64(cfg.Size) + 4095) &^ 4095 // page-aligned data, as a guest's page cache has it
	hdrBase := dataBase + uint64(cfg.Depth)*stride
	end := hdrBase + uint64(cfg.Depth)*32
	memSize := (end + (2<<20 - 1)) &^ (2<<20 - 1)
	mem, err := memory.NewWithOptions([]memory.Layout{{GPA: 0, Size: memSize}}, memory.Options{Backing: memory.Memfd, Name: "vudriver-ram"})
	if err != nil {
		return nil, fmt.Errorf("vudriver: guest RAM: %w", err)
	}
	d := &Driver{cfg: cfg, f: f, mem: mem, kickFD: -1, callFD: -1, byHead: make(map[uint16]int),
		rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0x7664726976657221))}
	if err := d.open(qsize, ringBase); err != nil {
		d.release()
		return nil, err
	}
	for i := range cfg.Depth {
		d.slots = append(d.slots, slot{hdr: hdrBase + 32*uint64(i), status: hdrBase + 32*uint64(i) + 16, data: dataBase + stride*uint64(i)})
		d.free = append(d.free, i)
	}
	return d, nil
}

// open negotiates, shares the RAM, reads the capacity and sets up queue 0.
func (d *Driver) open(qsize uint16, base uint64) error {
	const wantProto = vhostuser.ProtocolMQ | vhostuser.ProtocolReplyAck | vhostuser.ProtocolConfig
	features, proto, err := d.f.Negotiate(virtio.FeatureVersion1, wantProto)
	if err != nil {
		return fmt.Errorf("vudriver: negotiating: %w", err)
	}
	if features&virtio.FeatureVersion1 == 0 {
		return errors.New("vudriver: the back-end does not offer VIRTIO_F_VERSION_1")
	}
	if proto&vhostuser.ProtocolConfig == 0 {
		return errors.New("vudriver: the back-end does not offer the CONFIG protocol feature, which tells the disk's capacity")
	}
	if err := d.f.SetMemTable(d.mem); err != nil {
		return fmt.Errorf("vudriver: sharing guest RAM: %w", err)
	}
	cfg, err := d.f.GetConfig(0, 8)
	if err != nil {
		return fmt.Errorf("vudriver: reading the capacity: %w", err)
	}
	d.sectors = binary.LittleEndian.Uint64(cfg)
	if d.sectors < uint64(d.cfg.Size/sector) {
		return fmt.Errorf("vudriver: the disk holds %d bytes, less than one read of %d", d.sectors*sector, d.cfg.Size)
	}
	if d.q, err = queuetest.New(d.mem, base, qsize, 0, false); err != nil {
		return fmt.Errorf("vudriver: %w", err)
	}
	for _, fd := range []*int{&d.kickFD, &d.callFD} {
		if *fd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
			return fmt.Errorf("vudriver: eventfd: %w", err)
		}
	}
	for _, step := range []func() error{
		func() error { return d.f.SetVringNum(0, qsize) },
		func() error { return d.f.SetVringBase(0, 0) },
		func() error { return d.f.SetVringAddrGPA(0, d.q.Config()) },
		func() error { return d.f.SetVringKick(0, d.kickFD) },
		func() error { return d.f.SetVringCall(0, d.callFD) },
		func() error { return d.f.SetVringEnable(0, true) },
	} {
		if err := step(); err != nil {
			return fmt.Errorf("vudriver: setting up queue 0: %w", err)
		}
	}
	return nil
}

// Capacity returns the disk's size in bytes.
func (d *Driver) Capacity() int64 { return int64(d.sectors) * sector }

// Completed returns the number of reads completed so far, by every Run.
func (d *Driver) Completed() uint64 { return d.done.Load() }

// Close disconnects (the back-end then stops the ring) and frees the
// RAM and eventfds.
func (d *Driver) Close() error {
	err := d.f.Close()
	d.release()
	return err
}

// release frees what the Driver made: the eventfds and the RAM.
func (d *Driver) release() {
	for _, fd := range []*int{&d.kickFD, &d.callFD} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
	d.mem.Close()
}

// Run keeps Depth reads at random Size-aligned offsets in flight, adding
// one as each completes, until ctx ends or n reads have completed in
// this run (n 0: no bound); then it waits for the reads in flight and
// returns. A read that fails (a status other than OK, a short used
// length, Check's error) or that takes longer than Timeout ends the run
// with an error; the Driver is then unusable.
func (d *Driver) Run(ctx context.Context, n uint64) error {
	var submitted uint64
	more := func() bool { return ctx.Err() == nil && (n == 0 || submitted < n) }
	for {
		added := false
		for more() && len(d.free) > 0 {
			if err := d.submit(); err != nil {
				return err
			}
			submitted++
			added = true
		}
		if added && d.q.NeedsKick() {
			if _, err := unix.Write(d.kickFD, binary.LittleEndian.AppendUint64(nil, 1)); err != nil {
				return fmt.Errorf("vudriver: kick: %w", err)
			}
		}
		if len(d.free) == len(d.slots) {
			return nil // nothing in flight and nothing more to add
		}
		if err := d.wait(); err != nil {
			return err
		}
		if err := d.reap(); err != nil {
			return err
		}
	}
}

// submit makes a read available in a free slot.
func (d *Driver) submit() error {
	i := d.free[len(d.free)-1]
	s := &d.slots[i]
	blocks := d.sectors / uint64(d.cfg.Size/sector)
	s.off = int64(d.rng.Uint64N(blocks)) * int64(d.cfg.Size)
	var hdr [16]byte
	binary.LittleEndian.PutUint32(hdr[0:], blk.TypeIn)
	binary.LittleEndian.PutUint64(hdr[8:], uint64(s.off)/sector)
	if _, err := d.mem.WriteAt(hdr[:], int64(s.hdr)); err != nil {
		return fmt.Errorf("vudriver: %w", err)
	}
	head, err := d.q.AddChain([]queuetest.Desc{
		{Addr: s.hdr, Len: 16},
		{Addr: s.data, Len: uint32(d.cfg.Size), Flags: queuetest.FlagWrite},
		{Addr: s.status, Len: 1, Flags: queuetest.FlagWrite},
	})
	if err != nil {
		return fmt.Errorf("vudriver: %w", err)
	}
	d.free = d.free[:len(d.free)-1]
	d.byHead[head] = i
	return nil
}

// wait blocks until the back-end signals the call eventfd, and consumes
// the signal; what it signalled is then in the used ring.
func (d *Driver) wait() error {
	pfd := []unix.PollFd{{Fd: int32(d.callFD), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(pfd, int(d.cfg.Timeout/time.Millisecond))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("vudriver: waiting for completions: %w", err)
		}
		if n == 0 {
			return fmt.Errorf("vudriver: no read completed within %v (%d in flight)", d.cfg.Timeout, len(d.slots)-len(d.free))
		}
		var b [8]byte
		if _, err := unix.Read(d.callFD, b[:]); err != nil && !errors.Is(err, unix.EAGAIN) {
			return fmt.Errorf("vudriver: reading the call eventfd: %w", err)
		}
		return nil
	}
}

// reap takes every completed read off the used ring and frees its slot.
func (d *Driver) reap() error {
	for {
		u, ok, err := d.q.GetUsed()
		if err != nil {
			return fmt.Errorf("vudriver: %w", err)
		}
		if !ok {
			return nil
		}
		i, inFlight := d.byHead[u.ID]
		if !inFlight {
			return fmt.Errorf("vudriver: the back-end completed chain %d, which holds no read", u.ID)
		}
		delete(d.byHead, u.ID)
		s := d.slots[i]
		// The writable buffers in order: the data, then the status byte.
		if len(u.Data) != d.cfg.Size+1 {
			return fmt.Errorf("vudriver: read at %d: the back-end wrote %d bytes, want %d and a status", s.off, len(u.Data), d.cfg.Size)
		}
		if st := u.Data[d.cfg.Size]; st != blk.StatusOK {
			return fmt.Errorf("vudriver: read at %d: status %d", s.off, st)
		}
		if d.cfg.Check != nil {
			if err := d.cfg.Check(s.off, u.Data[:d.cfg.Size]); err != nil {
				return fmt.Errorf("vudriver: read at %d: %w", s.off, err)
			}
		}
		d.free = append(d.free, i)
		d.done.Add(1)
	}
}
