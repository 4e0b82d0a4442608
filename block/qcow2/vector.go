package qcow2

import (
	"sync"

	"github.com/viovmm/vio/block"
)

var (
	_ block.VectorReaderAt = (*Image)(nil)
	_ block.VectorWriterAt = (*Image)(nil)
)

// A guest request arrives as many page-sized segments. Mapping each one
// separately would repeat the table lookups and the host I/O per page;
// gathering the segments into one buffer costs a memory copy, which is
// far cheaper.

var bouncePool = sync.Pool{New: func() any { b := make([]byte, 0, 256<<10); return &b }}

func gatherLen(bufs [][]byte) int {
	n := 0
	for _, b := range bufs {
		n += len(b)
	}
	return n
}

func getBounce(n int) *[]byte {
	p := bouncePool.Get().(*[]byte)
	if cap(*p) < n {
		*p = make([]byte, n)
	}
	*p = (*p)[:n]
	return p
}

func putBounce(p *[]byte) {
	if cap(*p) <= 4<<20 { // do not pin huge buffers
		bouncePool.Put(p)
	}
}

// ReadvAt reads into several buffers as one request.
func (img *Image) ReadvAt(bufs [][]byte, off int64) (int, error) {
	if len(bufs) == 1 {
		return img.ReadAt(bufs[0], off)
	}
	b := getBounce(gatherLen(bufs))
	defer putBounce(b)
	n, err := img.ReadAt(*b, off)
	src := (*b)[:n]
	for _, p := range bufs {
		src = src[copy(p, src):]
	}
	return n, err
}

// WritevAt writes several buffers as one request.
func (img *Image) WritevAt(bufs [][]byte, off int64) (int, error) {
	if len(bufs) == 1 {
		return img.WriteAt(bufs[0], off)
	}
	b := getBounce(gatherLen(bufs))
	defer putBounce(b)
	dst := *b
	for _, p := range bufs {
		dst = dst[copy(dst, p):]
	}
	return img.WriteAt(*b, off)
}
