package qcow2

import (
	"fmt"
)

// getRef and putRef access entry i of a refcount block of the given
// width. Entries narrower than a byte are packed least significant first.
func getRef(data []byte, i uint64, bits uint32) uint64 {
	switch bits {
	case 1, 2, 4:
		per := 8 / uint64(bits)
		return uint64(data[i/per]>>((i%per)*uint64(bits))) & (1<<bits - 1)
	case 8:
		return uint64(data[i])
	case 16:
		return uint64(be.Uint16(data[i*2:]))
	case 32:
		return uint64(be.Uint32(data[i*4:]))
	default:
		return be.Uint64(data[i*8:])
	}
}

func putRef(data []byte, i uint64, bits uint32, v uint64) {
	switch bits {
	case 1, 2, 4:
		per := 8 / uint64(bits)
		shift := (i % per) * uint64(bits)
		mask := byte((1<<bits - 1) << shift)
		data[i/per] = data[i/per]&^mask | byte(v<<shift)&mask
	case 8:
		data[i] = byte(v)
	case 16:
		be.PutUint16(data[i*2:], uint16(v))
	case 32:
		be.PutUint32(data[i*4:], uint32(v))
	default:
		be.PutUint64(data[i*8:], v)
	}
}

// refBlock returns the cached refcount block of range bi, or nil if the
// range has none.
func (img *Image) refBlock(bi uint64) (*cached, error) {
	if bi >= uint64(len(img.refTable)) || img.refTable[bi] == 0 {
		return nil, nil
	}
	off := img.refTable[bi]
	if t := img.rbc.get(off); t != nil {
		return t, nil
	}
	if err := img.makeRoom(img.rbc); err != nil {
		return nil, err
	}
	t := &cached{off: off, data: make([]byte, img.cs)}
	if err := img.readMeta(t.data, off); err != nil {
		return nil, fmt.Errorf("qcow2: reading refcount block: %w", err)
	}
	img.rbc.put(t)
	return t, nil
}

// refcount returns the refcount of host cluster c.
func (img *Image) refcount(c uint64) (uint64, error) {
	t, err := img.refBlock(c / img.refPerBlock)
	if t == nil || err != nil {
		return 0, err
	}
	return getRef(t.data, c%img.refPerBlock, img.refBits), nil
}

// addRef adds delta to the refcount of host cluster c, whose refcount
// block must exist.
func (img *Image) addRef(c uint64, delta int64) (uint64, error) {
	t, err := img.refBlock(c / img.refPerBlock)
	if err != nil {
		return 0, err
	}
	if t == nil {
		return 0, fmt.Errorf("qcow2: internal error: no refcount block for cluster %d", c)
	}
	i := c % img.refPerBlock
	old := getRef(t.data, i, img.refBits)
	v := old + uint64(delta)
	switch {
	case delta < 0 && old < uint64(-delta):
		return 0, corrupt("refcount of cluster %#x would drop below zero", c<<img.cbits)
	case delta > 0 && img.refBits < 64 && v >= 1<<img.refBits:
		return 0, fmt.Errorf("qcow2: refcount of cluster %#x would overflow %d bits", c<<img.cbits, img.refBits)
	}
	putRef(t.data, i, img.refBits, v)
	t.dirty = true
	return v, nil
}

// findFree returns the first run of n clusters with refcount zero.
func (img *Image) findFree(n uint64) (uint64, error) {
	start, run := img.freeHint, uint64(0)
	firstFree := ^uint64(0)
	for c := img.freeHint; run < n; c++ {
		if c >= img.zeroFrom { // nothing was ever allocated from here on
			if run == 0 {
				start = c
			}
			firstFree = min(firstFree, start)
			break
		}
		r, err := img.refcount(c)
		if err != nil {
			return 0, err
		}
		if r != 0 {
			run = 0
			continue
		}
		firstFree = min(firstFree, c)
		if run == 0 {
			start = c
		}
		run++
	}
	if firstFree == start {
		img.freeHint = start + n
	} else {
		img.freeHint = firstFree
	}
	return start, nil
}

// missingBlocks counts the refcount ranges touched by [start, start+n)
// that have no block, and reports whether any lies beyond the table.
func (img *Image) missingBlocks(start, n uint64) (uint64, bool) {
	var k uint64
	for bi := start / img.refPerBlock; bi <= (start+n-1)/img.refPerBlock; bi++ {
		if bi >= uint64(len(img.refTable)) {
			return k, true
		}
		if img.refTable[bi] == 0 {
			k++
		}
	}
	return k, false
}

// allocate claims n contiguous host clusters and returns the offset of the
// first, and whether they are known to read as zeroes. Refcount blocks
// that the run needs are created right after it (and cover themselves).
// Call with mu held.
func (img *Image) allocate(n uint64) (uint64, bool, error) {
	if img.err != nil {
		return 0, false, img.err
	}
	var start, k uint64
	for iter := 0; ; iter++ {
		if iter > 64 {
			return 0, false, fmt.Errorf("qcow2: internal error: allocation of %d clusters does not converge", n)
		}
		s, err := img.findFree(n + k)
		if err != nil {
			return 0, false, err
		}
		k2, beyond := img.missingBlocks(s, n+k)
		if beyond {
			if err := img.growRefTable((s + n + k + 1) / img.refPerBlock); err != nil {
				return 0, false, err
			}
			img.freeHint = min(img.freeHint, s)
			continue
		}
		// Fewer blocks needed than reserved: shrink the run in place
		// (a prefix of a free run is free).
		for k2 < k {
			k = k2
			k2, _ = img.missingBlocks(s, n+k)
		}
		if k2 == k {
			start = s
			break
		}
		k = k2
		img.freeHint = min(img.freeHint, s)
	}
	fresh := start >= img.zeroFrom
	total := n + k
	// Grow the file first: if it cannot grow (a full device), nothing has
	// changed yet and the image stays usable.
	if err := img.growFile((start + total) << img.cbits); err != nil {
		return 0, false, err
	}
	// Install the new blocks at the end of the run.
	next := start + n
	for bi := start / img.refPerBlock; bi <= (start+total-1)/img.refPerBlock; bi++ {
		if img.refTable[bi] != 0 {
			continue
		}
		if err := img.makeRoom(img.rbc); err != nil {
			return 0, false, err
		}
		img.rbc.put(&cached{off: next << img.cbits, data: make([]byte, img.cs), dirty: true})
		img.meta[next] = true
		img.refTable[bi] = next << img.cbits
		img.refDirty[bi*8/512] = true
		next++
	}
	for c := start; c < start+total; c++ {
		if _, err := img.addRef(c, 1); err != nil {
			return 0, false, img.fail(err)
		}
	}
	img.zeroFrom = max(img.zeroFrom, start+total)
	img.freeHint = min(img.freeHint, start+total)
	return start << img.cbits, fresh, nil
}

// growRefTable moves the refcount table to the end of the image with room
// for at least minEntries blocks, plus blocks for its own clusters. The
// new table and blocks are made durable before the header points at them.
// Call with mu held.
func (img *Image) growRefTable(minEntries uint64) error {
	old := uint64(len(img.refTable))
	entries := max(minEntries+1, old*2)
	e := img.zeroFrom
	perCluster := img.cs / 8
	var t, m uint64
	for iter := 0; ; iter++ {
		if iter > 64 {
			return fmt.Errorf("qcow2: internal error: refcount table growth does not converge")
		}
		entries = max(entries, (e+t+m)/img.refPerBlock+1)
		t2 := (entries + perCluster - 1) / perCluster
		var m2 uint64
		for bi := e / img.refPerBlock; bi <= (e+t2+m-1)/img.refPerBlock; bi++ {
			if bi >= old || img.refTable[bi] == 0 {
				m2++
			}
		}
		if t2 == t && m2 == m {
			break
		}
		t, m = t2, m2
	}
	entries = t * perCluster
	if entries*8 > maxRefTableBytes {
		return fmt.Errorf("qcow2: image too large: refcount table would exceed %d bytes", maxRefTableBytes)
	}
	table := make([]uint64, entries)
	copy(table, img.refTable)
	next := e + t
	for bi := e / img.refPerBlock; bi <= (e+t+m-1)/img.refPerBlock; bi++ {
		if table[bi] != 0 {
			continue
		}
		if err := img.makeRoom(img.rbc); err != nil {
			return err
		}
		img.rbc.put(&cached{off: next << img.cbits, data: make([]byte, img.cs), dirty: true})
		img.meta[next] = true
		table[bi] = next << img.cbits
		next++
	}
	oldOff, oldClusters := img.h.refTableOffset, uint64(img.h.refTableClusters)
	img.refTable = table
	for c := e; c < e+t+m; c++ {
		if _, err := img.addRef(c, 1); err != nil {
			return img.fail(err)
		}
	}
	img.zeroFrom = e + t + m
	if err := img.growFile(img.zeroFrom << img.cbits); err != nil {
		return img.fail(err)
	}
	if err := img.writeTables(img.rbc); err != nil {
		return err
	}
	buf := make([]byte, t*img.cs)
	for i, v := range table {
		be.PutUint64(buf[i*8:], v)
	}
	if err := img.writeMeta(buf, e<<img.cbits); err != nil {
		return err
	}
	if err := img.sync(); err != nil {
		return err
	}
	img.h.refTableOffset, img.h.refTableClusters = e<<img.cbits, uint32(t)
	clear(img.refDirty)
	if err := img.writeHeader(); err != nil {
		return img.fail(err)
	}
	img.freeRange(oldOff, oldClusters*img.cs)
	return nil
}

// applyFrees drops one reference from every queued cluster, once the
// tables that referenced them are durable (the caller has written back),
// and makes the new refcounts durable. Call with mu and ioLock held.
func (img *Image) applyFrees() error {
	for _, c := range img.pendingFree {
		v, err := img.addRef(c, -1)
		if err != nil {
			return img.fail(err)
		}
		if v == 0 {
			// A freed L2 table must not be served from the cache
			// once its cluster holds something else.
			img.l2c.drop(c << img.cbits)
			delete(img.meta, c)
			img.freeHint = min(img.freeHint, c)
		}
	}
	img.pendingFree = img.pendingFree[:0]
	if err := img.writeTables(img.rbc); err != nil {
		return err
	}
	return img.sync()
}
