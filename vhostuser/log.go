package vhostuser

import (
	"errors"
	"fmt"
	"math/bits"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// The dirty log of a live migration (VHOST_F_LOG_ALL with
// VHOST_USER_PROTOCOL_F_LOG_SHMFD): a bitmap in shared memory, one bit per
// LogPageSize page of guest physical address space, which the front-end
// allocates and hands over with SET_LOG_BASE, and in which the back-end
// marks every page it writes (the buffers of the requests it completes,
// the used rings) while LOG_ALL is acknowledged. The front-end takes the
// marks at each pre-copy iteration, clearing them as it goes, and sends
// those pages again.
//
// Both sides use 64-bit atomic read-modify-writes on the little-endian
// words of the bitmap: bit p%64 of word p/64 is bit p%8 of byte p/8, the
// protocol's layout, and a back-end that ORs single bytes (libvhost-user)
// interleaves correctly with them on x86.

// ErrBadLog reports a log descriptor a back-end cannot use.
var ErrBadLog = errors.New("vhostuser: unusable dirty log")

// DirtyLog is a front-end's dirty log: a sealed memfd holding the bitmap,
// mapped here. Take reads and clears it while the back-end writes it.
type DirtyLog struct {
	fd    int
	data  []byte
	words []uint64
	pages uint64 // pages covered: guest physical addresses [0, pages*LogPageSize)
}

// NewDirtyLog allocates a log covering guest physical addresses [0, end):
// end/LogPageSize bits, rounded up to whole pages of the memfd, which is
// sealed against shrinking and growing (a back-end could otherwise cut it
// under the mapping, and the next Take would be SIGBUS).
func NewDirtyLog(end uint64) (*DirtyLog, error) {
	if end == 0 || end > 8*LogPageSize*MaxLogSize {
		return nil, fmt.Errorf("vhostuser: a dirty log for %#x bytes of guest address space", end)
	}
	pages := (end + LogPageSize - 1) / LogPageSize
	page := uint64(unix.Getpagesize())
	size := ((pages+7)/8 + page - 1) / page * page
	fd, err := unix.MemfdCreate("vio-vhost-user-log", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("vhostuser: memfd_create for the dirty log: %w", err)
	}
	l := &DirtyLog{fd: fd}
	fail := func(what string, err error) (*DirtyLog, error) {
		l.Close()
		return nil, fmt.Errorf("vhostuser: %s the dirty log: %w", what, err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		return fail("sizing", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		return fail("sealing", err)
	}
	if l.data, err = unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		return fail("mapping", err)
	}
	l.words = wordsOf(l.data)
	l.pages = size * 8
	return l, nil
}

// FD is the log's memfd, for SET_LOG_BASE; it stays the log's.
func (l *DirtyLog) FD() int { return l.fd }

// Log is the description SET_LOG_BASE sends with FD.
func (l *DirtyLog) Log() Log { return Log{MmapSize: uint64(len(l.data))} }

// Covers reports the end of the guest physical addresses the log covers.
func (l *DirtyLog) Covers() uint64 { return l.pages * LogPageSize }

// Take ORs into dst the marks of the pages pages from the one at gpa
// (bit i of dst for page gpa/LogPageSize+i, in dst's words as
// memory.CollectDirty lays out a region's bitmap) and clears them in the
// log, each word atomically, so that a mark the back-end makes while Take
// runs is either taken now or left for the next Take, never lost. Marks of
// pages outside the range stay. gpa must be page aligned and the range
// inside the log.
func (l *DirtyLog) Take(gpa, pages uint64, dst []uint64) error {
	if gpa%LogPageSize != 0 {
		return fmt.Errorf("vhostuser: dirty log taken at unaligned address %#x", gpa)
	}
	first := gpa / LogPageSize
	if pages > l.pages || first > l.pages-pages {
		return fmt.Errorf("vhostuser: pages %#x+%#x are outside the dirty log (%#x pages)", first, pages, l.pages)
	}
	if uint64(len(dst)) < (pages+63)/64 {
		return fmt.Errorf("vhostuser: a bitmap of %d words for %d pages", len(dst), pages)
	}
	for k := uint64(0); k*64 < pages; k++ {
		n := min(64, pages-64*k) // bits of dst[k] in range
		s := first + 64*k        // the page of bit 0 of dst[k]
		w, sh := s/64, s%64
		// Low part: bits [sh, sh+n) of word w, or up to its end.
		lo := min(n, 64-sh)
		v := takeBits(&l.words[w], sh, lo)
		if n > lo {
			// High part: bits [0, n-lo) of word w+1.
			v |= takeBits(&l.words[w+1], 0, n-lo) << lo
		}
		dst[k] |= v
	}
	return nil
}

// takeBits clears bits [from, from+n) of *w atomically and returns them,
// shifted down to bit 0.
func takeBits(w *uint64, from, n uint64) uint64 {
	mask := ^uint64(0)
	if n < 64 {
		mask = (uint64(1)<<n - 1) << from
	}
	// Most words are zero in a converging migration: read first, so
	// they cost no locked instruction.
	if atomic.LoadUint64(w)&mask == 0 {
		return 0
	}
	var old uint64
	if mask == ^uint64(0) {
		old = atomic.SwapUint64(w, 0)
	} else {
		old = atomic.AndUint64(w, ^mask)
	}
	return (old & mask) >> from
}

// Count returns how many pages are marked (for tests and logs).
func (l *DirtyLog) Count() int {
	n := 0
	for i := range l.words {
		n += bits.OnesCount64(atomic.LoadUint64(&l.words[i]))
	}
	return n
}

// Close unmaps the log and closes its memfd; a back-end that has it
// mapped keeps its own mapping until it is given another log or the
// connection ends.
func (l *DirtyLog) Close() error {
	if l.data != nil {
		unix.Munmap(l.data)
		l.data, l.words = nil, nil
	}
	if l.fd >= 0 {
		unix.Close(l.fd)
		l.fd = -1
	}
	return nil
}

// backendLog is a log as a back-end maps it from SET_LOG_BASE.
type backendLog struct {
	data  []byte
	words []uint64
	pages uint64 // pages the log's size covers: 8*MmapSize
	// beyond counts marks of pages past the log, which the front-end
	// should have made large enough (they are dropped).
	beyond atomic.Uint64
}

// mapBackendLog maps the log a front-end sent. fd stays the caller's (the
// mapping keeps the file). The file is hostile: the offset must be page
// aligned, the file as long as the log, and sealed against shrinking (vio
// adds the seal when it may), since a file cut under the mapping would
// make the next mark SIGBUS.
func mapBackendLog(l Log, fd int) (*backendLog, error) {
	page := uint64(unix.Getpagesize())
	if l.MmapOffset%page != 0 {
		return nil, fmt.Errorf("%w: offset %#x is not page aligned", ErrBadLog, l.MmapOffset)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("%w: fstat: %v", ErrBadLog, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size < 0 || uint64(st.Size) < l.MmapOffset+l.MmapSize {
		return nil, fmt.Errorf("%w: the file (mode %#o, %d bytes) does not hold %#x bytes at %#x", ErrBadLog, st.Mode, st.Size, l.MmapSize, l.MmapOffset)
	}
	// Best effort: a memfd whose seals are sealed (QEMU's, vio's) has
	// the seal already, or refuses more; the check below decides.
	_, _ = unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK)
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil || seals&unix.F_SEAL_SHRINK == 0 {
		return nil, fmt.Errorf("%w: the log must be a memfd sealed against shrinking", ErrBadLog)
	}
	n := (l.MmapSize + page - 1) / page * page
	if n > uint64(maxInt) {
		return nil, fmt.Errorf("%w: %#x bytes cannot be mapped", ErrBadLog, l.MmapSize)
	}
	data, err := unix.Mmap(fd, int64(l.MmapOffset), int(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("%w: mapping %#x bytes: %v", ErrBadLog, n, err)
	}
	// Every word that holds a byte of the log lies in a page the file
	// reaches (the offset is page aligned), so it can be accessed.
	return &backendLog{data: data, words: wordsOf(data)[:(l.MmapSize+7)/8], pages: 8 * l.MmapSize}, nil
}

const maxInt = int(^uint(0) >> 1)

// mark sets the bits of the pages holding [gpa, gpa+n). Call it after the
// writes it records: a Take that clears a bit before the writes are
// visible would let the front-end copy the page stale.
func (b *backendLog) mark(gpa, n uint64) {
	if n == 0 {
		return
	}
	first := gpa / LogPageSize
	last := (gpa + n - 1) / LogPageSize
	if gpa+n-1 < gpa {
		last = ^uint64(0) / LogPageSize
	}
	if first >= b.pages {
		b.beyond.Add(1)
		return
	}
	if last >= b.pages {
		b.beyond.Add(1)
		last = b.pages - 1
	}
	for w := first / 64; w <= last/64; w++ {
		mask := ^uint64(0)
		if w == first/64 {
			mask &= ^uint64(0) << (first % 64)
		}
		if w == last/64 {
			mask &= ^uint64(0) >> (63 - last%64)
		}
		atomic.OrUint64(&b.words[w], mask)
	}
}

func (b *backendLog) close() {
	if b.data != nil {
		unix.Munmap(b.data)
		b.data, b.words = nil, nil
	}
}
