// Package uring is a small io_uring binding for vio's block back-ends,
// written directly over golang.org/x/sys/unix.
//
// Two layers:
//
//   - Ring is one io_uring instance: io_uring_setup, one mapping for both
//     rings (IORING_FEAT_SINGLE_MMAP) plus the SQE array, Prep of READ/WRITE
//     (READV/WRITEV for several buffers), FSYNC (optionally
//     IORING_FSYNC_DATASYNC), NOP and cancel-all, Submit/Publish/SubmitTo,
//     Wait and Reap, and registered files. The SQ tail is published with an
//     atomic store after the SQEs are written, the CQ tail is loaded
//     atomically before the CQEs are read and the CQ head is stored after.
//     A Ring has one submission side and one completion side, each used by
//     one goroutine at a time.
//
//   - Queue shares a Ring among any number of goroutines. A caller preps
//     and publishes its request under a lock, then enters the kernel
//     outside it; requests that complete inline (page-cache reads) are
//     reaped by the caller, the rest by one completion goroutine. Depth
//     slots bound what is in flight: Start blocks when they are all taken.
//     user_data is the slot number, so correlation needs no map. A
//     completion of -EAGAIN or -EINTR is resubmitted (at most 8 times); a
//     short read or write is reported as such (Result.N < Op.Len(), nil
//     error) for the caller to finish; other errors are the syscall.Errno,
//     wrapped. Close fails new requests, cancels those the kernel holds
//     (ECANCELED), waits for every one to complete, then unmaps the ring.
//
// Supported says in one sentence why io_uring cannot be used here (ENOSYS,
// the kernel.io_uring_disabled sysctl, seccomp), so callers can fall back to
// pread/pwrite.
//
// Buffers given to an Op belong to the kernel until its completion: they
// must not be touched or reused before. All unsafe code is in *_unsafe.go.
package uring
