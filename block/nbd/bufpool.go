package nbd

import (
	"math/bits"
	"sync"
)

// Buffers for request and reply payloads come from power-of-two size
// classes from 4 KiB to maxPayload, so that a busy connection does not
// allocate (and the GC does not scan) a fresh buffer per request.
const (
	minClassShift = 12
	maxClassShift = 25 // maxPayload
)

var bufPools [maxClassShift - minClassShift + 1]sync.Pool

func classOf(n int) int {
	if n <= 1<<minClassShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minClassShift
}

// getBuf returns a buffer of length n (n <= maxPayload). Its contents are
// arbitrary.
func getBuf(n int) []byte {
	c := classOf(n)
	if c >= len(bufPools) {
		return make([]byte, n)
	}
	if p, ok := bufPools[c].Get().(*[]byte); ok {
		return (*p)[:n]
	}
	return make([]byte, n, 1<<(c+minClassShift))
}

// putBuf returns a buffer obtained from getBuf.
func putBuf(b []byte) {
	c := classOf(cap(b))
	if c >= len(bufPools) || cap(b) != 1<<(c+minClassShift) {
		return
	}
	b = b[:cap(b)]
	bufPools[c].Put(&b)
}
