package memory

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// ErrUnaligned reports a Discard range that does not start and end on a
// host page boundary.
var ErrUnaligned = errors.New("memory: range not page aligned")

// Discard gives the host memory behind [gpa, gpa+n) back to the host: the
// guest no longer needs those pages (a balloon inflated over them, or the
// guest reported them free). The range must be page aligned and lie wholly
// inside one region; anything else is an error matching ErrOutOfRange or
// ErrUnaligned and changes nothing. n == 0 does nothing.
//
// Afterwards the range reads as zeros, and a later touch (by the guest
// through KVM, or by the VMM) faults in a fresh zero page, so nothing is
// ever lost that the guest still owned:
//   - anonymous memory: madvise(MADV_DONTNEED) drops the pages;
//   - shared file memory (a memfd): fallocate(PUNCH_HOLE) frees them in the
//     file, so every mapping (a vhost-user back-end's too) sees the zeros,
//     where MADV_DONTNEED would only drop this process's view and free
//     nothing;
//   - a private mapping of a file (a lazily restored snapshot):
//     MADV_DONTNEED drops the private copies, and the range reads as the
//     file's bytes again rather than zeros. A balloon's guest assumes
//     nothing about the content of pages it gave away, so that is enough.
//
// The content changes without a write anyone else sees (KVM's dirty log
// does not), so with dirty tracking on the range is marked dirty after the
// release: a migration then sends the new content.
func (m *Memory) Discard(gpa, n uint64) error {
	page := uint64(unix.Getpagesize())
	if gpa%page != 0 || n%page != 0 {
		return fmt.Errorf("%w: %#x+%#x", ErrUnaligned, gpa, n)
	}
	if n == 0 {
		return nil
	}
	r, off, err := m.locate(gpa, n)
	if err != nil {
		return err
	}
	if r.shared && r.fd >= 0 {
		const mode = unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE
		if err := unix.Fallocate(r.fd, mode, int64(r.fdOff+off), int64(n)); err != nil {
			return fmt.Errorf("memory: releasing %#x+%#x (punching the backing file): %w", gpa, n, err)
		}
	} else if err := unix.Madvise(r.Data[off:off+n], unix.MADV_DONTNEED); err != nil {
		return fmt.Errorf("memory: releasing %#x+%#x: %w", gpa, n, err)
	}
	if m.tracking.Load() {
		r.mark(off, n)
	}
	return nil
}
