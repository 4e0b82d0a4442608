package uring

// Kernel ABI of io_uring, transcribed from <linux/io_uring.h>. Only what this
// package uses is here; abi_unsafe_test.go checks sizes and offsets against
// the header's layout.

const (
	opNop      = 0  // IORING_OP_NOP
	opReadv    = 1  // IORING_OP_READV
	opWritev   = 2  // IORING_OP_WRITEV
	opFsync    = 3  // IORING_OP_FSYNC
	opCancel   = 14 // IORING_OP_ASYNC_CANCEL
	opRead     = 22 // IORING_OP_READ
	opWrite    = 23 // IORING_OP_WRITE
	fsyncData  = 1 << 0
	cancelAny  = 1 << 2 // IORING_ASYNC_CANCEL_ANY (5.19)
	sqeFixed   = 1 << 0 // IOSQE_FIXED_FILE
	enterGetEv = 1 << 0 // IORING_ENTER_GETEVENTS

	featSingleMmap = 1 << 0 // IORING_FEAT_SINGLE_MMAP
	featNoDrop     = 1 << 1 // IORING_FEAT_NODROP

	offSQRing = 0          // IORING_OFF_SQ_RING
	offSQEs   = 0x10000000 // IORING_OFF_SQES

	registerFiles   = 2 // IORING_REGISTER_FILES
	unregisterFiles = 3 // IORING_UNREGISTER_FILES
)

// sqe is struct io_uring_sqe (64 bytes); the unions are named after the
// member this package writes.
type sqe struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64
	addr        uint64
	len         uint32
	opFlags     uint32 // rw_flags, fsync_flags, ...
	userData    uint64
	bufIndex    uint16
	personality uint16
	spliceFdIn  int32
	addr3       uint64
	_           uint64
}

// cqe is struct io_uring_cqe without IORING_SETUP_CQE32.
type cqe struct {
	userData uint64
	res      int32
	flags    uint32
}

// sqringOffsets is struct io_sqring_offsets.
type sqringOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

// cqringOffsets is struct io_cqring_offsets.
type cqringOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

// params is struct io_uring_params.
type params struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	resv                                                                   [3]uint32
	sqOff                                                                  sqringOffsets
	cqOff                                                                  cqringOffsets
}
