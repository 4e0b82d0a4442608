// Package qcow2 reads and writes QEMU's qcow2 disk image format, versions
// 2 and 3, on top of any block.Backend that holds the image file.
//
// What is supported: backing files (any block.Backend, opened through a
// caller's function), zero clusters, reading deflate-compressed clusters,
// internal snapshots, any refcount width, cluster sizes 512 B to 2 MiB.
// Not supported: encryption, external data files, extended L2 entries,
// zstd compression, writing compressed clusters, lazy refcounts, bitmaps
// (their autoclear bit is cleared when an image is opened writable, as
// QEMU does for extensions it does not keep consistent).
//
// Crash safety. Guest data is written in place or into freshly allocated
// clusters; metadata changes live in a write-back cache and reach the
// file at Flush (or when the cache must evict), in dependency order with a
// flush of the file between the levels: refcount blocks, then the refcount
// table, then L2 tables, then the L1 table. A cluster is therefore counted
// before anything points at it. References are dropped the other way
// round: a freed cluster's refcount is decremented only after the tables
// that no longer reference it are durable, so a crash during guest I/O can
// only leak clusters, which `qemu-img check -r leaks` reclaims.
//
// Snapshot operations change refcounts and copied flags, which live in
// different clusters, so no order makes them atomic (QEMU has the same
// window). They are ordered so that a crash can leave only over-cautious
// flags (refcount 1 without the copied flag: an unneeded copy on write,
// reported by qemu-img check and fixed by -r all), never a flag that would
// let a write reach a cluster a snapshot still uses.
//
// Hostile images: every offset, size and count read from the file is
// checked before use, tables are bounded as QEMU bounds them, and guest
// data is never written into a cluster known to hold metadata.
package qcow2

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/viovmm/vio/block"
)

var be = binary.BigEndian

// Options configure Open.
type Options struct {
	ReadOnly bool
	// OpenBacking opens the image's backing file, given its name as
	// recorded in the image and the format recorded with it ("" if none).
	// Resolving a relative name is the caller's job. The returned back-end
	// is owned (and closed) by the Image. Required when the image has a
	// backing file.
	OpenBacking func(name, format string) (block.Backend, error)
	// CacheBytes bounds each metadata cache (L2 tables, refcount blocks).
	// Zero means 32 MiB each, enough for random I/O over 256 GiB with
	// 64 KiB clusters.
	CacheBytes int
}

// Image is an open qcow2 image. It implements block.Backend and the
// Discarder, ZeroWriter and Resizer capabilities.
type Image struct {
	file     block.Backend
	backing  block.Backend
	readOnly bool
	size     atomic.Int64
	closed   atomic.Bool

	// ioLock is held shared by every guest I/O, for its whole duration
	// including the unlocked data transfer, and exclusively by operations
	// that change which guest data a host cluster holds (applying deferred
	// frees, snapshots, resize): those must wait for transfers that looked
	// up a host offset before the change. Taken before mu.
	ioLock sync.RWMutex

	mu          sync.Mutex // guards everything below
	h           *header
	cbits       uint32
	cs          uint64
	l2Entries   uint64
	l1          []uint64
	l1Dirty     map[uint64]bool // dirty 512-byte sectors of the L1 table
	refTable    []uint64
	refDirty    map[uint64]bool // dirty sectors of the refcount table
	refBits     uint32
	refPerBlock uint64
	l2c, rbc    *tableCache
	pendingFree []uint64 // host clusters to decrement once unreferenced on disk
	freeHint    uint64   // no free cluster below this index
	fileSize    int64    // size of the underlying file as we grew it
	zeroFrom    uint64   // clusters at and above this index are zero on disk
	snaps       []snapshot
	err         error // sticky error after a failed metadata write
	// meta holds the clusters known to hold metadata. Guest data is never
	// written into them, whatever a (hostile or damaged) L2 entry or
	// refcount says, as QEMU's overlap checks also ensure.
	meta map[uint64]bool
	// inflight marks guest clusters whose new data is being written
	// outside mu; the channel closes when the L2 entry is updated.
	inflight map[uint64]chan struct{}
}

var (
	_ block.Backend          = (*Image)(nil)
	_ block.Discarder        = (*Image)(nil)
	_ block.ZeroWriter       = (*Image)(nil)
	_ block.Resizer          = (*Image)(nil)
	_ block.ReadOnlyReporter = (*Image)(nil)
)

// Probe reports whether the first bytes of a file are a qcow2 header.
func Probe(first []byte) bool { return len(first) >= 4 && be.Uint32(first) == magic }

// Open opens the qcow2 image stored in file. On success the Image owns
// file and closes it on Close.
func Open(file block.Backend, opts Options) (*Image, error) {
	return open(file, opts, false)
}

func open(file block.Backend, opts Options, noBacking bool) (*Image, error) {
	fileSize := file.Size()
	first := make([]byte, min(fileSize, 1<<maxClusterBits))
	if len(first) < v2HeaderLen {
		return nil, corrupt("file is %d bytes, too short for a qcow2 header", fileSize)
	}
	if _, err := file.ReadAt(first[:v2HeaderLen], 0); err != nil {
		return nil, fmt.Errorf("qcow2: reading header: %w", err)
	}
	if !Probe(first) {
		return nil, errors.New("qcow2: not a qcow2 image (bad magic)")
	}
	if cb := be.Uint32(first[20:]); cb >= minClusterBits && cb <= maxClusterBits {
		first = first[:min(int64(1)<<cb, fileSize)]
	}
	if _, err := file.ReadAt(first, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("qcow2: reading header: %w", err)
	}
	h, err := parseHeader(first, fileSize)
	if err != nil {
		return nil, err
	}
	img := &Image{
		file:     file,
		readOnly: opts.ReadOnly,
		h:        h,
		cbits:    h.clusterBits,
		cs:       1 << h.clusterBits,
		l1Dirty:  map[uint64]bool{},
		refDirty: map[uint64]bool{},
		fileSize: fileSize,
		meta:     map[uint64]bool{},
		inflight: map[uint64]chan struct{}{},
	}
	if ro, ok := file.(block.ReadOnlyReporter); ok && ro.ReadOnly() && !opts.ReadOnly {
		return nil, fmt.Errorf("qcow2: image file is read-only: %w", block.ErrReadOnly)
	}
	if !opts.ReadOnly {
		if h.incompatible&incompatCorrupt != 0 {
			return nil, fmt.Errorf("%w: the image is marked corrupt; open it read-only or repair it with qemu-img check -r all", ErrCorrupt)
		}
		if h.incompatible&incompatDirty != 0 {
			return nil, fmt.Errorf("%w: the image was not closed cleanly with lazy refcounts; repair it with qemu-img check -r all", ErrUnsupported)
		}
		if _, ok := file.(block.Resizer); !ok {
			return nil, fmt.Errorf("qcow2: image file cannot grow, so it cannot be opened writable: %w", errors.ErrUnsupported)
		}
	}
	img.l2Entries = img.cs / 8
	img.refBits = 1 << h.refcountOrder
	img.refPerBlock = img.cs * 8 / uint64(img.refBits)
	img.zeroFrom = (uint64(fileSize) + img.cs - 1) >> img.cbits
	cacheBytes := opts.CacheBytes
	if cacheBytes <= 0 {
		cacheBytes = 32 << 20
	}
	img.l2c = newTableCache(cacheBytes / int(img.cs))
	img.rbc = newTableCache(cacheBytes / int(img.cs))
	img.size.Store(int64(h.size))

	if img.l1, err = img.readTable(h.l1Offset, uint64(h.l1Size)); err != nil {
		return nil, fmt.Errorf("qcow2: reading L1 table: %w", err)
	}
	if img.refTable, err = img.readTable(h.refTableOffset, uint64(h.refTableClusters)*img.cs/8); err != nil {
		return nil, fmt.Errorf("qcow2: reading refcount table: %w", err)
	}
	for i, e := range img.refTable {
		if e&(img.cs-1) != 0 || e >= uint64(fileSize)+img.cs {
			return nil, corrupt("refcount table entry %d (%#x) invalid", i, e)
		}
	}
	if err := img.loadSnapshots(); err != nil {
		return nil, err
	}
	img.markMeta(0, img.cs)
	img.markMeta(h.l1Offset, uint64(h.l1Size)*8)
	img.markMeta(h.refTableOffset, uint64(h.refTableClusters)*img.cs)
	for _, e := range img.refTable {
		img.markMeta(e, img.cs)
	}
	for _, e := range img.l1 {
		// Only offsets inside the file: the map stays bounded by the
		// file's cluster count, whatever the L1 table holds.
		if off := e & l1OffsetMask; off < uint64(fileSize) {
			img.markMeta(off, img.cs)
		}
	}
	if h.nbSnapshots > 0 {
		img.markMeta(h.snapshotsOffset, uint64(len(encodeSnapshots(img.snaps))))
	}
	for _, s := range img.snaps {
		img.markMeta(s.l1Offset, uint64(s.l1Size)*8)
	}
	if !opts.ReadOnly && h.version >= 3 && h.autoclear != 0 {
		h.autoclear = 0
		if err := img.writeHeader(); err != nil {
			return nil, err
		}
	}
	if h.backingFile != "" && !noBacking {
		if opts.OpenBacking == nil {
			return nil, fmt.Errorf("qcow2: the image has backing file %q but no way to open it was given", h.backingFile)
		}
		b, err := opts.OpenBacking(h.backingFile, h.backingFormat)
		if err != nil {
			return nil, fmt.Errorf("qcow2: %w", err)
		}
		img.backing = b
	}
	return img, nil
}

// readTable reads n big-endian 64-bit entries at off.
func (img *Image) readTable(off, n uint64) ([]uint64, error) {
	buf := make([]byte, n*8)
	if err := img.readMeta(buf, off); err != nil {
		return nil, err
	}
	t := make([]uint64, n)
	for i := range t {
		t[i] = be.Uint64(buf[i*8:])
	}
	return t, nil
}

// readMeta reads metadata, treating bytes past the end of the file as
// zeroes (qemu-img leaves files ending inside their last cluster).
func (img *Image) readMeta(p []byte, off uint64) error {
	n, err := img.file.ReadAt(p, int64(off))
	if errors.Is(err, io.EOF) {
		clear(p[n:])
		return nil
	}
	return err
}

// BackingFile returns the backing file name and format recorded in the
// image ("" if none).
func (img *Image) BackingFile() (name, format string) {
	img.mu.Lock()
	defer img.mu.Unlock()
	return img.h.backingFile, img.h.backingFormat
}

// Backing returns the opened backing back-end, or nil.
func (img *Image) Backing() block.Backend { return img.backing }

// Info describes an image for tools.
type Info struct {
	Version       int
	VirtualSize   int64
	ClusterSize   int
	RefcountBits  int
	BackingFile   string
	BackingFormat string
	Compat        string // "0.10" for v2, "1.1" for v3
	LazyRefcounts bool
	Corrupt       bool
	Dirty         bool
	Snapshots     []SnapshotInfo
}

// Info returns a description of the image.
func (img *Image) Info() Info {
	img.mu.Lock()
	defer img.mu.Unlock()
	h := img.h
	in := Info{
		Version: int(h.version), VirtualSize: int64(h.size), ClusterSize: int(img.cs),
		RefcountBits: int(img.refBits), BackingFile: h.backingFile, BackingFormat: h.backingFormat,
		Compat: "0.10", LazyRefcounts: h.compatible&compatLazyRefcounts != 0,
		Corrupt: h.incompatible&incompatCorrupt != 0, Dirty: h.incompatible&incompatDirty != 0,
	}
	if h.version >= 3 {
		in.Compat = "1.1"
	}
	in.Snapshots = img.snapshotInfos()
	return in
}

func (img *Image) Size() int64    { return img.size.Load() }
func (img *Image) ReadOnly() bool { return img.readOnly }

// cluster kinds, as an L2 entry describes them.
const (
	kUnalloc = iota
	kZero
	kData
	kCompressed
)

// mapping is the decoded L2 entry of one guest cluster.
type mapping struct {
	kind   int
	host   uint64 // data: cluster offset; compressed: byte offset; zero: preallocated cluster or 0
	csize  uint64 // compressed: bytes to read
	copied bool   // refcount is 1 (entry and its L2 table): writable in place
}

// decode validates and classifies an L2 entry.
func (img *Image) decode(e uint64) (mapping, error) {
	if e&oflagCompressed != 0 {
		if e&oflagCopied != 0 {
			return mapping{}, corrupt("compressed cluster entry %#x has the copied flag", e)
		}
		shift := 62 - (img.cbits - 8)
		off := e & (1<<shift - 1)
		nsect := (e>>shift)&(1<<(img.cbits-8)-1) + 1
		csize := nsect*512 - off&511
		if off == 0 || off >= uint64(img.fileSize) {
			return mapping{}, corrupt("compressed cluster at %#x outside the file", off)
		}
		return mapping{kind: kCompressed, host: off, csize: csize}, nil
	}
	res := uint64(l2Reserved)
	if img.h.version < 3 {
		res |= oflagZero
	}
	if e&res != 0 {
		return mapping{}, corrupt("L2 entry %#x has reserved bits set", e)
	}
	off := e & l2OffsetMask
	if off&(img.cs-1) != 0 {
		return mapping{}, corrupt("L2 entry %#x: data cluster offset not aligned", e)
	}
	if off != 0 && off >= uint64(img.fileSize) {
		return mapping{}, corrupt("L2 entry %#x: data cluster beyond the end of the file", e)
	}
	m := mapping{host: off, copied: e&oflagCopied != 0}
	switch {
	case e&oflagZero != 0:
		m.kind = kZero
	case off == 0:
		m.kind = kUnalloc
		m.copied = false
	default:
		m.kind = kData
	}
	return m, nil
}

// l2Table returns the cached L2 table at off, reading it if needed.
func (img *Image) l2Table(off uint64) (*cached, error) {
	if t := img.l2c.get(off); t != nil {
		return t, nil
	}
	if off&(img.cs-1) != 0 || off == 0 || off >= uint64(img.fileSize) {
		return nil, corrupt("L2 table offset %#x invalid", off)
	}
	if err := img.makeRoom(img.l2c); err != nil {
		return nil, err
	}
	t := &cached{off: off, data: make([]byte, img.cs)}
	if err := img.readMeta(t.data, off); err != nil {
		return nil, fmt.Errorf("qcow2: reading L2 table: %w", err)
	}
	img.l2c.put(t)
	return t, nil
}

// makeRoom ensures c can take one more entry, writing metadata back if
// every entry is dirty.
func (img *Image) makeRoom(c *tableCache) error {
	for c.full() {
		if c.evictClean() {
			continue
		}
		if err := img.writeback(); err != nil {
			return err
		}
		if !c.evictClean() {
			return errors.New("qcow2: internal error: cache full after write-back")
		}
	}
	return nil
}

// l1Entry validates L1 entry i and returns the L2 table offset (0 if
// none) and whether the table is exclusively owned.
func (img *Image) l1Entry(i uint64) (uint64, bool, error) {
	if i >= uint64(len(img.l1)) {
		return 0, false, nil
	}
	e := img.l1[i]
	if e&l1Reserved != 0 {
		return 0, false, corrupt("L1 entry %d (%#x) has reserved bits set", i, e)
	}
	off := e & l1OffsetMask
	if off&(img.cs-1) != 0 {
		return 0, false, corrupt("L1 entry %d (%#x) not cluster aligned", i, e)
	}
	return off, e&oflagCopied != 0, nil
}

// lookup returns the mapping of guest cluster gcl. Call with mu held.
func (img *Image) lookup(gcl uint64) (mapping, error) {
	l2off, l1copied, err := img.l1Entry(gcl / img.l2Entries)
	if err != nil || l2off == 0 {
		return mapping{}, err
	}
	t, err := img.l2Table(l2off)
	if err != nil {
		return mapping{}, err
	}
	m, err := img.decode(be.Uint64(t.data[(gcl%img.l2Entries)*8:]))
	m.copied = m.copied && l1copied
	return m, err
}

// extent is a piece of a guest request after mapping.
type extent struct {
	m   mapping
	in  uint64 // offset within the guest cluster (data: already added to host)
	buf []byte
}

func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	if img.closed.Load() {
		return 0, block.ErrClosed
	}
	if off < 0 {
		return 0, fmt.Errorf("qcow2: read at %d: %w", off, block.ErrOutOfRange)
	}
	size := img.Size()
	if off >= size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	n := min(int64(len(p)), size-off)
	img.ioLock.RLock()
	defer img.ioLock.RUnlock()
	if err := img.readLocked(p[:n], uint64(off)); err != nil {
		return 0, err
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// readLocked reads p at guest offset off; the caller holds ioLock.
func (img *Image) readLocked(p []byte, off uint64) error {
	img.mu.Lock()
	exts, err := img.mapRange(p, off)
	img.mu.Unlock()
	if err != nil {
		return err
	}
	for _, e := range exts {
		if err := img.readExtent(e, off); err != nil {
			return err
		}
		off += uint64(len(e.buf))
	}
	return nil
}

// mapRange splits a guest range into extents, merging neighbours whose
// data lies contiguously in the file. Call with mu held.
func (img *Image) mapRange(p []byte, off uint64) ([]extent, error) {
	var exts []extent
	for len(p) > 0 {
		in := off & (img.cs - 1)
		n := min(uint64(len(p)), img.cs-in)
		m, err := img.lookup(off >> img.cbits)
		if err != nil {
			return nil, err
		}
		if k := len(exts) - 1; k >= 0 {
			last := &exts[k]
			if last.m.kind == m.kind && (m.kind == kUnalloc || m.kind == kZero ||
				(m.kind == kData && in == 0 && last.m.host+last.in+uint64(len(last.buf)) == m.host)) {
				last.buf = last.buf[:len(last.buf)+int(n)]
				p, off = p[n:], off+n
				continue
			}
		}
		exts = append(exts, extent{m: m, in: in, buf: p[:n:len(p)]})
		p, off = p[n:], off+n
	}
	return exts, nil
}

// readExtent fills e.buf, which starts at guest offset goff.
func (img *Image) readExtent(e extent, goff uint64) error {
	switch e.m.kind {
	case kZero:
		clear(e.buf)
	case kUnalloc:
		return img.readBacking(e.buf, goff)
	case kData:
		n, err := img.file.ReadAt(e.buf, int64(e.m.host+e.in))
		if errors.Is(err, io.EOF) { // inside an allocated cluster past EOF
			clear(e.buf[n:])
		} else if err != nil {
			return fmt.Errorf("qcow2: reading data: %w", err)
		}
	case kCompressed:
		c, err := img.decompress(e.m)
		if err != nil {
			return err
		}
		copy(e.buf, c[e.in:])
	}
	return nil
}

// readBacking reads guest range [goff, goff+len(p)) from the backing
// file, or zeroes where there is none.
func (img *Image) readBacking(p []byte, goff uint64) error {
	if img.backing == nil {
		clear(p)
		return nil
	}
	n, err := img.backing.ReadAt(p, int64(goff))
	if errors.Is(err, io.EOF) {
		clear(p[n:])
		return nil
	}
	if err != nil {
		return fmt.Errorf("qcow2: reading backing file: %w", err)
	}
	return nil
}

// decompress returns the cluster stored compressed at m.
func (img *Image) decompress(m mapping) ([]byte, error) {
	if img.h.compressionType != 0 {
		return nil, fmt.Errorf("%w: zstd-compressed clusters", ErrUnsupported)
	}
	src := make([]byte, m.csize)
	if err := img.readMeta(src, m.host); err != nil {
		return nil, fmt.Errorf("qcow2: reading compressed cluster: %w", err)
	}
	out := make([]byte, img.cs)
	r := flate.NewReader(bytes.NewReader(src))
	defer r.Close()
	// QEMU accepts a stream that fills the cluster even if the input
	// continues (the last sector is padding), so only a short output is
	// an error.
	if _, err := io.ReadFull(r, out); err != nil {
		return nil, corrupt("compressed cluster at %#x does not inflate to a cluster: %v", m.host, err)
	}
	return out, nil
}

func (img *Image) WriteAt(p []byte, off int64) (int, error) {
	if err := img.checkWrite(off, int64(len(p))); err != nil {
		return 0, err
	}
	img.ioLock.RLock()
	defer img.ioLock.RUnlock()
	if err := img.writeLocked(p, uint64(off)); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (img *Image) checkWrite(off, n int64) error {
	if img.closed.Load() {
		return block.ErrClosed
	}
	if img.readOnly {
		return block.ErrReadOnly
	}
	if err := block.CheckRange(off, n, img.Size()); err != nil {
		return fmt.Errorf("qcow2: %d bytes at %d: %w", n, off, err)
	}
	return nil
}

// writeLocked writes p at off; the caller holds ioLock shared.
//
// It works in three steps. Under mu it maps every cluster: one the image
// owns alone is written in place; any other gets a new cluster (or its
// preallocated one), and the guest cluster is marked in flight so that no
// other write or discard plans it meanwhile. Without mu, it writes the
// data, including copy-on-write from a backing file, which may be slow
// or remote. Under mu again, it points the L2 entries at the new
// clusters. Readers see the old contents until then.
func (img *Image) writeLocked(p []byte, off uint64) error {
	type direct struct {
		host uint64
		buf  []byte
	}
	var ds []direct
	var jobs []*allocJob
	prevDirect := false
	var planErr error
	img.mu.Lock()
	if img.err != nil {
		img.mu.Unlock()
		return img.err
	}
	for len(p) > 0 {
		in := off & (img.cs - 1)
		n := min(uint64(len(p)), img.cs-in)
		gcl := off >> img.cbits
		if ch := img.inflight[gcl]; ch != nil {
			// Clusters are claimed in increasing order by every
			// writer, so waiting here cannot deadlock.
			img.mu.Unlock()
			<-ch
			img.mu.Lock()
			continue
		}
		m, err := img.lookup(gcl)
		if err != nil {
			planErr = err
			break
		}
		if m.kind == kData && m.copied {
			if err := img.checkData(m.host); err != nil {
				planErr = err
				break
			}
			// Merge with the previous piece only if that was the
			// directly preceding cluster and its data is adjacent.
			if k := len(ds) - 1; k >= 0 && prevDirect && in == 0 && ds[k].host+uint64(len(ds[k].buf)) == m.host {
				ds[k].buf = ds[k].buf[:len(ds[k].buf)+int(n)]
			} else {
				ds = append(ds, direct{m.host + in, p[:n:len(p)]})
			}
			prevDirect = true
		} else {
			j, err := img.planAlloc(gcl, m, in, p[:n])
			if err != nil {
				planErr = err
				break
			}
			jobs = append(jobs, j)
			prevDirect = false
		}
		p, off = p[n:], off+n
	}
	img.mu.Unlock()

	err := planErr
	if err == nil {
		for _, d := range ds {
			if _, werr := img.file.WriteAt(d.buf, int64(d.host)); werr != nil {
				err = fmt.Errorf("qcow2: writing data: %w", werr)
				break
			}
		}
	}
	for _, j := range jobs {
		if err == nil {
			j.err = img.fillCluster(j)
			err = j.err
		} else {
			j.err = err // not written: give the cluster back
		}
	}

	if len(jobs) > 0 {
		img.mu.Lock()
		for _, j := range jobs {
			if cerr := img.commitAlloc(j); cerr != nil && err == nil {
				err = cerr
			}
		}
		img.mu.Unlock()
	}
	return err
}

// allocJob is one guest cluster being written to a new place.
type allocJob struct {
	gcl     uint64
	old     mapping
	host    uint64 // destination cluster
	fresh   bool   // destination known to read as zeroes
	inPlace bool   // destination is old.host (a preallocated zero cluster)
	in      uint64
	p       []byte
	done    chan struct{}
	err     error
}

// clusterBuf returns a cluster-sized scratch buffer.
func (img *Image) clusterBuf() []byte { return make([]byte, img.cs) }

// planAlloc chooses where guest cluster gcl, whose mapping m does not
// allow writing in place, will be written, and marks it in flight. Call
// with mu held.
func (img *Image) planAlloc(gcl uint64, m mapping, in uint64, p []byte) (*allocJob, error) {
	j := &allocJob{gcl: gcl, old: m, in: in, p: p, done: make(chan struct{})}
	if m.kind == kZero && m.host != 0 && m.copied {
		// A preallocated zero cluster we own is reused.
		if err := img.checkData(m.host); err != nil {
			return nil, err
		}
		if err := img.growFile(m.host + img.cs); err != nil {
			return nil, err
		}
		j.host, j.inPlace = m.host, true
	} else {
		host, fresh, err := img.allocate(1)
		if err != nil {
			return nil, err
		}
		if err := img.checkData(host); err != nil {
			img.pendingFree = append(img.pendingFree, host>>img.cbits)
			return nil, err
		}
		j.host, j.fresh = host, fresh
	}
	img.inflight[gcl] = j.done
	return j, nil
}

// fillCluster writes a job's data, with the rest of the cluster copied
// from what the guest cluster reads as now. Runs without mu: the old
// clusters cannot be freed while the caller holds ioLock.
func (img *Image) fillCluster(j *allocJob) error {
	var err error
	switch {
	case j.in == 0 && uint64(len(j.p)) == img.cs:
		_, err = img.file.WriteAt(j.p, int64(j.host))
	case j.fresh && (j.old.kind == kZero || (j.old.kind == kUnalloc && img.backing == nil)):
		// The new cluster already reads as zeroes: write only p.
		_, err = img.file.WriteAt(j.p, int64(j.host+j.in))
	default:
		buf := img.clusterBuf()
		if !j.inPlace {
			if err := img.oldContents(buf, j.gcl, j.old); err != nil {
				return err
			}
		}
		copy(buf[j.in:], j.p)
		_, err = img.file.WriteAt(buf, int64(j.host))
	}
	if err != nil {
		return fmt.Errorf("qcow2: writing data: %w", err)
	}
	return nil
}

// commitAlloc points the L2 entry at a job's cluster (or gives the
// cluster back if the job failed) and ends its flight. Call with mu held.
func (img *Image) commitAlloc(j *allocJob) error {
	defer func() {
		delete(img.inflight, j.gcl)
		close(j.done)
	}()
	if j.err != nil {
		if !j.inPlace {
			img.pendingFree = append(img.pendingFree, j.host>>img.cbits)
		}
		return j.err
	}
	if err := img.setL2(j.gcl, j.host|oflagCopied); err != nil {
		if !j.inPlace {
			img.pendingFree = append(img.pendingFree, j.host>>img.cbits)
		}
		return err
	}
	if !j.inPlace {
		img.freeMapping(j.old)
	}
	return nil
}

// oldContents fills buf with what guest cluster gcl reads as now. Bytes
// past the virtual size read as zero, so that a later resize never
// exposes backing data there.
func (img *Image) oldContents(buf []byte, gcl uint64, m mapping) error {
	goff := gcl << img.cbits
	e := extent{m: m, buf: buf}
	if err := img.readExtent(e, goff); err != nil {
		return err
	}
	if end := uint64(img.Size()); goff+img.cs > end {
		clear(buf[end-goff:])
	}
	return nil
}

// growFile makes the file at least end bytes long.
func (img *Image) growFile(end uint64) error {
	if int64(end) <= img.fileSize {
		return nil
	}
	r, ok := img.file.(block.Resizer)
	if !ok {
		return fmt.Errorf("qcow2: image file cannot grow: %w", errors.ErrUnsupported)
	}
	// Grow to whole clusters so that the next allocation rarely needs
	// another call.
	end = (end + img.cs - 1) &^ (img.cs - 1)
	if err := r.Resize(int64(end)); err != nil {
		return fmt.Errorf("qcow2: growing image file: %w", err)
	}
	img.fileSize = int64(end)
	return nil
}

// freeMapping queues the host clusters behind m for release.
func (img *Image) freeMapping(m mapping) {
	switch m.kind {
	case kData, kZero:
		if m.host != 0 {
			img.pendingFree = append(img.pendingFree, m.host>>img.cbits)
		}
	case kCompressed:
		for c := m.host >> img.cbits; c <= (m.host+m.csize-1)>>img.cbits; c++ {
			img.pendingFree = append(img.pendingFree, c)
		}
	}
}

// setL2 sets the L2 entry of guest cluster gcl, allocating or copying the
// L2 table first if it is absent or shared. Call with mu held.
func (img *Image) setL2(gcl, entry uint64) error {
	t, err := img.l2ForWrite(gcl / img.l2Entries)
	if err != nil {
		return err
	}
	be.PutUint64(t.data[(gcl%img.l2Entries)*8:], entry)
	t.dirty = true
	return nil
}

// l2ForWrite returns an exclusively owned L2 table for L1 index i.
func (img *Image) l2ForWrite(i uint64) (*cached, error) {
	if i >= uint64(len(img.l1)) {
		return nil, corrupt("guest cluster beyond the L1 table")
	}
	off, copied, err := img.l1Entry(i)
	if err != nil {
		return nil, err
	}
	if off != 0 && copied {
		return img.l2Table(off)
	}
	var old []byte
	if off != 0 { // shared with a snapshot: copy on write
		t, err := img.l2Table(off)
		if err != nil {
			return nil, err
		}
		old = append([]byte(nil), t.data...)
	}
	host, _, err := img.allocate(1)
	if err != nil {
		return nil, err
	}
	if err := img.makeRoom(img.l2c); err != nil {
		return nil, err
	}
	t := &cached{off: host, data: make([]byte, img.cs), dirty: true}
	copy(t.data, old)
	img.l2c.put(t)
	img.markMeta(host, img.cs)
	if off != 0 {
		img.pendingFree = append(img.pendingFree, off>>img.cbits)
	}
	img.setL1(i, host|oflagCopied)
	return t, nil
}

func (img *Image) setL1(i, e uint64) {
	img.l1[i] = e
	img.l1Dirty[i*8/512] = true
}

// Discard releases whole clusters in the range. Partial clusters are left
// alone, which the Discarder contract allows.
func (img *Image) Discard(off, n int64) error {
	return img.zeroOrDiscard(off, n, true, true)
}

// WriteZeroes zeroes the range: whole clusters by metadata alone (the
// zero flag in version 3 images, or by unmapping when no backing file
// shows through), partial clusters by writing zeroes. Without unmap, an
// owned cluster keeps its allocation.
func (img *Image) WriteZeroes(off, n int64, unmap bool) error {
	return img.zeroOrDiscard(off, n, unmap, false)
}

func (img *Image) zeroOrDiscard(off, n int64, unmap, discard bool) error {
	if err := img.checkWrite(off, n); err != nil {
		return err
	}
	img.ioLock.RLock()
	defer img.ioLock.RUnlock()
	size := uint64(img.Size())
	for pos, end := uint64(off), uint64(off+n); pos < end; {
		in := pos & (img.cs - 1)
		k := min(end-pos, img.cs-in)
		whole := in == 0 && (k == img.cs || pos+k == size)
		var err error
		switch {
		case whole:
			err = img.zeroCluster(pos>>img.cbits, unmap, discard)
		case !discard:
			err = img.writeLocked(make([]byte, k), pos)
		}
		if err != nil {
			return err
		}
		pos += k
	}
	return nil
}

func (img *Image) zeroCluster(gcl uint64, unmap, discard bool) error {
	img.mu.Lock()
	defer img.mu.Unlock()
	if img.err != nil {
		return img.err
	}
	for img.inflight[gcl] != nil {
		ch := img.inflight[gcl]
		img.mu.Unlock()
		<-ch
		img.mu.Lock()
	}
	m, err := img.lookup(gcl)
	if err != nil {
		return err
	}
	v3 := img.h.version >= 3
	var entry uint64
	switch {
	case img.backing == nil && (unmap || m.kind != kData || !m.copied):
		entry = 0 // unallocated reads as zero without a backing file
	case !v3 && discard:
		return nil // no way to hide the backing file: keep the data
	case !v3:
		// Version 2 has no zero flag: store zeroes.
		img.mu.Unlock()
		err := img.writeLocked(make([]byte, img.cs), gcl<<img.cbits)
		img.mu.Lock()
		return err
	case !unmap && m.kind == kData && m.copied:
		entry = m.host | oflagZero | oflagCopied
	case !unmap && m.kind == kZero && m.copied:
		return nil
	default:
		entry = oflagZero
	}
	if m.kind == kUnalloc && entry == 0 {
		return nil
	}
	if err := img.setL2(gcl, entry); err != nil {
		return err
	}
	if entry&l2OffsetMask == 0 {
		img.freeMapping(m)
	}
	return nil
}

// Flush writes all metadata back in dependency order and makes every
// completed write durable.
func (img *Image) Flush() error {
	if img.closed.Load() {
		return block.ErrClosed
	}
	if img.readOnly {
		return nil
	}
	return img.flush()
}

func (img *Image) flush() error {
	img.mu.Lock()
	pending := len(img.pendingFree) > 0
	img.mu.Unlock()
	if pending {
		// Applying frees makes clusters reusable: no transfer may still
		// be aimed at them.
		img.ioLock.Lock()
		defer img.ioLock.Unlock()
	}
	img.mu.Lock()
	defer img.mu.Unlock()
	if img.err != nil {
		return img.err
	}
	if err := img.writeback(); err != nil {
		return err
	}
	if pending {
		return img.applyFrees()
	}
	return nil
}

func (img *Image) sync() error {
	if err := img.file.Flush(); err != nil {
		return img.fail(fmt.Errorf("qcow2: flushing image file: %w", err))
	}
	return nil
}

// fail records a metadata write error: the in-memory metadata may now be
// ahead of the file in a way we cannot order any more, so further writes
// are refused (reads still work).
func (img *Image) fail(err error) error {
	if img.err == nil {
		img.err = err
	}
	return err
}

// writeback writes dirty metadata, one level at a time, each level made
// durable before the next one that may point into it. Call with mu held.
func (img *Image) writeback() error {
	if err := img.writeTables(img.rbc); err != nil {
		return err
	}
	if len(img.refDirty) > 0 {
		if err := img.sync(); err != nil {
			return err
		}
		if err := img.writeSectors(img.refTable, img.h.refTableOffset, img.refDirty); err != nil {
			return err
		}
	}
	if len(img.l2c.dirty()) > 0 {
		if err := img.sync(); err != nil {
			return err
		}
		if err := img.writeTables(img.l2c); err != nil {
			return err
		}
	}
	if len(img.l1Dirty) > 0 {
		if err := img.sync(); err != nil {
			return err
		}
		if err := img.writeSectors(img.l1, img.h.l1Offset, img.l1Dirty); err != nil {
			return err
		}
	}
	return img.sync()
}

func (img *Image) writeTables(c *tableCache) error {
	for _, t := range c.dirty() {
		if err := img.writeMeta(t.data, t.off); err != nil {
			return err
		}
		t.dirty = false
	}
	return nil
}

// writeSectors writes the dirty 512-byte sectors of an in-memory table.
func (img *Image) writeSectors(table []uint64, off uint64, dirty map[uint64]bool) error {
	for s := range dirty {
		lo := s * 64
		hi := min(lo+64, uint64(len(table)))
		if lo < hi {
			buf := make([]byte, (hi-lo)*8)
			for i := lo; i < hi; i++ {
				be.PutUint64(buf[(i-lo)*8:], table[i])
			}
			if err := img.writeMeta(buf, off+lo*8); err != nil {
				return err
			}
		}
		delete(dirty, s)
	}
	return nil
}

func (img *Image) writeMeta(p []byte, off uint64) error {
	img.markMeta(off, uint64(len(p)))
	if err := img.growFile(off + uint64(len(p))); err != nil {
		return img.fail(err)
	}
	if _, err := img.file.WriteAt(p, int64(off)); err != nil {
		return img.fail(fmt.Errorf("qcow2: writing metadata: %w", err))
	}
	return nil
}

// writeHeader rewrites the header cluster and makes it durable.
func (img *Image) writeHeader() error {
	buf, err := img.h.encode(int(img.cs))
	if err != nil {
		return err
	}
	if err := img.writeMeta(buf, 0); err != nil {
		return err
	}
	return img.sync()
}

// Close flushes, then closes the image file and the backing chain.
func (img *Image) Close() error {
	if img.closed.Load() {
		return block.ErrClosed
	}
	var err error
	if !img.readOnly {
		err = img.flush()
	}
	img.closed.Store(true)
	if img.backing != nil {
		if e := img.backing.Close(); e != nil && err == nil {
			err = e
		}
	}
	if e := img.file.Close(); e != nil && err == nil {
		err = e
	}
	return err
}

// Resize grows the virtual size (shrinking is not supported). If a
// backing file would show through in the new area, it is zeroed.
func (img *Image) Resize(size int64) error {
	if img.closed.Load() {
		return block.ErrClosed
	}
	if img.readOnly {
		return block.ErrReadOnly
	}
	old := img.Size()
	if size < old {
		return fmt.Errorf("qcow2: shrinking from %d to %d bytes: %w", old, size, errors.ErrUnsupported)
	}
	if size > maxVirtualSize {
		return fmt.Errorf("qcow2: size %d too large: %w", size, block.ErrOutOfRange)
	}
	if size%512 != 0 {
		return fmt.Errorf("qcow2: size %d is not a multiple of 512 bytes (QEMU would not see the last partial sector)", size)
	}
	if size == old {
		return nil
	}
	img.ioLock.Lock()
	img.mu.Lock()
	err := img.resizeLocked(uint64(size))
	img.mu.Unlock()
	img.ioLock.Unlock()
	if err != nil {
		return err
	}
	if img.backing != nil {
		if bs := img.backing.Size(); bs > old {
			return img.WriteZeroes(old, min(bs, size)-old, false)
		}
	}
	return nil
}

func (img *Image) resizeLocked(size uint64) error {
	if need := l1Needed(size, img.cbits); need > uint64(len(img.l1)) {
		if need*8 > maxL1Bytes {
			return fmt.Errorf("qcow2: size %d needs an L1 table larger than %d bytes: %w", size, maxL1Bytes, block.ErrOutOfRange)
		}
		if err := img.growL1(need); err != nil {
			return err
		}
	}
	img.h.size = size
	if err := img.writeHeader(); err != nil {
		return err
	}
	img.size.Store(int64(size))
	return nil
}

// growL1 moves the active L1 table to a new, larger place. Call with mu
// and ioLock held.
func (img *Image) growL1(entries uint64) error {
	if entries > maxL1Bytes/8 {
		return fmt.Errorf("qcow2: an L1 table of %d entries exceeds the %d-byte limit", entries, maxL1Bytes)
	}
	bytes := entries * 8
	n := (bytes + img.cs - 1) >> img.cbits
	host, _, err := img.allocate(n)
	if err != nil {
		return err
	}
	// Everything the new table points at, and its own refcounts, must be
	// durable before the header switches to it.
	if err := img.writeback(); err != nil {
		return err
	}
	l1 := make([]uint64, entries)
	copy(l1, img.l1)
	buf := make([]byte, n*img.cs)
	for i, e := range l1 {
		be.PutUint64(buf[i*8:], e)
	}
	if err := img.writeMeta(buf, host); err != nil {
		return err
	}
	if err := img.sync(); err != nil {
		return err
	}
	oldOff, oldSize := img.h.l1Offset, uint64(len(img.l1))
	img.h.l1Offset, img.h.l1Size = host, uint32(entries)
	img.l1 = l1
	clear(img.l1Dirty)
	if err := img.writeHeader(); err != nil {
		return err
	}
	img.freeRange(oldOff, oldSize*8)
	return nil
}

// markMeta records that [off, off+n) holds metadata.
func (img *Image) markMeta(off, n uint64) {
	if off == 0 && n == 0 || n == 0 {
		return
	}
	for c := off >> img.cbits; c <= (off+n-1)>>img.cbits; c++ {
		img.meta[c] = true
	}
}

// checkData refuses guest data writes into a metadata cluster.
func (img *Image) checkData(host uint64) error {
	if img.meta[host>>img.cbits] {
		return corrupt("guest data would overwrite metadata at %#x", host&^(img.cs-1))
	}
	return nil
}

// freeRange queues the clusters of a table for release.
func (img *Image) freeRange(off, n uint64) {
	if off == 0 || n == 0 {
		return
	}
	for c := off >> img.cbits; c <= (off+n-1)>>img.cbits; c++ {
		img.pendingFree = append(img.pendingFree, c)
	}
}
