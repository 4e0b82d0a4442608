package queuetest

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
)

// Hostile plays a hostile driver on a Driver's queue for fuzz targets: it
// turns a byte script into descriptor chains (readable and writable
// buffers in any order, lengths from zero to gigabytes, buffers outside
// guest RAM or straddling its end, loops, indirect tables), publishes
// them, and afterwards checks what the device did with them against what
// the driver gave it: every used entry names a chain in flight, no used
// length exceeds the chain's writable bytes, a chain the queue must refuse
// comes back with length 0, and guest memory changed nowhere but in the
// used ring, the first used-length bytes of the writable buffers of
// returned chains and the writable buffers of chains still in flight.
//
// Script format, one chain after another until the script or the ring
// runs out:
//
//	chain header byte c: descriptors = 1 + c&3; c&4 puts them in an
//	    indirect table; c&8 makes the last one point back at the first
//	    (a loop)
//	then per descriptor two bytes m, l:
//	    m&1: VIRTQ_DESC_F_WRITE
//	    m>>1&3: 0 or 1 a fresh buffer in the data area, 2 a buffer
//	        beyond guest RAM, 3 a buffer straddling the end of guest RAM
//	    length = l<<4 | m>>4 (0 to 4095), times 256 if m&8 (up to
//	        about 1 MiB: more than a device gives one request)
//
// A Hostile uses the Driver's descriptor slots and data area; do not mix
// it with Add on the same Driver. Like the Driver, it is not safe for
// concurrent use, and the device must be quiet (not running, or parked)
// while Collect and CheckWrites look at guest memory.
type Hostile struct {
	d          *Driver
	indirectOK bool   // VIRTIO_F_INDIRECT_DESC negotiated
	ramEnd     uint64 // end of the RAM region holding the queue
	next       uint64 // bump allocator in the data area
	limit      uint64 // where fresh buffers stop (clear of the straddling ones)

	chains   map[uint16]*HostileChain // posted and not yet returned, by head
	slots    map[uint16][]uint16      // the ring descriptors each of them holds
	returned []returned               // writable bytes the device may have filled
	snap     []byte                   // guest memory from DescTable to ramEnd at Freeze
}

// HostileChain is one chain as the hostile driver built it.
type HostileChain struct {
	Head     uint16
	Descs    []Desc // the buffer descriptors, in chain order (a loop's repeat not included)
	Indirect bool   // the buffers sit in an indirect table
	Loop     bool   // the last descriptor points back at the first
	// Valid says whether the virtqueue must accept the chain (by the
	// rules package virtio documents); an invalid one must come back
	// with length 0 without the device seeing it.
	Valid bool
}

// Writable returns the chain's writable buffers of non-zero length, in
// order, and their total length.
func (c *HostileChain) Writable() ([]Desc, uint64) {
	var ws []Desc
	var n uint64
	for _, x := range c.Descs {
		if x.Flags&FlagWrite != 0 && x.Len > 0 {
			ws = append(ws, x)
			n += uint64(x.Len)
		}
	}
	return ws, n
}

// HostileUsed is a used entry checked against its chain.
type HostileUsed struct {
	Chain *HostileChain
	Len   uint32
	Data  []byte // the first Len bytes of the chain's writable buffers
}

type returned struct {
	c   *HostileChain
	len uint64
}

// Beyond RAM: far above any guest RAM a test lays out.
const hostileFarAddr = 1 << 46

// NewHostile returns a hostile driver on d; indirectOK says whether the
// device negotiated VIRTIO_F_INDIRECT_DESC.
func NewHostile(d *Driver, indirectOK bool) (*Hostile, error) {
	var end uint64
	for _, r := range d.mem.Regions() {
		if r.GPA <= d.cfg.DescTable && d.cfg.DescTable < r.GPA+r.Size() {
			end = r.GPA + r.Size()
		}
	}
	if end < d.dataEnd || d.dataEnd-d.dataNext < 256 {
		return nil, errors.New("queuetest: hostile driver needs a data area inside one RAM region")
	}
	return &Hostile{d: d, indirectOK: indirectOK, ramEnd: end, next: d.dataNext, limit: d.dataEnd - 64,
		chains: make(map[uint16]*HostileChain), slots: make(map[uint16][]uint16)}, nil
}

func (h *Hostile) alloc(n uint64, align uint64) (uint64, bool) {
	a := (h.next + align - 1) &^ (align - 1)
	if a+n > h.limit || a+n < a {
		return 0, false
	}
	h.next = a + n
	return a, true
}

// Post publishes the chains script describes, until the script ends or
// the ring has no descriptors left, and returns them.
func (h *Hostile) Post(script []byte) []*HostileChain {
	var out []*HostileChain
	for len(script) > 0 {
		c := script[0]
		n := 1 + int(c&3)
		if len(script) < 1+2*n {
			break
		}
		body := script[1 : 1+2*n]
		script = script[1+2*n:]
		ch := &HostileChain{Indirect: c&4 != 0, Loop: c&8 != 0}
		ring := n
		if ch.Indirect {
			ring = 1
		}
		if ring > len(h.d.free) {
			break
		}
		for k := range n {
			ch.Descs = append(ch.Descs, h.desc(body[2*k], body[2*k+1]))
		}
		slots := h.d.free[len(h.d.free)-ring:]
		h.d.free = h.d.free[:len(h.d.free)-ring]
		ch.Head = slots[0]
		// Link: within the ring through the slots taken, within an
		// indirect table through its own indexes.
		link := func(k int) uint16 {
			if ch.Indirect {
				return uint16(k)
			}
			return slots[k]
		}
		for k := range ch.Descs {
			x := ch.Descs[k]
			switch {
			case k+1 < n:
				x.Flags |= FlagNext
				x.Next = link(k + 1)
			case ch.Loop:
				x.Flags |= FlagNext
				x.Next = link(0)
			}
			ch.Descs[k] = x
		}
		if ch.Indirect {
			tbl, ok := h.alloc(uint64(16*n), 16)
			if !ok {
				tbl = hostileFarAddr
			} else {
				h.d.WriteIndirectTable(tbl, ch.Descs)
			}
			h.d.WriteDesc(ch.Head, Desc{Addr: tbl, Len: uint32(16 * n), Flags: FlagIndirect})
			ch.Valid = ok && h.indirectOK && n <= int(h.d.cfg.Size)
		} else {
			for k, x := range ch.Descs {
				h.d.WriteDesc(slots[k], x)
			}
			ch.Valid = true
		}
		ch.Valid = ch.Valid && h.descsValid(ch)
		// The slot list is kept in the chain so that Collect can free it.
		h.chains[ch.Head] = ch
		h.slots[ch.Head] = append([]uint16(nil), slots...)
		h.d.Publish(ch.Head)
		out = append(out, ch)
	}
	return out
}

// descsValid applies the virtqueue's rules for buffers: no loop, no
// readable buffer after a writable one, every non-empty buffer inside
// guest RAM.
func (h *Hostile) descsValid(ch *HostileChain) bool {
	if ch.Loop {
		return false
	}
	sawW := false
	for _, x := range ch.Descs {
		w := x.Flags&FlagWrite != 0
		if !w && sawW {
			return false
		}
		sawW = sawW || w
		if x.Len > 0 {
			if _, err := h.d.mem.Slice(x.Addr, uint64(x.Len)); err != nil {
				return false
			}
		}
	}
	return true
}

func (h *Hostile) desc(m, l byte) Desc {
	n := uint32(l)<<4 | uint32(m>>4)
	if m&8 != 0 {
		n <<= 8
	}
	x := Desc{Len: n}
	if m&1 != 0 {
		x.Flags = FlagWrite
	}
	switch m >> 1 & 3 {
	case 0, 1:
		a, ok := h.alloc(uint64(n), 8)
		if !ok {
			a = hostileFarAddr
		}
		x.Addr = a
	case 2:
		x.Addr = hostileFarAddr
	case 3:
		// The last 8 bytes of RAM and beyond: 9 bytes or more always
		// straddle the end. Fresh buffers stay clear of these bytes.
		x.Addr = h.ramEnd - 8
		if x.Len < 9 {
			x.Len += 9
		}
	}
	return x
}

// Freeze records guest memory from the descriptor table to the end of its
// RAM region, for CheckWrites. Call it after the last Post and before the
// device runs.
func (h *Hostile) Freeze() error {
	s, err := h.d.mem.Slice(h.d.cfg.DescTable, h.ramEnd-h.d.cfg.DescTable)
	if err != nil {
		return err
	}
	h.snap = append(h.snap[:0], s...)
	return nil
}

// Collect reads the used entries the device published since the last
// call and checks each against its chain.
func (h *Hostile) Collect() ([]HostileUsed, error) {
	var out []HostileUsed
	for h.d.UsedIdx() != h.d.lastUsed {
		slot := h.d.cfg.UsedRing + 4 + 8*uint64(h.d.lastUsed%h.d.cfg.Size)
		var b [8]byte
		if _, err := h.d.mem.ReadAt(b[:], int64(slot)); err != nil {
			return out, err
		}
		h.d.lastUsed++
		id, n := binary.LittleEndian.Uint32(b[:]), binary.LittleEndian.Uint32(b[4:])
		if id >= uint32(h.d.cfg.Size) {
			return out, fmt.Errorf("queuetest: used id %d out of a queue of %d", id, h.d.cfg.Size)
		}
		ch, ok := h.chains[uint16(id)]
		if !ok {
			return out, fmt.Errorf("queuetest: used id %d is not a chain in flight", id)
		}
		delete(h.chains, uint16(id))
		h.d.free = append(h.d.free, h.slots[uint16(id)]...)
		delete(h.slots, uint16(id))
		ws, total := ch.Writable()
		if !ch.Valid && n != 0 {
			return out, fmt.Errorf("queuetest: chain %d, which the queue must refuse, came back with length %d", id, n)
		}
		if uint64(n) > total {
			return out, fmt.Errorf("queuetest: used length %d of chain %d exceeds its %d writable bytes", n, id, total)
		}
		h.returned = append(h.returned, returned{ch, uint64(n)})
		u := HostileUsed{Chain: ch, Len: n}
		left := uint64(n)
		for _, w := range ws {
			k := min(left, uint64(w.Len))
			if k == 0 {
				break
			}
			s, err := h.d.mem.Slice(w.Addr, k)
			if err != nil {
				return out, err
			}
			u.Data = append(u.Data, s...)
			left -= k
		}
		out = append(out, u)
	}
	return out, nil
}

// InFlight returns the chains posted and not yet returned.
func (h *Hostile) InFlight() map[uint16]*HostileChain { return h.chains }

// CheckWrites compares guest memory with what Freeze recorded: only the
// used ring, the first used-length bytes of the writable buffers of the
// chains Collect returned, and the writable buffers of the chains in
// flight whose heads are in written may differ. Call Collect first.
func (h *Hostile) CheckWrites(written ...uint16) error {
	if h.snap == nil {
		return errors.New("queuetest: CheckWrites before Freeze")
	}
	base, end := h.d.cfg.DescTable, h.d.cfg.DescTable+uint64(len(h.snap))
	type span struct{ a, b uint64 } // [a, b) relative to base
	var ok []span
	allow := func(a, n uint64) {
		lo, hi := max(a, base), min(a+n, end)
		if lo < hi {
			ok = append(ok, span{lo - base, hi - base})
		}
	}
	allow(h.d.cfg.UsedRing, uint64(6+8*uint64(h.d.cfg.Size)))
	for _, r := range h.returned {
		ws, _ := r.c.Writable()
		left := r.len
		for _, w := range ws {
			k := min(left, uint64(w.Len))
			allow(w.Addr, k)
			left -= k
		}
	}
	for _, head := range written {
		ch, found := h.chains[head]
		if !found {
			return fmt.Errorf("queuetest: head %d is not in flight", head)
		}
		ws, _ := ch.Writable()
		for _, w := range ws {
			allow(w.Addr, uint64(w.Len))
		}
	}
	now, err := h.d.mem.Slice(base, uint64(len(h.snap)))
	if err != nil {
		return err
	}
	// Compare the gaps between the allowed spans.
	slices.SortFunc(ok, func(x, y span) int { return cmp.Compare(x.a, y.a) })
	var from uint64
	check := func(to uint64) error {
		if from < to && !bytes.Equal(now[from:to], h.snap[from:to]) {
			for i := from; i < to; i++ {
				if now[i] != h.snap[i] {
					return fmt.Errorf("queuetest: device wrote guest memory at %#x, outside every buffer it was given", base+i)
				}
			}
		}
		return nil
	}
	for _, s := range ok {
		if err := check(s.a); err != nil {
			return err
		}
		from = max(from, s.b)
	}
	return check(uint64(len(h.snap)))
}
