// Package bond joins two or more back-ends into one, so a guest NIC rides
// on several links: active-backup (one member carries everything; when
// it fails the next healthy one takes over) or balance (each flow, by a
// hash of its addresses and ports, is pinned to one healthy member).
//
// A member has failed when a write to it fails for any reason but the
// frame's own (netdev.ErrHeader), when a read from it fails (other than a
// deadline), or when it reports its link down (a back-end with an
// Up() bool method, such as netdev/socket's). A failed member is tried
// again after RetryAfter. The move to the next healthy member happens on
// the bond's next write or on the next frame arriving on another member,
// whichever comes first. A failing write is retried on the next healthy
// member at once, so a failover loses no frame the bond was given; frames
// already inside the failed back-end are lost, as on a cut cable.
//
// In active-backup mode frames received on the other members are dropped
// (as Linux's bonding does), so a switch flooding to every member does
// not duplicate them; balance mode delivers from every member.
//
// The bond offers no offloads: its members might not share them.
package bond

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/frame"
)

// Mode is how frames are spread over the members.
type Mode int

// Modes.
const (
	ActiveBackup Mode = iota
	Balance
)

// ParseMode parses "active-backup" or "balance".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "active-backup", "":
		return ActiveBackup, nil
	case "balance":
		return Balance, nil
	}
	return 0, fmt.Errorf("bond mode %q: want active-backup or balance", s)
}

// Options tune a bond.
type Options struct {
	Mode Mode
	// RetryAfter is how long a failed member rests before it is a
	// candidate again (default 1 s).
	RetryAfter time.Duration
	// OnFailover, if set, is told each time active-backup moves from
	// member from to member to (indices into New's members), by
	// whichever goroutine noticed: the guest's write or a member's
	// reader. It must not block.
	OnFailover func(from, to int)
}

// ErrAllDown is returned by WriteFrames when no member can take a frame.
var ErrAllDown = errors.New("bond: every member is down")

// linker is implemented by back-ends that know their link state.
type linker interface{ Up() bool }

type member struct {
	be       netdev.Backend
	failedAt atomic.Int64 // unix nanoseconds of the last failure; 0: healthy
	txFrames atomic.Uint64
	rxFrames atomic.Uint64
	rxDrop   atomic.Uint64 // received while not active (active-backup)
	failures atomic.Uint64
}

// MemberStats are one member's counters.
type MemberStats struct {
	Healthy   bool   `json:"healthy"`
	TxFrames  uint64 `json:"tx_frames"`
	RxFrames  uint64 `json:"rx_frames"`
	RxDropped uint64 `json:"rx_dropped"`
	Failures  uint64 `json:"failures"`
}

// Stats are the bond's counters.
type Stats struct {
	Active    int           `json:"active"` // active-backup: the member in use
	Failovers uint64        `json:"failovers"`
	Members   []MemberStats `json:"members"`
}

// Bond is the joined back-end.
type Bond struct {
	opts    Options
	members []*member
	active  atomic.Int32
	fails   atomic.Uint64
	seed    maphash.Seed

	in   chan []byte
	done chan struct{}
	wg   sync.WaitGroup
	once sync.Once

	rd netdev.ReadDeadline // SetReadDeadline's, which ReadFrames honours

	wmu    sync.Mutex // one WriteFrames at a time inside: guards groups
	groups [][][][]byte
}

var _ netdev.Backend = (*Bond)(nil)

// New joins members (at least two). The bond owns them: Close closes
// them all.
func New(members []netdev.Backend, opts Options) (*Bond, error) {
	if len(members) < 2 {
		return nil, fmt.Errorf("bond: %d member(s): a bond needs at least two back-ends", len(members))
	}
	if opts.RetryAfter <= 0 {
		opts.RetryAfter = time.Second
	}
	b := &Bond{
		opts: opts, seed: maphash.MakeSeed(),
		in:   make(chan []byte, 512),
		done: make(chan struct{}),
	}
	for _, m := range members {
		b.members = append(b.members, &member{be: m})
	}
	// Active-backup starts on the first member whose link is up (one
	// may be down from the start: its switch is away): no failover.
	now := time.Now()
	for i, m := range b.members {
		if b.healthy(m, now) {
			b.active.Store(int32(i))
			break
		}
	}
	for i, m := range b.members {
		b.wg.Add(1)
		go b.pump(i, m)
	}
	return b, nil
}

func (b *Bond) healthy(m *member, now time.Time) bool {
	if l, ok := m.be.(linker); ok && !l.Up() {
		return false
	}
	f := m.failedAt.Load()
	return f == 0 || now.UnixNano()-f >= int64(b.opts.RetryAfter)
}

func (b *Bond) fail(m *member) {
	m.failures.Add(1)
	m.failedAt.Store(time.Now().UnixNano())
}

// pick returns the active member (active-backup), failing over from a
// member that is not healthy; -1 when none is.
func (b *Bond) pickActive(now time.Time) int {
	cur := int(b.active.Load())
	if b.healthy(b.members[cur], now) {
		return cur
	}
	for k := 1; k < len(b.members); k++ {
		i := (cur + k) % len(b.members)
		if b.healthy(b.members[i], now) {
			if b.active.CompareAndSwap(int32(cur), int32(i)) {
				b.fails.Add(1)
				if b.opts.OnFailover != nil {
					b.opts.OnFailover(cur, i)
				}
			}
			return int(b.active.Load())
		}
	}
	return -1
}

// flowHash hashes what identifies a frame's flow: IP addresses,
// protocol and ports, or the MAC addresses of a frame without IP.
func (b *Bond) flowHash(parts [][]byte) uint64 {
	var buf [netdev.HeaderSize + 128]byte
	n := 0
	for _, p := range parts {
		n += copy(buf[n:], p)
		if n == len(buf) {
			break
		}
	}
	var h maphash.Hash
	h.SetSeed(b.seed)
	if n < netdev.HeaderSize+netdev.MinFrameLen {
		return 0
	}
	// Parse errors are expected (the frame is cut at 128 bytes): what
	// was decoded before the cut is enough.
	f, _ := frame.Parse(buf[netdev.HeaderSize:n])
	if f.IsIP() {
		a, d := f.SrcIP.As16(), f.DstIP.As16()
		h.Write(a[:])
		h.Write(d[:])
		var pp [5]byte
		pp[0] = f.Proto
		binary.BigEndian.PutUint16(pp[1:], f.SrcPort)
		binary.BigEndian.PutUint16(pp[3:], f.DstPort)
		h.Write(pp[:])
	} else {
		h.Write(f.Src[:])
		h.Write(f.Dst[:])
	}
	return h.Sum64()
}

// pickFlow chooses the member for a flow among the healthy ones (balance).
func (b *Bond) pickFlow(hash uint64, now time.Time) int {
	var ok [16]int
	healthy := ok[:0]
	for i, m := range b.members {
		if b.healthy(m, now) {
			healthy = append(healthy, i)
		}
	}
	if len(healthy) == 0 {
		return -1
	}
	return healthy[hash%uint64(len(healthy))]
}

// WriteFrames sends frames through the healthy members.
func (b *Bond) WriteFrames(frames [][][]byte) (int, error) {
	select {
	case <-b.done:
		return 0, netdev.ErrClosed
	default:
	}
	if b.opts.Mode == ActiveBackup {
		sent := 0
		for sent < len(frames) {
			i := b.pickActive(time.Now())
			if i < 0 {
				return sent, ErrAllDown
			}
			m := b.members[i]
			n, err := m.be.WriteFrames(frames[sent:])
			m.txFrames.Add(uint64(n))
			sent += n
			if err == nil {
				continue
			}
			if errors.Is(err, netdev.ErrHeader) {
				return sent, err // the frame's own fault
			}
			b.fail(m) // and retry frames[sent] on the next member
		}
		return sent, nil
	}
	for i := range frames {
		if err := b.writeBalanced(frames[i]); err != nil {
			return i, err
		}
	}
	return len(frames), nil
}

// writeBalanced sends one frame on its flow's member, moving to another
// when that one fails.
func (b *Bond) writeBalanced(f [][]byte) error {
	h := b.flowHash(f)
	for range len(b.members) {
		i := b.pickFlow(h, time.Now())
		if i < 0 {
			return ErrAllDown
		}
		m := b.members[i]
		_, err := m.be.WriteFrames([][][]byte{f})
		if err == nil {
			m.txFrames.Add(1)
			return nil
		}
		if errors.Is(err, netdev.ErrHeader) {
			return err
		}
		b.fail(m)
	}
	return ErrAllDown
}

// pump reads one member's frames (member i's) into the bond's queue.
func (b *Bond) pump(i int, m *member) {
	defer b.wg.Done()
	bufs := make([][]byte, 16)
	for i := range bufs {
		bufs[i] = make([]byte, netdev.MaxPacketLen)
	}
	sizes := make([]int, len(bufs))
	for {
		n, err := m.be.ReadFrames(bufs, sizes)
		if err != nil {
			select {
			case <-b.done:
				return
			default:
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			if errors.Is(err, netdev.ErrClosed) {
				return
			}
			b.fail(m)
			t := time.NewTimer(b.opts.RetryAfter / 4)
			select {
			case <-b.done:
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		// A frame on a backup is dropped unless the active member is
		// down, in which case this is the moment to fail over: a guest
		// that only receives (a download whose in-flight segments the
		// failed link took) sends nothing until a retransmission reaches
		// it, so waiting for its next write would wait for ever.
		if b.opts.Mode == ActiveBackup && b.pickActive(time.Now()) != i {
			m.rxDrop.Add(uint64(n))
			continue
		}
		for k := range n {
			pkt := append([]byte(nil), bufs[k][:sizes[k]]...)
			select {
			case b.in <- pkt:
				m.rxFrames.Add(1)
			case <-b.done:
				return
			}
		}
	}
}

// ReadFrames delivers frames from the members.
func (b *Bond) ReadFrames(bufs [][]byte, sizes []int) (int, error) {
	if len(bufs) == 0 || len(sizes) < len(bufs) {
		return 0, fmt.Errorf("bond: %d buffers, %d sizes", len(bufs), len(sizes))
	}
	first, err := b.rd.Receive(b.done, b.in)
	if err != nil {
		return 0, err
	}
	n := 0
	sizes[n] = copy(bufs[n], first)
	n++
	for n < len(bufs) {
		select {
		case p := <-b.in:
			sizes[n] = copy(bufs[n], p)
			n++
		default:
			return n, nil
		}
	}
	return n, nil
}

// SetReadDeadline bounds ReadFrames (the members are read by the bond's
// pumps, without deadlines).
func (b *Bond) SetReadDeadline(t time.Time) error {
	b.rd.Set(t)
	return nil
}

// Close closes every member and waits for the pumps.
func (b *Bond) Close() error {
	err := netdev.ErrClosed
	b.once.Do(func() {
		err = nil
		close(b.done)
		for _, m := range b.members {
			if cerr := m.be.Close(); cerr != nil && err == nil {
				err = cerr
			}
		}
		b.wg.Wait()
	})
	return err
}

// Stats returns the counters.
func (b *Bond) Stats() Stats {
	now := time.Now()
	s := Stats{Active: int(b.active.Load()), Failovers: b.fails.Load()}
	for _, m := range b.members {
		s.Members = append(s.Members, MemberStats{
			Healthy: b.healthy(m, now), TxFrames: m.txFrames.Load(), RxFrames: m.rxFrames.Load(),
			RxDropped: m.rxDrop.Load(), Failures: m.failures.Load(),
		})
	}
	return s
}
