// Package raw is the block back-end for a regular file or a block device
// holding a disk image byte for byte.
//
// It implements QEMU's cache modes, so the front end can offer the guest a
// write cache or not: the mode decides whether the host page cache is used
// (O_DIRECT), whether every write is synchronous (O_DSYNC) and what Flush
// does. With O_DIRECT, requests that are not aligned to the device's
// logical block size go through aligned bounce buffers.
package raw

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/block"
)

// CacheMode selects how writes reach the disk, as QEMU's -drive cache=.
type CacheMode int

const (
	// Writeback uses the host page cache; Flush is fdatasync. The guest
	// sees a volatile write cache. This is the default.
	Writeback CacheMode = iota
	// Writethrough makes every write synchronous (O_DSYNC); the guest
	// sees no write cache.
	Writethrough
	// None bypasses the host page cache (O_DIRECT); Flush is fdatasync.
	None
	// DirectSync bypasses the page cache and makes writes synchronous.
	DirectSync
	// Unsafe uses the page cache and ignores Flush: fast, and a host crash
	// loses data. For scratch disks and tests only.
	Unsafe
)

var cacheNames = map[CacheMode]string{
	Writeback: "writeback", Writethrough: "writethrough", None: "none",
	DirectSync: "directsync", Unsafe: "unsafe",
}

func (m CacheMode) String() string {
	if s, ok := cacheNames[m]; ok {
		return s
	}
	return fmt.Sprintf("CacheMode(%d)", int(m))
}

// ParseCacheMode parses QEMU's cache mode names.
func ParseCacheMode(s string) (CacheMode, error) {
	for m, n := range cacheNames {
		if n == s {
			return m, nil
		}
	}
	return 0, fmt.Errorf("raw: unknown cache mode %q (want writeback, writethrough, none, directsync or unsafe)", s)
}

// Direct reports whether the mode bypasses the host page cache.
func (m CacheMode) Direct() bool { return m == None || m == DirectSync }

// WriteCache reports whether the guest should be told the disk has a
// volatile write cache (and so send flushes).
func (m CacheMode) WriteCache() bool { return m == Writeback || m == None || m == Unsafe }

// Options configure Open.
type Options struct {
	ReadOnly bool
	Cache    CacheMode
	// Lock takes QEMU-compatible image locks (see lock.go) on a regular
	// file, so that no other vio or QEMU process writes the image while it
	// is open, and (when writable) none reads it. Block devices are not
	// locked, as QEMU does not lock them either.
	Lock bool
}

// File is a raw image in a regular file or a block device.
type File struct {
	f        *os.File
	fd       int
	readOnly bool
	cache    CacheMode
	blockDev bool
	align    int64 // I/O alignment with O_DIRECT; 1 otherwise
	size     atomic.Int64
	closed   atomic.Bool

	// syncErr latches the first failed fdatasync. After a writeback error
	// Linux marks the failed pages clean and reports the error once, so a
	// later fdatasync succeeds although the data never reached the disk.
	// A guest told "flushed" then would trust lost data: every later
	// Flush and mutation fails with the original error instead, until the
	// image is reopened (as QEMU and vio's qcow2 do).
	syncErr atomic.Pointer[error]

	// noNowait is set when the kernel refused a non-blocking read
	// (preadv2 with RWF_NOWAIT): TryReadvAt is unsupported from then on.
	noNowait atomic.Bool

	// rmw is held shared by aligned direct I/O and exclusively by the
	// read-modify-write of unaligned direct writes, which rewrite whole
	// blocks and so must not interleave with other writes to them.
	rmw sync.RWMutex
}

var (
	_ block.Backend          = (*File)(nil)
	_ block.Discarder        = (*File)(nil)
	_ block.ZeroWriter       = (*File)(nil)
	_ block.Resizer          = (*File)(nil)
	_ block.ReadOnlyReporter = (*File)(nil)
	_ block.VectorReaderAt   = (*File)(nil)
	_ block.VectorWriterAt   = (*File)(nil)
	_ block.TryReader        = (*File)(nil)
)

// Create makes (or truncates) a regular file of size bytes, sparse, and
// opens it.
func Create(path string, size int64, opts Options) (*File, error) {
	if size < 0 {
		return nil, fmt.Errorf("raw: negative size %d", size)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("raw: %w", err)
	}
	err = f.Truncate(size)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("raw: %w", err)
	}
	return Open(path, opts)
}

// Open opens a raw image.
func Open(path string, opts Options) (*File, error) {
	flags := 0
	if opts.ReadOnly {
		flags |= unix.O_RDONLY
	} else {
		flags |= unix.O_RDWR
	}
	if opts.Cache.Direct() {
		flags |= unix.O_DIRECT
	}
	if opts.Cache == Writethrough || opts.Cache == DirectSync {
		flags |= unix.O_DSYNC
	}
	f, err := OpenImageFile(path, flags)
	if errors.Is(err, ErrNotImage) {
		return nil, err
	}
	if err != nil {
		if errors.Is(err, unix.EINVAL) && opts.Cache.Direct() {
			return nil, fmt.Errorf("raw: %s: the file system does not support O_DIRECT (cache=%v); use cache=writeback: %w", path, opts.Cache, err)
		}
		return nil, fmt.Errorf("raw: %w", err)
	}
	r, err := newFile(f, opts)
	if err != nil {
		f.Close()
		if errors.Is(err, ErrLocked) {
			return nil, fmt.Errorf("%s: %w (is a VM or qemu-img using it?)", path, err)
		}
		return nil, fmt.Errorf("raw: %s: %w", path, err)
	}
	return r, nil
}

func newFile(f *os.File, opts Options) (*File, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	r := &File{f: f, fd: int(f.Fd()), readOnly: opts.ReadOnly, cache: opts.Cache, align: 1}
	switch {
	case fi.Mode().IsRegular():
		r.size.Store(fi.Size())
	case fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0:
		r.blockDev = true
		n, err := unix.IoctlGetInt(r.fd, unix.BLKGETSIZE64)
		if err != nil {
			return nil, fmt.Errorf("getting block device size: %w", err)
		}
		r.size.Store(int64(n))
	default:
		return nil, errors.New("not a regular file or block device")
	}
	if opts.Cache.Direct() {
		r.align = r.directAlign()
	}
	if opts.Lock && !r.blockDev {
		if err := r.lock(); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// directAlign finds the alignment O_DIRECT needs: the logical block size of
// a block device, or what statx reports for a file, falling back to 4096,
// which every Linux file system accepts.
func (r *File) directAlign() int64 {
	if r.blockDev {
		if n, err := unix.IoctlGetInt(r.fd, unix.BLKSSZGET); err == nil && n > 0 && n&(n-1) == 0 {
			return int64(n)
		}
		return 4096
	}
	var st unix.Statx_t
	if err := unix.Statx(r.fd, "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &st); err == nil &&
		st.Mask&unix.STATX_DIOALIGN != 0 {
		a := max(st.Dio_offset_align, st.Dio_mem_align)
		if a > 0 && a&(a-1) == 0 && a <= 1<<16 {
			return int64(a)
		}
	}
	return 4096
}

// Alignment returns the offset and length alignment of direct I/O (1 when
// the page cache is used). Callers that align get the zero-copy path.
func (r *File) Alignment() int64 { return r.align }

// Cache returns the cache mode the file was opened with.
func (r *File) Cache() CacheMode { return r.cache }

func (r *File) Size() int64         { return r.size.Load() }
func (r *File) ReadOnly() bool      { return r.readOnly }
func (r *File) IsBlockDevice() bool { return r.blockDev }

func (r *File) ReadAt(p []byte, off int64) (int, error) {
	return r.ReadvAt([][]byte{p}, off)
}

func (r *File) WriteAt(p []byte, off int64) (int, error) {
	return r.WritevAt([][]byte{p}, off)
}

func total(bufs [][]byte) int64 {
	var n int64
	for _, b := range bufs {
		n += int64(len(b))
	}
	return n
}

// clip limits bufs to n bytes.
func clip(bufs [][]byte, n int64) [][]byte {
	var out [][]byte
	for _, b := range bufs {
		if n <= 0 {
			break
		}
		k := min(int64(len(b)), n)
		out = append(out, b[:k])
		n -= k
	}
	return out
}

func (r *File) ReadvAt(bufs [][]byte, off int64) (int, error) {
	if r.closed.Load() {
		return 0, block.ErrClosed
	}
	if off < 0 {
		return 0, fmt.Errorf("raw: read at %d: %w", off, block.ErrOutOfRange)
	}
	want := total(bufs)
	size := r.Size()
	if off >= size {
		if want == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	n := min(want, size-off)
	var err error
	var got int
	if r.align > 1 {
		got, err = r.readDirect(clip(bufs, n), off, n)
	} else {
		got, err = preadvFull(r.fd, clip(bufs, n), off)
	}
	if err != nil {
		return got, fmt.Errorf("raw: read %d bytes at %d: %w", n, off, err)
	}
	if n < want {
		return got, io.EOF
	}
	return got, nil
}

// errNoTry is TryReadvAt's answer when the file cannot serve reads
// without waiting.
var errNoTry = fmt.Errorf("raw: non-blocking reads: %w", errors.ErrUnsupported)

// TryReadvAt implements block.TryReader with preadv2(RWF_NOWAIT), which
// copies what the page cache holds and fails with EAGAIN where it would
// have to read the disk. With O_DIRECT there is no cache to hit (a
// non-blocking direct read still waits for the device), so the file
// reports the try unsupported; so does a kernel or file system without
// RWF_NOWAIT (EOPNOTSUPP), for good. A read running past Size is left to
// ReadvAt, which knows what a disk's end reads as.
func (r *File) TryReadvAt(bufs [][]byte, off int64) (int, error) {
	if r.closed.Load() {
		return 0, block.ErrClosed
	}
	if r.align > 1 || r.noNowait.Load() {
		return 0, errNoTry
	}
	if off < 0 {
		return 0, fmt.Errorf("raw: read at %d: %w", off, block.ErrOutOfRange)
	}
	if want, size := total(bufs), r.Size(); off > size || want > size-off {
		return 0, block.ErrWouldBlock
	}
	done := 0
	bufs = advance(bufs, 0)
	for len(bufs) > 0 {
		n, err := unix.Preadv2(r.fd, bufs, off, unix.RWF_NOWAIT)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return done, block.ErrWouldBlock
		case err == unix.EOPNOTSUPP || err == unix.ENOSYS:
			r.noNowait.Store(true)
			return done, errNoTry
		case err != nil:
			return done, fmt.Errorf("raw: read at %d: %w", off, err)
		case n == 0:
			// The file ended early (it shrank under us): ReadvAt reads
			// that as zeroes.
			return done, block.ErrWouldBlock
		}
		done += n
		off += int64(n)
		bufs = advance(bufs, n)
	}
	return done, nil
}

func (r *File) WritevAt(bufs [][]byte, off int64) (int, error) {
	if r.closed.Load() {
		return 0, block.ErrClosed
	}
	if r.readOnly {
		return 0, block.ErrReadOnly
	}
	if err := r.latched(); err != nil {
		return 0, err
	}
	n := total(bufs)
	if err := block.CheckRange(off, n, r.Size()); err != nil {
		return 0, fmt.Errorf("raw: write %d bytes at %d: %w", n, off, err)
	}
	var got int
	var err error
	if r.align > 1 {
		got, err = r.writeDirect(bufs, off, n)
	} else {
		got, err = pwritevFull(r.fd, bufs, off)
	}
	if err != nil {
		return got, fmt.Errorf("raw: write %d bytes at %d: %w", n, off, err)
	}
	return got, nil
}

// preadvFull reads until bufs are full, retrying interrupted and short
// reads. Reading a hole or a file that shrank under us yields zeroes
// rather than a short read, as a disk would.
func preadvFull(fd int, bufs [][]byte, off int64) (int, error) {
	done := 0
	for len(bufs) > 0 {
		var n int
		var err error
		if len(bufs) == 1 {
			n, err = unix.Pread(fd, bufs[0], off)
		} else {
			n, err = unix.Preadv(fd, bufs, off)
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return done, err
		}
		if n == 0 { // end of file: the rest reads as zeroes
			for _, b := range bufs {
				clear(b)
				done += len(b)
			}
			return done, nil
		}
		done += n
		off += int64(n)
		bufs = advance(bufs, n)
	}
	return done, nil
}

func pwritevFull(fd int, bufs [][]byte, off int64) (int, error) {
	done := 0
	// Empty buffers go first: a write of nothing returns 0, which would
	// read as a short write (FuzzDirectIO found WriteAt(p[:0], off)
	// failing so).
	bufs = advance(bufs, 0)
	for len(bufs) > 0 {
		var n int
		var err error
		if len(bufs) == 1 {
			n, err = unix.Pwrite(fd, bufs[0], off)
		} else {
			n, err = unix.Pwritev(fd, bufs, off)
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return done, err
		}
		if n == 0 {
			return done, io.ErrShortWrite
		}
		done += n
		off += int64(n)
		bufs = advance(bufs, n)
	}
	return done, nil
}

// advance drops n bytes from the front of bufs (and empty buffers).
func advance(bufs [][]byte, n int) [][]byte {
	for len(bufs) > 0 && n >= len(bufs[0]) {
		n -= len(bufs[0])
		bufs = bufs[1:]
	}
	if len(bufs) > 0 && n > 0 {
		bufs = append([][]byte{bufs[0][n:]}, bufs[1:]...)
	}
	return bufs
}

func (r *File) aligned(bufs [][]byte, off, n int64) bool {
	if off%r.align != 0 || n%r.align != 0 {
		return false
	}
	for _, b := range bufs {
		if int64(len(b))%r.align != 0 || !addrAligned(b, r.align) {
			return false
		}
	}
	return true
}

// readDirect reads n bytes at off under O_DIRECT, bouncing when the
// request or its buffers are not aligned.
func (r *File) readDirect(bufs [][]byte, off, n int64) (int, error) {
	r.rmw.RLock()
	defer r.rmw.RUnlock()
	if r.aligned(bufs, off, n) {
		return directPreadv(r.fd, bufs, off)
	}
	start := off &^ (r.align - 1)
	end := (off + n + r.align - 1) &^ (r.align - 1)
	bounce := alignedBuf(int(end-start), r.align)
	if _, err := directPreadv(r.fd, [][]byte{bounce}, start); err != nil {
		return 0, err
	}
	src := bounce[off-start:]
	done := 0
	for _, b := range bufs {
		done += copy(b, src[done:])
	}
	return done, nil
}

// writeDirect writes under O_DIRECT. Unaligned requests read the partial
// head and tail blocks, merge, and write whole blocks, holding rmw
// exclusively so that no other write to those blocks interleaves.
func (r *File) writeDirect(bufs [][]byte, off, n int64) (int, error) {
	if r.aligned(bufs, off, n) {
		r.rmw.RLock()
		defer r.rmw.RUnlock()
		return directPwritev(r.fd, bufs, off)
	}
	r.rmw.Lock()
	defer r.rmw.Unlock()
	start := off &^ (r.align - 1)
	end := (off + n + r.align - 1) &^ (r.align - 1)
	bounce := alignedBuf(int(end-start), r.align)
	// The head and tail blocks keep bytes outside the request. A block
	// device's size is a multiple of its block size, and a file is read as
	// zeroes past its end, so reading whole blocks is always possible.
	if start != off {
		if _, err := directPreadv(r.fd, [][]byte{bounce[:r.align]}, start); err != nil {
			return 0, err
		}
	}
	if end != off+n && (end-r.align > start || start == off) {
		if _, err := directPreadv(r.fd, [][]byte{bounce[end-start-r.align:]}, end-r.align); err != nil {
			return 0, err
		}
	}
	pos := off - start
	for _, b := range bufs {
		pos += int64(copy(bounce[pos:], b))
	}
	// Never extend a regular file by the tail padding.
	wend := min(end, r.Size())
	if wend < end && !r.blockDev {
		// The last block is partial in the file; write it through a
		// non-direct descriptor would bypass O_DIRECT coherency, so
		// write the aligned part directly and the remainder buffered.
		alignedEnd := wend &^ (r.align - 1)
		if alignedEnd > start {
			if _, err := directPwritev(r.fd, [][]byte{bounce[:alignedEnd-start]}, start); err != nil {
				return 0, err
			}
		}
		if err := r.writeTail(bounce[alignedEnd-start:wend-start], alignedEnd); err != nil {
			return 0, err
		}
		return int(n), nil
	}
	if _, err := directPwritev(r.fd, [][]byte{bounce}, start); err != nil {
		return 0, err
	}
	return int(n), nil
}

// directPreadv and directPwritev are the reads and writes of direct I/O
// (every one aligned in offset, length and buffer address); tests replace
// them to check that, on file systems that do not enforce it, and to
// drive the bounce paths without O_DIRECT.
var directPreadv, directPwritev = preadvFull, pwritevFull

// writeTail writes the unaligned end of a file whose size is not a
// multiple of the direct I/O alignment, through a buffered descriptor
// which is synced at once so that later direct reads see it.
func (r *File) writeTail(p []byte, off int64) error {
	f, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", r.fd), os.O_WRONLY|unix.O_CLOEXEC|unix.O_DSYNC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteAt(p, off); err != nil {
		return err
	}
	return f.Sync()
}

// fdatasync is the system call Flush makes; tests replace it to inject
// the writeback errors a real disk gives rarely.
var fdatasync = unix.Fdatasync

// latched returns the error of an earlier failed fdatasync, if any.
func (r *File) latched() error {
	if p := r.syncErr.Load(); p != nil {
		return *p
	}
	return nil
}

// Flush makes completed writes durable, as the cache mode defines. Once an
// fdatasync has failed, Flush (and every write) returns that error until
// the file is reopened: see File.syncErr.
func (r *File) Flush() error {
	if r.closed.Load() {
		return block.ErrClosed
	}
	if r.cache == Unsafe || r.readOnly {
		return nil
	}
	if err := r.latched(); err != nil {
		return err
	}
	for {
		err := fdatasync(r.fd)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			err = fmt.Errorf("raw: fdatasync failed, so writes since the last good flush may be lost (reopen the image to clear): %w", err)
			r.syncErr.CompareAndSwap(nil, &err)
			return r.latched()
		}
		return nil
	}
}

// Close flushes (unless the cache mode is Unsafe) and closes the file.
func (r *File) Close() error {
	if r.closed.Load() {
		return block.ErrClosed
	}
	ferr := r.Flush()
	r.closed.Store(true)
	if err := r.f.Close(); err != nil && ferr == nil {
		ferr = fmt.Errorf("raw: %w", err)
	}
	return ferr
}

func (r *File) checkMutation(off, n int64) error {
	if r.closed.Load() {
		return block.ErrClosed
	}
	if r.readOnly {
		return block.ErrReadOnly
	}
	if err := r.latched(); err != nil {
		return err
	}
	if err := block.CheckRange(off, n, r.Size()); err != nil {
		return fmt.Errorf("raw: range %d+%d: %w", off, n, err)
	}
	return nil
}

// Discard punches a hole in a file (keeping its size) or discards the
// block-aligned part of the range on a block device. File systems that
// cannot punch holes make it a no-op, which the contract allows.
func (r *File) Discard(off, n int64) error {
	if err := r.checkMutation(off, n); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	if r.blockDev {
		return r.blkdevRange(unix.BLKDISCARD, off, n, false)
	}
	err := fallocate(r.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
		return nil
	}
	return err
}

// WriteZeroes zeroes the range without transferring zeroes where the host
// can: by punching a hole (unmap) or with FALLOC_FL_ZERO_RANGE for files,
// and BLKZEROOUT for block devices; it writes zeroes otherwise.
func (r *File) WriteZeroes(off, n int64, unmap bool) error {
	if err := r.checkMutation(off, n); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	if r.blockDev {
		return r.blkdevRange(unix.BLKZEROOUT, off, n, true)
	}
	// The fallocate calls write around the page cache; with O_DIRECT no
	// bounce may be half-way through the range meanwhile.
	r.rmw.Lock()
	defer r.rmw.Unlock()
	mode := uint32(unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE)
	if unmap {
		mode = unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE
	}
	err := fallocate(r.fd, mode, off, n)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) {
		return err
	}
	r.rmw.Unlock()
	defer r.rmw.Lock()
	return r.writeZeroBuffers(off, n)
}

func (r *File) writeZeroBuffers(off, n int64) error {
	const chunk = 1 << 20
	z := alignedBuf(int(min(n, chunk)), max(r.align, 4096))
	for n > 0 {
		k := min(n, int64(len(z)))
		if _, err := r.WriteAt(z[:k], off); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}

// blkdevRange issues BLKDISCARD or BLKZEROOUT on the aligned middle of the
// range. For zeroing, the unaligned edges are written; for discard they
// are simply kept.
func (r *File) blkdevRange(req uint, off, n int64, zero bool) error {
	bs := int64(512)
	if sz, err := unix.IoctlGetInt(r.fd, unix.BLKSSZGET); err == nil && sz > 0 {
		bs = int64(sz)
	}
	start := (off + bs - 1) / bs * bs
	end := (off + n) / bs * bs
	if zero {
		if start > off {
			if err := r.writeZeroBuffers(off, min(start, off+n)-off); err != nil {
				return err
			}
		}
		if end < off+n && end >= start {
			if err := r.writeZeroBuffers(end, off+n-end); err != nil {
				return err
			}
		}
	}
	if end <= start {
		return nil
	}
	err := ioctlRange(r.fd, req, start, end-start)
	if err == nil {
		return nil
	}
	if !zero && (errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTTY)) {
		return nil
	}
	if zero && (errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTTY)) {
		return r.writeZeroBuffers(start, end-start)
	}
	return fmt.Errorf("raw: ioctl %#x: %w", req, err)
}

func fallocate(fd int, mode uint32, off, n int64) error {
	for {
		err := unix.Fallocate(fd, mode, off, n)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("raw: fallocate: %w", err)
		}
		return nil
	}
}

// Resize changes a regular file's size with ftruncate. A block device's
// size is not ours to change.
func (r *File) Resize(size int64) error {
	if r.closed.Load() {
		return block.ErrClosed
	}
	if r.readOnly {
		return block.ErrReadOnly
	}
	if r.blockDev {
		return fmt.Errorf("raw: resizing a block device: %w", errors.ErrUnsupported)
	}
	if err := r.latched(); err != nil {
		return err
	}
	if size < 0 {
		return fmt.Errorf("raw: resize to %d: %w", size, block.ErrOutOfRange)
	}
	r.rmw.Lock()
	defer r.rmw.Unlock()
	if err := r.f.Truncate(size); err != nil {
		return fmt.Errorf("raw: %w", err)
	}
	r.size.Store(size)
	return nil
}
