package uring

import (
	"fmt"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Ring is one io_uring instance. It is not safe for concurrent use except
// that one goroutine may drive the submission side (Prep, Submit, SQSpace)
// while another drives the completion side (Wait, Reap): the two sides share
// no user-space state, and the kernel allows concurrent io_uring_enter calls
// on one ring.
//
// Memory ordering follows the kernel's contract: SQE contents are written
// before the SQ tail is published with a store, the CQ tail is loaded before
// the CQEs it covers are read, and the CQ head is published after they are
// read. Go's sync/atomic operations are sequentially consistent, which is
// stronger than the acquire/release pairs the kernel needs.
type Ring struct {
	fd       int
	features uint32
	ringMem  []byte
	sqesMem  []byte

	sqHead, sqTail *uint32 // kernel-owned head, user-owned tail
	sqMask         uint32
	sqEntries      uint32
	sqes           []sqe
	sqeTail        uint32 // next SQE to fill, published by Submit

	cqHead, cqTail *uint32 // user-owned head, kernel-owned tail
	cqMask         uint32
	cqEntries      uint32
	cqes           []cqe
}

// New sets up a ring with at least entries submission slots (the kernel
// rounds up to a power of two; the completion ring gets twice as many).
func New(entries uint32) (*Ring, error) {
	if entries == 0 || entries > 32768 {
		return nil, fmt.Errorf("uring: %d ring entries asked for, want 1 to 32768", entries)
	}
	var p params
	fd, err := setup(entries, &p)
	if err != nil {
		return nil, fmt.Errorf("uring: io_uring_setup: %w", err)
	}
	r, err := mapRing(fd, &p)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return r, nil
}

func setup(entries uint32, p *params) (int, error) {
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(p)), 0)
	if errno != 0 {
		return -1, errno
	}
	return int(fd), nil
}

func mapRing(fd int, p *params) (*Ring, error) {
	// One mapping covering both rings (IORING_FEAT_SINGLE_MMAP, since 5.4)
	// keeps this simple; and without NODROP (5.5) a full CQ would lose
	// completions, which the Queue's accounting cannot tolerate.
	if p.features&featSingleMmap == 0 || p.features&featNoDrop == 0 {
		return nil, fmt.Errorf("uring: kernel io_uring lacks SINGLE_MMAP or NODROP (features %#x); Linux 5.5 or later is needed", p.features)
	}
	sqSize := uintptr(p.sqOff.array) + uintptr(p.sqEntries)*4
	cqSize := uintptr(p.cqOff.cqes) + uintptr(p.cqEntries)*unsafe.Sizeof(cqe{})
	size := max(sqSize, cqSize)
	ringMem, err := unix.Mmap(fd, offSQRing, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("uring: mmap of the rings: %w", err)
	}
	sqesMem, err := unix.Mmap(fd, offSQEs, int(uintptr(p.sqEntries)*unsafe.Sizeof(sqe{})), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		unix.Munmap(ringMem)
		return nil, fmt.Errorf("uring: mmap of the submission entries: %w", err)
	}
	u32 := func(off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&ringMem[off])) }
	r := &Ring{
		fd:        fd,
		features:  p.features,
		ringMem:   ringMem,
		sqesMem:   sqesMem,
		sqHead:    u32(p.sqOff.head),
		sqTail:    u32(p.sqOff.tail),
		sqMask:    *u32(p.sqOff.ringMask),
		sqEntries: *u32(p.sqOff.ringEntries),
		sqes:      unsafe.Slice((*sqe)(unsafe.Pointer(&sqesMem[0])), p.sqEntries),
		cqHead:    u32(p.cqOff.head),
		cqTail:    u32(p.cqOff.tail),
		cqMask:    *u32(p.cqOff.ringMask),
		cqEntries: *u32(p.cqOff.ringEntries),
		cqes:      unsafe.Slice((*cqe)(unsafe.Pointer(&ringMem[p.cqOff.cqes])), p.cqEntries),
	}
	// The SQ index array maps ring slot i to SQE i for good; the SQE is
	// chosen by the tail, so the array never changes after this.
	array := unsafe.Slice((*uint32)(unsafe.Pointer(&ringMem[p.sqOff.array])), p.sqEntries)
	for i := range array {
		array[i] = uint32(i)
	}
	r.sqeTail = atomic.LoadUint32(r.sqTail)
	return r, nil
}

// Entries is the number of submission slots; the completion ring has
// CQEntries slots.
func (r *Ring) Entries() int   { return int(r.sqEntries) }
func (r *Ring) CQEntries() int { return int(r.cqEntries) }

// SQSpace is how many more Ops Prep accepts before Submit.
func (r *Ring) SQSpace() int {
	return int(r.sqEntries - (r.sqeTail - atomic.LoadUint32(r.sqHead)))
}

// Prep fills the next submission entry for op, tagged with userData; the
// kernel sees it at the next Submit. op must stay untouched until its
// completion is reaped.
func (r *Ring) Prep(op *Op, userData uint64) error {
	if err := op.check(); err != nil {
		return err
	}
	if r.SQSpace() == 0 {
		return ErrRingFull
	}
	s := &r.sqes[r.sqeTail&r.sqMask]
	*s = sqe{fd: int32(op.Fd), userData: userData}
	if op.Fixed {
		s.flags = sqeFixed
	}
	switch op.Kind {
	case Nop:
		s.opcode = opNop
		s.fd = -1
	case CancelAll:
		s.opcode = opCancel
		s.fd = -1
		s.opFlags = cancelAny
	case Fsync:
		s.opcode = opFsync
		if op.Datasync {
			s.opFlags = fsyncData
		}
	case Read, Write:
		s.off = uint64(op.Off)
		if len(op.Bufs) == 1 {
			s.opcode = opRead
			if op.Kind == Write {
				s.opcode = opWrite
			}
			if b := op.Bufs[0]; len(b) > 0 {
				s.addr = uint64(uintptr(unsafe.Pointer(&b[0])))
				s.len = uint32(len(b))
			}
			break
		}
		s.opcode = opReadv
		if op.Kind == Write {
			s.opcode = opWritev
		}
		op.iov = op.iov[:0]
		for _, b := range op.Bufs {
			v := unix.Iovec{}
			if len(b) > 0 {
				v.Base = &b[0]
				v.SetLen(len(b))
			}
			op.iov = append(op.iov, v)
		}
		if len(op.iov) > 0 {
			s.addr = uint64(uintptr(unsafe.Pointer(&op.iov[0])))
		}
		s.len = uint32(len(op.iov))
	}
	r.sqeTail++
	return nil
}

// Submit publishes the prepared entries and enters the kernel, waiting for
// at least wait completions when wait > 0. It returns how many entries the
// kernel took. EINTR is retried; other errors (EAGAIN, EBUSY: the kernel
// is short of resources) are returned wrapped, with the unsubmitted entries
// still queued for the next call.
func (r *Ring) Submit(wait uint32) (int, error) {
	atomic.StoreUint32(r.sqTail, r.sqeTail) // release: SQEs before tail
	total := 0
	for {
		pending := r.sqeTail - atomic.LoadUint32(r.sqHead)
		if pending == 0 && wait == 0 {
			return total, nil
		}
		var flags uintptr
		if wait > 0 {
			flags = enterGetEv
		}
		n, err := enter(r.fd, pending, wait, flags)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return total, fmt.Errorf("uring: io_uring_enter: %w", err)
		}
		total += n
		if uint32(n) >= pending {
			return total, nil
		}
		// The kernel stopped early (it does on an allocation failure):
		// go round to submit the rest, without waiting twice.
		wait = 0
	}
}

// Publish makes the prepared entries visible to the kernel and returns the
// SQ position just past them; SubmitTo enters the kernel until it has taken
// everything before that position. Together they let several goroutines
// share the submission side: Prep and Publish under one lock, SubmitTo
// outside it, concurrently (the kernel serialises submission itself and
// takes only entries already published).
func (r *Ring) Publish() uint32 {
	atomic.StoreUint32(r.sqTail, r.sqeTail) // release: SQEs before tail
	return r.sqeTail
}

// SubmitTo returns once the kernel's SQ head has reached pos, entering the
// kernel with the published entries as needed. EINTR is retried; other
// errors are returned wrapped.
func (r *Ring) SubmitTo(pos uint32) error {
	for {
		head := atomic.LoadUint32(r.sqHead)
		if int32(pos-head) <= 0 {
			return nil
		}
		_, err := enter(r.fd, atomic.LoadUint32(r.sqTail)-head, 0, 0)
		if err != nil && err != syscall.EINTR {
			return fmt.Errorf("uring: io_uring_enter: %w", err)
		}
	}
}

// Wait blocks until at least one completion is ready to Reap.
func (r *Ring) Wait() error {
	for atomic.LoadUint32(r.cqTail) == atomic.LoadUint32(r.cqHead) {
		_, err := enter(r.fd, 0, 1, enterGetEv)
		if err != nil && err != syscall.EINTR {
			return fmt.Errorf("uring: io_uring_enter: %w", err)
		}
	}
	return nil
}

// Reap calls fn for every ready completion, in ring order, then hands the
// slots back to the kernel. It returns how many it reaped.
func (r *Ring) Reap(fn func(userData uint64, res int32)) int {
	head := atomic.LoadUint32(r.cqHead)
	tail := atomic.LoadUint32(r.cqTail) // acquire: tail before CQEs
	for h := head; h != tail; h++ {
		c := &r.cqes[h&r.cqMask]
		fn(c.userData, c.res)
	}
	atomic.StoreUint32(r.cqHead, tail) // release: CQEs read before head
	return int(tail - head)
}

func enter(fd int, toSubmit, minComplete uint32, flags uintptr) (int, error) {
	n, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(fd), uintptr(toSubmit), uintptr(minComplete), flags, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// RegisterFiles registers fds with the ring so Ops can name them by index
// (Op.Fixed), which saves the kernel a file-table lookup per request.
func (r *Ring) RegisterFiles(fds []int32) error {
	if len(fds) == 0 {
		return fmt.Errorf("uring: RegisterFiles needs at least one file")
	}
	_, _, errno := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(r.fd), registerFiles, uintptr(unsafe.Pointer(&fds[0])), uintptr(len(fds)), 0, 0)
	if errno != 0 {
		return fmt.Errorf("uring: IORING_REGISTER_FILES: %w", errno)
	}
	return nil
}

// UnregisterFiles drops the files RegisterFiles registered.
func (r *Ring) UnregisterFiles() error {
	_, _, errno := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(r.fd), unregisterFiles, 0, 0, 0, 0)
	if errno != 0 {
		return fmt.Errorf("uring: IORING_UNREGISTER_FILES: %w", errno)
	}
	return nil
}

// Close unmaps the rings and closes the ring's descriptor. Requests still
// in the kernel are cancelled by it; their buffers may be written until
// then, so callers must reap everything first (Queue.Close does).
func (r *Ring) Close() error {
	if r.fd < 0 {
		return ErrClosed
	}
	unix.Munmap(r.sqesMem)
	unix.Munmap(r.ringMem)
	err := unix.Close(r.fd)
	r.fd = -1
	r.sqes, r.cqes = nil, nil
	return err
}
