package labtest

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// Lab slots cap how many labs the test binaries of one host run at once.
// go test runs two packages at a time on a 2-core machine and e2e runs
// two shards, so three nested labs could share two cores; the lab hazards
// (a frozen L2, an L1 gone silent or dead) cluster there. A lab run first
// takes one of a few slots (lock files all test binaries of the user
// share) and keeps it until its retries are done.
//
// Waiting counts against go test's deadline like any other time: deadlines
// are reckoned from the binary's start (binaryStart), not the lab's.

// binaryStart is when this test binary started: go test's -timeout runs
// from about then.
var binaryStart = time.Now()

// slotCount is how many labs may run at once: VIO_LAB_SLOTS, or one per
// host CPU (each lab is a 2-vCPU L1, mostly waiting on its guests).
func slotCount() (int, error) {
	v := os.Getenv("VIO_LAB_SLOTS")
	if v == "" {
		return max(1, runtime.NumCPU()), nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("VIO_LAB_SLOTS=%q is not a count of labs: set it to 1 or more, or unset it", v)
	}
	return n, nil
}

// slotDir is where the slots' lock files live: one directory per user, so
// that every test binary of the suite sees the same ones.
func slotDir() string {
	return filepath.Join(os.TempDir(), fmt.Sprintf("vio-lab-slots-%d", os.Getuid()))
}

// takeSlot blocks until one of n slots under dir is free, takes it, and
// returns its release. Each slot is a lock file held with flock, so a test
// binary that dies frees its slot with its file descriptors.
//
// One goroutine waits on each slot's lock; the first to get one wins.
// The others keep waiting on theirs and let go the moment they get it: an
// abandoned wait costs a goroutine until that slot frees, and never holds a
// slot from anyone.
func takeSlot(dir string, n int) (release func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("labtest: lab slots: %w", err)
	}
	won := make(chan *os.File, n)
	errs := make(chan error, n)
	for i := range n {
		go func() {
			f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(i)), os.O_CREATE|os.O_RDWR, 0o600)
			if err != nil {
				errs <- err
				return
			}
			for {
				err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
				if err != unix.EINTR {
					break
				}
			}
			if err != nil {
				f.Close()
				errs <- err
				return
			}
			won <- f
		}()
	}
	var first *os.File
	for failed := 0; first == nil; {
		select {
		case first = <-won:
		case e := <-errs:
			if failed++; failed == n {
				return nil, fmt.Errorf("labtest: lab slots in %s: %w", dir, e)
			}
		}
	}
	// The losers, as they get their slots, let them go at once.
	go func() {
		for range n - 1 {
			select {
			case f := <-won:
				f.Close()
			case <-errs:
			}
		}
	}()
	return func() { first.Close() }, nil
}
