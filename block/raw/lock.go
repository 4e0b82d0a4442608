package raw

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Image locking, compatible with QEMU's (block/file-posix.c): open file
// description locks on single bytes of the image file. A holder of
// permission i takes a shared lock on byte 100+i; one that does not allow
// others permission i takes a shared lock on byte 200+i. An opener first
// takes its own bytes and only then tests the bytes that conflict with it,
// as QEMU does: of two openers racing, each sees the other's bytes at the
// latest when it tests, so two writers can never both get in. (In a dead
// heat both may be refused; the error says to try again.) So vio and QEMU
// (qemu-system, qemu-img, qemu-nbd) keep each other from writing an image
// another is using.
const (
	lockBasePerm   = 100
	lockBaseShared = 200

	permConsistentRead = 0
	permWrite          = 1
	permWriteUnchanged = 2
	permResize         = 3
	numPerms           = 4
)

// ErrLocked is matched when another process holds a conflicting lock.
var ErrLocked = errors.New("raw: image is in use by another process")

var permNames = [numPerms]string{"consistent read", "write", "write unchanged", "resize"}

// lockHook, if set (by tests), runs between taking the lock bytes and
// testing for conflicts: the window in which a racing opener can act.
var lockHook func(r *File)

// lock takes the locks for a reader or a writer. Both refuse to share
// write and resize, as QEMU's defaults for an image in use do; readers
// share with readers. On failure the bytes it took stay held until the
// file is closed, which Open does at once.
func (r *File) lock() error {
	perms := []int{permConsistentRead}
	if !r.readOnly {
		perms = append(perms, permWrite, permWriteUnchanged, permResize)
	}
	unshared := []int{permWrite, permResize}
	for _, p := range perms {
		if err := r.setLock(int64(lockBasePerm + p)); err != nil {
			return err
		}
	}
	for _, p := range unshared {
		if err := r.setLock(int64(lockBaseShared + p)); err != nil {
			return err
		}
	}
	if lockHook != nil {
		lockHook(r)
	}
	// Our own bytes never show here: an OFD lock does not conflict with
	// locks of the same open file description.
	for _, p := range perms {
		if held, err := r.lockHeld(int64(lockBaseShared + p)); err != nil {
			return err
		} else if held {
			return fmt.Errorf("%w: it does not allow %s access", ErrLocked, permNames[p])
		}
	}
	for _, p := range unshared {
		if held, err := r.lockHeld(int64(lockBasePerm + p)); err != nil {
			return err
		} else if held {
			return fmt.Errorf("%w: it holds %s access", ErrLocked, permNames[p])
		}
	}
	return nil
}

// lockHeld reports whether another open file description holds a lock
// on byte off (a write lock test conflicts with any lock).
func (r *File) lockHeld(off int64) (bool, error) {
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: off, Len: 1}
	if err := unix.FcntlFlock(uintptr(r.fd), unix.F_OFD_GETLK, &lk); err != nil {
		return false, fmt.Errorf("raw: testing image lock: %w", err)
	}
	return lk.Type != unix.F_UNLCK, nil
}

// setLock takes a shared lock on byte off. Nobody takes these bytes
// exclusively (QEMU neither), so this only fails on a system error.
func (r *File) setLock(off int64) error {
	lk := unix.Flock_t{Type: unix.F_RDLCK, Whence: 0, Start: off, Len: 1}
	err := unix.FcntlFlock(uintptr(r.fd), unix.F_OFD_SETLK, &lk)
	if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
		return fmt.Errorf("%w (byte %d is locked exclusively)", ErrLocked, off)
	}
	if err != nil {
		return fmt.Errorf("raw: taking image lock: %w", err)
	}
	return nil
}
