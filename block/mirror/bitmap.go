package mirror

import (
	"math/bits"
	"sync"
)

// bitmap is one bit per region.
type bitmap []uint64

func newBitmap(n int64) bitmap { return make(bitmap, (n+63)/64) }

func (b bitmap) test(i int64) bool { return b[i/64]&(1<<(i%64)) != 0 }

// set sets bit i and reports whether it was clear.
func (b bitmap) set(i int64) bool {
	w, m := i/64, uint64(1)<<(i%64)
	if b[w]&m != 0 {
		return false
	}
	b[w] |= m
	return true
}

func (b bitmap) clear(i int64) bool {
	w, m := i/64, uint64(1)<<(i%64)
	if b[w]&m == 0 {
		return false
	}
	b[w] &^= m
	return true
}

func (b bitmap) count() int64 {
	var n int
	for _, w := range b {
		n += bits.OnesCount64(w)
	}
	return int64(n)
}

func (b bitmap) empty() bool {
	for _, w := range b {
		if w != 0 {
			return false
		}
	}
	return true
}

// each calls f for every set bit, in order.
func (b bitmap) each(f func(i int64)) {
	for wi, w := range b {
		for w != 0 {
			t := bits.TrailingZeros64(w)
			f(int64(wi)*64 + int64(t))
			w &^= 1 << t
		}
	}
}

// regionLocks serialises a rebuild's copy of a region with guest writes to
// it: writes hold the stripes of the regions they touch shared, a copy holds
// its region's stripe exclusively. Stripes are always taken in ascending
// order, and a copy holds one stripe at a time, so there is no deadlock.
type regionLocks struct{ s [256]sync.RWMutex }

const nStripes = 256

func (l *regionLocks) stripes(first, last int64) (set [nStripes / 64]uint64) {
	if last-first+1 >= nStripes {
		for i := range set {
			set[i] = ^uint64(0)
		}
		return
	}
	for r := first; r <= last; r++ {
		s := r % nStripes
		set[s/64] |= 1 << (s % 64)
	}
	return
}

func (l *regionLocks) rlock(first, last int64) {
	set := l.stripes(first, last)
	for i := range nStripes {
		if set[i/64]&(1<<(i%64)) != 0 {
			l.s[i].RLock()
		}
	}
}

func (l *regionLocks) runlock(first, last int64) {
	set := l.stripes(first, last)
	for i := range nStripes {
		if set[i/64]&(1<<(i%64)) != 0 {
			l.s[i].RUnlock()
		}
	}
}

func (l *regionLocks) lock(r int64)   { l.s[r%nStripes].Lock() }
func (l *regionLocks) unlock(r int64) { l.s[r%nStripes].Unlock() }
