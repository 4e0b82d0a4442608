package blk

import (
	"encoding/binary"
	"errors"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/virtio"
)

// worker holds the scratch space of one request worker, so that serving a
// request allocates nothing.
type worker struct {
	d    *Device
	stop <-chan struct{} // closed by Reset: long requests give up between chunks
	op   op              // the request's kind, for its latency
	data [][]byte        // the request's data buffers, sub-slices of guest memory
	segs [MaxSegments * SegmentSize]byte
}

// handle serves one chain and returns the number of bytes written into its
// writable buffers, which is what goes into the used ring.
//
// Layout (spec 5.2.6): a 16-byte header, data, then one status byte. The
// header and any data for the device are readable; data for the driver
// and the status byte are writable. The status is the last byte of the
// last writable buffer. A device "MUST NOT" rely on how the driver split
// these into descriptors, so everything is addressed as byte offsets of
// the readable and writable concatenations.
func (w *worker) handle(c *virtio.Chain) uint32 {
	d := w.d
	wlen := c.Writable.Len()
	if wlen == 0 {
		// Nowhere to put a status: the driver gets the chain back with
		// nothing written, which it can only treat as an error.
		d.stats.noStatus.Add(1)
		return 0
	}
	last := c.Writable[len(c.Writable)-1]
	status := w.serve(c.Readable, c.Writable, wlen-1)
	last[len(last)-1] = status
	switch status {
	case StatusIOErr:
		d.stats.ioErrors.Add(1)
	case StatusUnsupp:
		d.stats.unsupported.Add(1)
	}
	// wlen ≤ 4 GiB: the core bounds a chain's writable length.
	return uint32(wlen)
}

// tryResult is what tryRead did.
type tryResult int

const (
	tryNot         tryResult = iota // not a read it could try: a worker serves it
	tryServed                       // served: the chain is ready for the used ring
	tryMissed                       // the back-end would have waited: a worker serves it
	tryUnsupported                  // the back-end can never serve tries: stop trying
)

// tryRead serves c if it is a read that tr can serve without waiting,
// and returns the used length. Otherwise a worker serves the chain from
// the start, and the guest sees nothing of the try but what it may have
// put in the read's data buffers, which the read fills anyway. It counts
// only what it served: a worker counts the rest.
func (w *worker) tryRead(c *virtio.Chain, tr block.TryReader) (uint32, tryResult) {
	d := w.d
	wlen := c.Writable.Len()
	inLen := wlen - 1
	if inLen <= 0 {
		return 0, tryNot
	}
	var hdr [HeaderSize]byte
	if n, _ := c.Readable.ReadAt(hdr[:], 0); n < HeaderSize {
		return 0, tryNot
	}
	le := binary.LittleEndian
	if le.Uint32(hdr[0:]) != TypeIn {
		return 0, tryNot
	}
	sector := le.Uint64(hdr[8:])
	w.data = span(w.data[:0], c.Writable, 0, inLen)
	if !w.checkData(inLen, sector) {
		return 0, tryNot
	}
	if _, err := tr.TryReadvAt(w.data, int64(sector*SectorSize)); err != nil {
		if errors.Is(err, errors.ErrUnsupported) {
			return 0, tryUnsupported
		}
		return 0, tryMissed
	}
	d.stats.reads.Add(1)
	d.stats.readBytes.Add(uint64(inLen))
	d.stats.inlineReads.Add(1)
	last := c.Writable[len(c.Writable)-1]
	last[len(last)-1] = StatusOK
	// wlen ≤ 4 GiB: the core bounds a chain's writable length.
	return uint32(wlen), tryServed
}

// backendError reports a request the back-end failed (not one the guest
// got wrong) to Config.OnBackendError and answers IOERR.
func (d *Device) backendError(op string, err error) byte {
	d.stats.backendErrors.Add(1)
	if f := d.cfg.OnBackendError; f != nil {
		f(op, err)
	}
	return StatusIOErr
}

// serve executes a request and returns its status. in is the driver's
// writable area; its first inLen bytes are the data area (the status byte
// follows).
func (w *worker) serve(out, in virtio.Buffers, inLen int64) byte {
	d := w.d
	var hdr [HeaderSize]byte
	if n, _ := out.ReadAt(hdr[:], 0); n < HeaderSize {
		d.stats.other.Add(1)
		return StatusIOErr
	}
	le := binary.LittleEndian
	typ := le.Uint32(hdr[0:])
	sector := le.Uint64(hdr[8:])
	outLen := out.Len() - HeaderSize
	features := d.negotiate.Load()

	switch typ {
	case TypeIn:
		w.op = opRead
		d.stats.reads.Add(1)
		w.data = span(w.data[:0], in, 0, inLen)
		if !w.checkData(inLen, sector) {
			return StatusIOErr
		}
		if _, err := block.ReadvAt(d.be, w.data, int64(sector*SectorSize)); err != nil {
			return d.backendError("read", err)
		}
		d.stats.readBytes.Add(uint64(inLen))
		return StatusOK

	case TypeOut:
		w.op = opWrite
		d.stats.writes.Add(1)
		if d.readOnly {
			return StatusIOErr
		}
		w.data = span(w.data[:0], out, HeaderSize, outLen)
		if !w.checkData(outLen, sector) {
			return StatusIOErr
		}
		if _, err := block.WritevAt(d.be, w.data, int64(sector*SectorSize)); err != nil {
			return d.backendError("write", err)
		}
		if !d.writeback() {
			if err := d.be.Flush(); err != nil {
				return d.backendError("flush", err)
			}
		}
		d.stats.writtenBytes.Add(uint64(outLen))
		return StatusOK

	case TypeFlush:
		w.op = opFlush
		d.stats.flushes.Add(1)
		if features&FeatureFlush == 0 {
			return StatusUnsupp
		}
		if err := d.be.Flush(); err != nil {
			return d.backendError("flush", err)
		}
		return StatusOK

	case TypeGetID:
		d.stats.getIDs.Add(1)
		// The driver's buffer is normally exactly IDBytes; write what
		// fits. The serial is zero-padded, and not NUL-terminated when it
		// is IDBytes long, as the specification says.
		n := min(inLen, IDBytes)
		in.WriteAt(d.serial[:n], 0)
		return StatusOK

	case TypeDiscard, TypeWriteZeroes:
		return w.zeroOrDiscard(typ, out, outLen, features)
	}
	d.stats.other.Add(1)
	return StatusUnsupp
}

// checkData validates a read or write of n bytes at sector: whole sectors,
// within the capacity, and no buffer above size_max.
func (w *worker) checkData(n int64, sector uint64) bool {
	d := w.d
	if n%SectorSize != 0 || !capacityOK(sector, uint64(n)/SectorSize, d.capacity.Load()) {
		return false
	}
	if m := d.cfg.SizeMax; m != 0 {
		for _, b := range w.data {
			if uint64(len(b)) > uint64(m) {
				return false
			}
		}
	}
	return true
}

// zeroOrDiscard serves DISCARD and WRITE_ZEROES. The segments are copied
// out of guest memory and all validated before any is executed, so that a
// bad segment fails the request without a partial effect.
func (w *worker) zeroOrDiscard(typ uint32, out virtio.Buffers, outLen int64, features uint64) byte {
	d := w.d
	feature, maxSeg, maxSectors := FeatureDiscard, d.cfg.MaxDiscardSegments, d.cfg.MaxDiscardSectors
	w.op = opDiscard
	if typ == TypeWriteZeroes {
		w.op = opWriteZeroes
		d.stats.writeZeroes.Add(1)
		feature, maxSeg, maxSectors = FeatureWriteZeroes, d.cfg.MaxWriteZeroesSegments, d.cfg.MaxWriteZeroesSectors
	} else {
		d.stats.discards.Add(1)
	}
	if features&feature == 0 || d.features&feature == 0 {
		return StatusUnsupp
	}
	if d.readOnly {
		return StatusIOErr
	}
	if outLen <= 0 || outLen%SegmentSize != 0 {
		return StatusIOErr
	}
	if outLen/SegmentSize > int64(maxSeg) {
		return StatusUnsupp
	}
	segs := w.segs[:outLen]
	if _, err := out.ReadAt(segs, HeaderSize); err != nil {
		return StatusIOErr
	}
	le := binary.LittleEndian
	capacity := d.capacity.Load()
	for s := segs; len(s) > 0; s = s[SegmentSize:] {
		sector, n, flags := le.Uint64(s), le.Uint32(s[8:]), le.Uint32(s[12:])
		switch {
		case flags&^segmentUnmap != 0:
			return StatusUnsupp // reserved flag bits
		case typ == TypeDiscard && flags&segmentUnmap != 0:
			return StatusUnsupp // unmap is for write zeroes only
		case n > maxSectors || !capacityOK(sector, uint64(n), capacity):
			return StatusIOErr
		}
	}
	for s := segs; len(s) > 0; s = s[SegmentSize:] {
		sector, n, flags := le.Uint64(s), le.Uint32(s[8:]), le.Uint32(s[12:])
		off, length := int64(sector*SectorSize), int64(n)*SectorSize
		// One request may cover 32 segments of 1 GiB: it goes to the
		// back-end in chunks, and a reset stops it between two (the
		// driver that reset the device takes nothing back, and must not
		// wait for 32 GiB of zeroes first).
		for length > 0 {
			if w.stopped() {
				return StatusIOErr
			}
			k := min(length, zeroChunk)
			var err error
			switch {
			case typ == TypeDiscard:
				err = d.discard.Discard(off, k)
			case d.zeroer != nil:
				err = d.zeroer.WriteZeroes(off, k, flags&segmentUnmap != 0)
			default:
				err = writeZeroes(d.be, off, k)
			}
			if err != nil {
				return d.backendError("discard or write zeroes", err)
			}
			off, length = off+k, length-k
		}
	}
	if typ == TypeWriteZeroes && !d.writeback() {
		if err := d.be.Flush(); err != nil {
			return d.backendError("flush", err)
		}
	}
	return StatusOK
}

// zeroChunk is how much of a discard or write-zeroes segment goes to the
// back-end at once: the most a reset waits for.
const zeroChunk = 64 << 20

// stopped reports whether the device is being reset.
func (w *worker) stopped() bool {
	select {
	case <-w.stop:
		return true
	default:
		return false
	}
}

// zeroBuf is the source of zeroes for back-ends without a ZeroWriter.
var zeroBuf = make([]byte, 64<<10)

func writeZeroes(be block.Backend, off, n int64) error {
	for n > 0 {
		k := min(n, int64(len(zeroBuf)))
		if _, err := be.WriteAt(zeroBuf[:k], off); err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return nil
}

// span appends to dst the sub-slices of bufs covering n bytes from off of
// their concatenation. It copies no data: the result aliases bufs.
func span(dst [][]byte, bufs virtio.Buffers, off, n int64) [][]byte {
	for _, b := range bufs {
		if n <= 0 {
			break
		}
		if off >= int64(len(b)) {
			off -= int64(len(b))
			continue
		}
		b = b[off:]
		off = 0
		if int64(len(b)) > n {
			b = b[:n]
		}
		dst = append(dst, b)
		n -= int64(len(b))
	}
	return dst
}
