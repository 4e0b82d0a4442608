package ide

import (
	"encoding/binary"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/memory"
)

// Bus-master register bits.
const (
	bmStart = 0x01 // command: start/stop bus master
	bmToMem = 0x08 // command: direction, 1 = write to memory

	bmActive = 0x01 // status: transfer active
	bmError  = 0x02 // status: a PRD or memory error (write 1 to clear)
	bmINTR   = 0x04 // status: the channel interrupted (write 1 to clear)
	bmDrvCap = 0x60 // status: drive 0/1 DMA capable, software's bits
)

const (
	// maxPRDs bounds a PRD walk: a table may not cross a 64 KiB boundary,
	// so 8192 entries is the most a conforming one has.
	maxPRDs = 8192
	// chunkSize is the largest piece of a DMA transfer held in memory.
	chunkSize = 128 << 10
)

// job is one DMA transfer or cache flush, run by the channel's worker.
type job struct {
	drive *drive
	flush bool
	write bool // memory → back-end (ATA writes)
	atapi bool // completes as an ATAPI command
	be    block.Backend
	off   int64  // byte offset in be
	n     int64  // bytes to move
	data  []byte // or: bytes to copy to memory (ATAPI replies)

	gen     uint64
	started bool
}

func (ch *channel) bmRead(off int) byte {
	switch off {
	case 0:
		return ch.bmCmd
	case 2:
		return ch.bmStatus
	case 4, 5, 6, 7:
		return byte(ch.prd >> (8 * (off - 4)))
	}
	return 0
}

func (ch *channel) bmWrite(off int, v byte) {
	switch off {
	case 0:
		old := ch.bmCmd
		ch.bmCmd = v & (bmStart | bmToMem)
		switch {
		case v&bmStart != 0 && old&bmStart == 0:
			ch.bmStatus |= bmActive
			if ch.job != nil {
				ch.kickWorker()
			}
		case v&bmStart == 0 && old&bmStart != 0:
			// Stopping the engine aborts a transfer in flight; the
			// drive stays busy until the host resets it, as it would
			// on hardware that lost its DMA partner.
			ch.bmStatus &^= bmActive
			if ch.job != nil && ch.job.started && !ch.job.flush {
				ch.gen++
				ch.job = nil
			}
		}
	case 2:
		ch.bmStatus = ch.bmStatus&^bmDrvCap | v&bmDrvCap
		ch.bmStatus &^= v & (bmError | bmINTR)
	case 4, 5, 6, 7:
		shift := 8 * (off - 4)
		ch.prd = ch.prd&^(0xff<<shift) | uint32(v)<<shift
		ch.prd &^= 3
	}
}

// submit queues j for the worker; a DMA transfer waits for the bus
// master's start bit, a flush runs at once.
func (ch *channel) submit(j *job) {
	j.gen = ch.gen
	ch.job = j
	if j.flush || ch.bmCmd&bmStart != 0 {
		ch.kickWorker()
	}
}

func (ch *channel) kickWorker() {
	// A write to an eventfd fails only when its counter would overflow,
	// which means the worker already has a wake-up pending.
	_ = ch.kick.Trigger()
}

// worker runs the channel's DMA transfers and flushes off the vCPU
// threads, one at a time.
func (ch *channel) worker() {
	c := ch.c
	defer c.wg.Done()
	buf := make([]byte, chunkSize)
	for {
		if _, err := ch.kick.Wait(); err != nil {
			return // Close closed the eventfd
		}
		select {
		case <-c.stop:
			return
		default:
		}
		c.mu.Lock()
		j := ch.job
		if j == nil || j.started || (!j.flush && ch.bmCmd&bmStart == 0) {
			c.mu.Unlock()
			continue
		}
		j.started = true
		prd := ch.prd
		c.mu.Unlock()

		if j.flush {
			err := j.drive.be.Flush()
			c.mu.Lock()
			if ch.current(j) {
				ch.job = nil
				c.stats.Flushes++
				if err != nil {
					j.drive.fail(errABRT)
				} else {
					j.drive.complete()
				}
			}
			c.mu.Unlock()
			continue
		}
		r := ch.transfer(j, prd, buf)
		if r.ok() && j.write && !j.drive.wcache {
			if err := j.be.Flush(); err != nil {
				r.ioErr = true
			}
		}
		c.mu.Lock()
		if ch.current(j) {
			ch.job = nil
			ch.finish(j, r)
		}
		c.mu.Unlock()
	}
}

// current reports whether j is still the channel's job (no reset or stop
// since it was submitted). c.mu is held.
func (ch *channel) current(j *job) bool { return ch.job == j && ch.gen == j.gen }

// xferResult is how a DMA transfer ended.
type xferResult struct {
	moved     int64
	memErr    bool // a PRD entry or buffer outside guest memory
	ioErr     bool // the back-end failed
	short     bool // the PRD table ended before the data did
	cancelled bool
	exhausted bool // the PRD table ended exactly with the data
}

func (r xferResult) ok() bool { return !r.memErr && !r.ioErr && !r.short && !r.cancelled }

// finish completes a DMA command; c.mu is held.
func (ch *channel) finish(j *job, r xferResult) {
	d := j.drive
	if j.write {
		ch.c.stats.WriteBytes += uint64(r.moved)
	} else {
		ch.c.stats.ReadBytes += uint64(r.moved)
	}
	if r.exhausted || !r.ok() {
		ch.bmStatus &^= bmActive
	}
	if r.memErr {
		ch.bmStatus |= bmError
	}
	switch {
	case j.atapi && r.ok():
		d.atapiDone()
	case j.atapi && r.ioErr:
		d.atapiFail(senseMediumError, 0x11, 0) // unrecovered read error
	case j.atapi:
		d.atapiFail(senseAbortedCommand, 0, 0)
	case r.ok():
		d.complete()
	case r.ioErr && !j.write:
		d.fail(errUNC)
	default:
		d.fail(errABRT)
	}
}

// transfer moves a job's data between its source and the PRD table's
// buffers, a chunk at a time, checking between chunks that the job was not
// reset or stopped. It runs without c.mu.
func (ch *channel) transfer(j *job, table uint32, buf []byte) xferResult {
	var r xferResult
	p := prdCursor{mem: ch.c.mem, table: table}
	total := j.n
	if j.data != nil {
		total = int64(len(j.data))
	}
	for r.moved < total {
		if ch.cancelled(j) {
			r.cancelled = true
			return r
		}
		n := min(int64(len(buf)), total-r.moved)
		b := buf[:n]
		var got int
		var err error
		if j.write {
			got, err = p.gather(b)
			if err != nil {
				r.memErr = true
			}
			if got > 0 {
				if _, werr := j.be.WriteAt(b[:got], j.off+r.moved); werr != nil {
					r.ioErr = true
					return r
				}
			}
		} else {
			if j.data != nil {
				copy(b, j.data[r.moved:])
			} else if _, rerr := j.be.ReadAt(b, j.off+r.moved); rerr != nil {
				r.ioErr = true
				return r
			}
			got, err = p.scatter(b)
			if err != nil {
				r.memErr = true
			}
		}
		r.moved += int64(got)
		if r.memErr {
			return r
		}
		if got < len(b) {
			r.short = true
			return r
		}
	}
	r.exhausted = p.left == 0 && p.eot
	return r
}

func (ch *channel) cancelled(j *job) bool {
	ch.c.mu.Lock()
	defer ch.c.mu.Unlock()
	select {
	case <-ch.c.stop:
		return true
	default:
	}
	return !ch.current(j)
}

// prdCursor walks a physical region descriptor table: entries of a 32-bit
// buffer address, a 16-bit byte count (0 means 64 KiB) and an end-of-table
// flag in bit 31 of the second word.
type prdCursor struct {
	mem   memory.DMA
	table uint32
	idx   int
	addr  uint64
	left  uint64 // bytes left in the current entry
	eot   bool   // the current entry is the last
}

// next loads the next entry; false when the table has ended.
func (p *prdCursor) next() (bool, error) {
	if p.eot || p.idx >= maxPRDs {
		return false, nil
	}
	var e [8]byte
	if _, err := p.mem.ReadAt(e[:], int64(p.table)+int64(8*p.idx)); err != nil {
		return false, err
	}
	p.idx++
	p.addr = uint64(binary.LittleEndian.Uint32(e[0:]) &^ 1)
	p.left = uint64(binary.LittleEndian.Uint16(e[4:]) &^ 1)
	if p.left == 0 {
		p.left = 64 << 10
	}
	p.eot = e[7]&0x80 != 0
	return true, nil
}

// scatter copies b into the table's buffers; it returns how many bytes
// went, fewer than len(b) when the table ends.
func (p *prdCursor) scatter(b []byte) (int, error) {
	return p.walk(b, func(seg []byte, addr uint64) error {
		_, err := p.mem.WriteAt(seg, int64(addr))
		return err
	})
}

// gather fills b from the table's buffers.
func (p *prdCursor) gather(b []byte) (int, error) {
	return p.walk(b, func(seg []byte, addr uint64) error {
		_, err := p.mem.ReadAt(seg, int64(addr))
		return err
	})
}

func (p *prdCursor) walk(b []byte, f func([]byte, uint64) error) (int, error) {
	done := 0
	for done < len(b) {
		if p.left == 0 {
			ok, err := p.next()
			if err != nil {
				return done, err
			}
			if !ok {
				return done, nil
			}
		}
		k := min(p.left, uint64(len(b)-done))
		if err := f(b[done:done+int(k)], p.addr); err != nil {
			return done, err
		}
		done += int(k)
		p.addr += k
		p.left -= k
	}
	return done, nil
}
