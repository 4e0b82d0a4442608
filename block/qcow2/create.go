package qcow2

import (
	"errors"
	"fmt"
	"math/bits"

	"github.com/viovmm/vio/block"
)

// CreateOptions shape a new image. The zero value gives what qemu-img 7.2
// creates by default: version 3, 64 KiB clusters, 16-bit refcounts.
type CreateOptions struct {
	ClusterSize   int // power of two, 512 to 2 MiB
	Version       int // 2 or 3
	RefcountBits  int // 1, 2, 4, ... 64 (version 2: 16 only)
	BackingFile   string
	BackingFormat string
}

// Create writes a new, empty image of size bytes into file (whose old
// contents are discarded; it must implement block.Resizer) and opens it.
// The backing file, if any, is opened with opts.OpenBacking.
func Create(file block.Backend, size int64, copts CreateOptions, opts Options) (*Image, error) {
	cs := copts.ClusterSize
	if cs == 0 {
		cs = 64 << 10
	}
	if cs < 1<<minClusterBits || cs > 1<<maxClusterBits || cs&(cs-1) != 0 {
		return nil, fmt.Errorf("qcow2: cluster size %d must be a power of two from 512 to 2M", cs)
	}
	ver := copts.Version
	if ver == 0 {
		ver = 3
	}
	if ver != 2 && ver != 3 {
		return nil, fmt.Errorf("qcow2: version %d: only 2 and 3 exist", ver)
	}
	rb := copts.RefcountBits
	if rb == 0 {
		rb = 16
	}
	if rb < 1 || rb > 64 || rb&(rb-1) != 0 || (ver == 2 && rb != 16) {
		return nil, fmt.Errorf("qcow2: refcount width %d bits not allowed (powers of two to 64; 16 for version 2)", rb)
	}
	// Like qemu-img, whole sectors only: QEMU ignores a partial last one.
	size = (size + 511) &^ 511
	if size < 0 || size > maxVirtualSize {
		return nil, fmt.Errorf("qcow2: size %d out of range", size)
	}
	if len(copts.BackingFile) > maxBackingName {
		return nil, fmt.Errorf("qcow2: backing file name longer than %d bytes", maxBackingName)
	}
	if copts.BackingFile != "" && opts.OpenBacking == nil {
		return nil, errors.New("qcow2: a backing file was named but no way to open it was given")
	}
	if copts.BackingFormat != "" && copts.BackingFile == "" {
		return nil, errors.New("qcow2: backing format given without a backing file")
	}
	r, ok := file.(block.Resizer)
	if !ok {
		return nil, fmt.Errorf("qcow2: image file cannot be resized: %w", errors.ErrUnsupported)
	}
	// A block device cannot be resized: the image then lives in its fixed
	// space, which must hold at least the initial clusters.
	fixed := false
	if err := r.Resize(0); errors.Is(err, errors.ErrUnsupported) {
		fixed = true
	} else if err != nil {
		return nil, fmt.Errorf("qcow2: truncating image file: %w", err)
	}
	cbits := uint32(bits.TrailingZeros(uint(cs)))
	h := &header{
		version: uint32(ver), clusterBits: cbits,
		refTableOffset: uint64(cs), refTableClusters: 1,
		refcountOrder: uint32(bits.TrailingZeros(uint(rb))),
		headerLength:  headerLenWritten,
		backingFile:   copts.BackingFile, backingFormat: copts.BackingFormat,
	}
	if ver == 2 {
		h.headerLength = v2HeaderLen
	}
	hdr, err := h.encode(cs)
	if err != nil {
		return nil, err
	}
	// Cluster 0: header; 1: refcount table; 2: its first block, which
	// counts clusters 0 to 2.
	buf := make([]byte, 3*cs)
	copy(buf, hdr)
	be.PutUint64(buf[cs:], uint64(2*cs))
	for c := uint64(0); c < 3; c++ {
		putRef(buf[2*cs:], c, uint32(rb), 1)
	}
	if fixed {
		if file.Size() < int64(4*cs) {
			return nil, fmt.Errorf("qcow2: device of %d bytes too small for an image", file.Size())
		}
		// Stale bytes of the device must not look like refcounts.
		if _, err := file.WriteAt(make([]byte, 4*cs), 0); err != nil {
			return nil, fmt.Errorf("qcow2: writing new image: %w", err)
		}
	} else if err := r.Resize(int64(3 * cs)); err != nil {
		return nil, fmt.Errorf("qcow2: growing image file: %w", err)
	}
	if _, err := file.WriteAt(buf, 0); err != nil {
		return nil, fmt.Errorf("qcow2: writing new image: %w", err)
	}
	img, err := open(file, Options{CacheBytes: opts.CacheBytes}, true)
	if err != nil {
		return nil, err
	}
	img.mu.Lock()
	err = img.resizeLocked(uint64(size))
	if err == nil {
		err = img.writeback()
	}
	img.mu.Unlock()
	if err == nil && copts.BackingFile != "" {
		img.backing, err = opts.OpenBacking(copts.BackingFile, copts.BackingFormat)
		if err != nil {
			err = fmt.Errorf("qcow2: opening backing file %q: %w", copts.BackingFile, err)
		}
	}
	if err != nil {
		img.closed.Store(true)
		return nil, err
	}
	img.readOnly = opts.ReadOnly
	return img, nil
}
