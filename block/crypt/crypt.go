package crypt

import (
	"errors"
	"fmt"
	"io"
	"math/bits"
	"sync"
	"sync/atomic"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/filter"
)

// Options configure an open encrypted disk.
type Options struct {
	// Discard passes discards and write-zeroes of whole sectors to the child
	// as write-zeroes with unmap (like dm-crypt's allow_discards). It makes
	// trims free storage, but the child then shows which ranges the guest
	// freed or zeroed: off by default.
	Discard bool
}

// Disk is the interposer: the plaintext view of a LUKS2 volume on its
// child. Use Open; the block.Backend it returns exposes Discard and
// WriteZeroes only when Options.Discard is set and the child can write
// zeroes, and never Resize.
type Disk struct {
	filter.Base
	opts   Options
	c      *sectorCipher
	key    []byte // the volume key, wiped on Close
	offset int64  // of the data segment in the child
	size   int64  // of the data segment, whole sectors
	ss     int64  // sector size
	uuid   string

	// locks serialise requests on the same sectors: a partial-sector write
	// reads, merges and rewrites the whole sector, and a read must not
	// decrypt a sector half-written by the child. Sector s uses lock
	// s%nLocks; a request takes its locks in ascending order.
	locks  [nLocks]sync.RWMutex
	closed atomic.Bool
	bufs   sync.Pool // *[]byte of chunk bytes, for ciphertext
}

const (
	nLocks = 64
	// chunk bounds the bounce buffer of one step of a request; larger
	// requests go in several steps.
	chunk = 1 << 20
)

var _ filter.Interposer = (*Disk)(nil)

// Open unlocks the LUKS2 volume on child with passphrase and returns its
// plaintext view. The caller keeps passphrase (and wipes it); on success
// the returned back-end owns child, on error child is left open.
func Open(child block.Backend, passphrase []byte, o Options) (block.Backend, error) {
	d, err := OpenDisk(child, passphrase, o)
	if err != nil {
		return nil, err
	}
	caps := filter.Caps{}
	if _, ok := child.(block.ZeroWriter); ok && o.Discard {
		caps.Discard, caps.WriteZeroes = true, true
	}
	return filter.View(d, caps), nil
}

// OpenDisk is Open returning the Disk itself (every method present; use
// Open for a back-end whose capabilities are honest).
func OpenDisk(child block.Backend, passphrase []byte, o Options) (*Disk, error) {
	v, err := ReadVolume(child)
	if err != nil {
		return nil, err
	}
	key, _, err := v.Unlock(passphrase)
	if err != nil {
		return nil, err
	}
	seg := v.hdr.meta.Segments["0"]
	c, err := newSectorCipher(seg.Encryption, key, seg.SectorSize, uint64(seg.IVTweak))
	if err != nil {
		clear(key)
		return nil, err
	}
	size, err := seg.dataSize(child.Size())
	if err != nil {
		clear(key)
		return nil, err
	}
	d := &Disk{Base: filter.Base{Child: child}, opts: o, c: c, key: key, offset: int64(seg.Offset), size: size, ss: int64(seg.SectorSize), uuid: v.hdr.uuid}
	d.bufs.New = func() any { b := make([]byte, chunk); return &b }
	return d, nil
}

// SectorSize returns the data's sector size.
func (d *Disk) SectorSize() int { return int(d.ss) }

// Size returns the size of the plaintext.
func (d *Disk) Size() int64 { return d.size }

// lock takes the locks of the sectors of [off, off+n) (n > 0).
func (d *Disk) lock(off, n int64, write bool) (unlock func()) {
	first, last := off/d.ss, (off+n-1)/d.ss
	var set uint64
	if last-first+1 >= nLocks {
		set = ^uint64(0)
	} else {
		for s := first; s <= last; s++ {
			set |= 1 << (s % nLocks)
		}
	}
	for m := set; m != 0; m &= m - 1 {
		i := bits.TrailingZeros64(m)
		if write {
			d.locks[i].Lock()
		} else {
			d.locks[i].RLock()
		}
	}
	return func() {
		for m := set; m != 0; m &= m - 1 {
			i := bits.TrailingZeros64(m)
			if write {
				d.locks[i].Unlock()
			} else {
				d.locks[i].RUnlock()
			}
		}
	}
}

// ReadAt reads plaintext: the covering sectors are read from the child and
// decrypted, in place when p is whole sectors, else through a buffer.
func (d *Disk) ReadAt(p []byte, off int64) (int, error) {
	if d.closed.Load() {
		return 0, block.ErrClosed
	}
	if off < 0 {
		return 0, fmt.Errorf("crypt: read at negative offset %d", off)
	}
	if off >= d.size {
		return 0, io.EOF
	}
	want := p
	if int64(len(p)) > d.size-off {
		want = p[:d.size-off]
	}
	done := 0
	for done < len(want) {
		n, err := d.readChunk(want[done:], off+int64(done))
		done += n
		if err != nil {
			return done, err
		}
	}
	if len(want) < len(p) {
		return done, io.EOF
	}
	return done, nil
}

// readChunk reads at most one chunk's worth of p and returns how much.
func (d *Disk) readChunk(p []byte, off int64) (int, error) {
	a0 := off - off%d.ss
	if off == a0 && int64(len(p)) >= d.ss {
		// Whole sectors straight into p.
		n := min(int64(len(p))/d.ss*d.ss, chunk)
		unlock := d.lock(off, n, false)
		defer unlock()
		if err := d.readFull(p[:n], d.offset+off); err != nil {
			return 0, err
		}
		d.c.decryptPar(p[:n], p[:n], off)
		return int(n), nil
	}
	end := min(off+int64(len(p)), a0+chunk)
	a1 := (end + d.ss - 1) / d.ss * d.ss
	bp := d.bufs.Get().(*[]byte)
	defer d.bufs.Put(bp)
	buf := (*bp)[:a1-a0]
	unlock := d.lock(a0, a1-a0, false)
	defer unlock()
	if err := d.readFull(buf, d.offset+a0); err != nil {
		return 0, err
	}
	d.c.decryptPar(buf, buf, a0)
	n := copy(p[:end-off], buf[off-a0:])
	clear(buf)
	return n, nil
}

// readFull reads ciphertext: the segment lies within the child, so a short
// read is an error.
func (d *Disk) readFull(p []byte, off int64) error {
	n, err := d.Child.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("crypt: reading the encrypted data: %w", err)
}

// WriteAt encrypts p into the covering sectors; a sector p covers only in
// part is read, decrypted and merged first.
func (d *Disk) WriteAt(p []byte, off int64) (int, error) {
	if d.closed.Load() {
		return 0, block.ErrClosed
	}
	if d.ReadOnly() {
		return 0, block.ErrReadOnly
	}
	if err := block.CheckRange(off, int64(len(p)), d.size); err != nil {
		return 0, err
	}
	done := 0
	for done < len(p) {
		n, err := d.writeChunk(p[done:], off+int64(done))
		done += n
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

func (d *Disk) writeChunk(p []byte, off int64) (int, error) {
	a0 := off - off%d.ss
	end := min(off+int64(len(p)), a0+chunk)
	a1 := (end + d.ss - 1) / d.ss * d.ss
	bp := d.bufs.Get().(*[]byte)
	defer d.bufs.Put(bp)
	buf := (*bp)[:a1-a0]
	defer clear(buf)
	unlock := d.lock(a0, a1-a0, true)
	defer unlock()
	if off != a0 {
		if err := d.readSector(buf[:d.ss], a0); err != nil {
			return 0, err
		}
	}
	if end%d.ss != 0 && (a1-d.ss != a0 || off == a0) {
		if err := d.readSector(buf[a1-a0-d.ss:], a1-d.ss); err != nil {
			return 0, err
		}
	}
	n := copy(buf[off-a0:], p[:end-off])
	d.c.encryptPar(buf, buf, a0)
	if _, err := d.Child.WriteAt(buf, d.offset+a0); err != nil {
		return 0, err
	}
	return n, nil
}

// readSector reads and decrypts the sector at segment offset off into p.
func (d *Disk) readSector(p []byte, off int64) error {
	if err := d.readFull(p, d.offset+off); err != nil {
		return err
	}
	d.c.decrypt(p, p, off)
	return nil
}

// ReadvAt reads into bufs as ReadAt of their concatenation would.
func (d *Disk) ReadvAt(bufs [][]byte, off int64) (int, error) {
	total := 0
	for _, p := range bufs {
		if len(p) == 0 {
			continue
		}
		n, err := d.ReadAt(p, off)
		total += n
		off += int64(n)
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// WritevAt writes bufs as WriteAt of their concatenation would.
func (d *Disk) WritevAt(bufs [][]byte, off int64) (int, error) {
	if d.closed.Load() {
		return 0, block.ErrClosed
	}
	var n int64
	for _, p := range bufs {
		n += int64(len(p))
	}
	if err := block.CheckRange(off, n, d.size); err != nil {
		return 0, err
	}
	total := 0
	for _, p := range bufs {
		m, err := d.WriteAt(p, off)
		total += m
		off += int64(m)
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// Flush forwards: the ciphertext of every completed write is in the child.
func (d *Disk) Flush() error {
	if d.closed.Load() {
		return block.ErrClosed
	}
	return d.Child.Flush()
}

// Close wipes the volume key and closes the child.
func (d *Disk) Close() error {
	if d.closed.Swap(true) {
		return block.ErrClosed
	}
	clear(d.key)
	d.c.wipe()
	d.key, d.c = nil, nil
	return d.Child.Close()
}

// zeroMiddle turns the whole sectors of [off, off+n) into zero ciphertext
// in the child (which read back as zeroes) and returns the partial head
// and tail it left out.
func (d *Disk) zeroMiddle(off, n int64, unmap bool) (headEnd, tailStart int64, err error) {
	s0 := (off + d.ss - 1) / d.ss * d.ss
	s1 := (off + n) / d.ss * d.ss
	if s1 <= s0 {
		return off + n, off + n, nil
	}
	z, ok := d.Child.(block.ZeroWriter)
	if !ok {
		return 0, 0, errors.ErrUnsupported
	}
	unlock := d.lock(s0, s1-s0, true)
	err = z.WriteZeroes(d.offset+s0, s1-s0, unmap)
	unlock()
	return s0, s1, err
}

// Discard frees the whole sectors of the range in the child (as
// write-zeroes with unmap, so that they read back as zeroes); partial
// sectors at either end keep their data, as Discard allows.
func (d *Disk) Discard(off, n int64) error {
	if d.closed.Load() {
		return block.ErrClosed
	}
	if err := block.CheckRange(off, n, d.size); err != nil {
		return err
	}
	if !d.opts.Discard {
		return nil
	}
	_, _, err := d.zeroMiddle(off, n, true)
	return err
}

// WriteZeroes zeroes whole sectors in the child and writes encrypted zeroes
// into partial ones.
func (d *Disk) WriteZeroes(off, n int64, unmap bool) error {
	if d.closed.Load() {
		return block.ErrClosed
	}
	if d.ReadOnly() {
		return block.ErrReadOnly
	}
	if err := block.CheckRange(off, n, d.size); err != nil {
		return err
	}
	if !d.opts.Discard {
		return d.writeZeroBytes(off, n)
	}
	h, t, err := d.zeroMiddle(off, n, unmap)
	if err != nil {
		return err
	}
	if err := d.writeZeroBytes(off, h-off); err != nil {
		return err
	}
	return d.writeZeroBytes(t, off+n-t)
}

func (d *Disk) writeZeroBytes(off, n int64) error {
	z := make([]byte, min(n, chunk))
	for n > 0 {
		m := min(n, int64(len(z)))
		if _, err := d.WriteAt(z[:m], off); err != nil {
			return err
		}
		off += m
		n -= m
	}
	return nil
}

// Resize is not offered: grown space would read as noise, not zeroes.
func (d *Disk) Resize(int64) error { return errors.ErrUnsupported }
