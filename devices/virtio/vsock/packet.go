package vsock

import (
	"encoding/binary"
	"fmt"
)

// The packet header (virtio 1.2 section 5.10.6, struct virtio_vsock_hdr),
// little-endian and packed.
const (
	HeaderSize = 44

	offSrcCID   = 0
	offDstCID   = 8
	offSrcPort  = 16
	offDstPort  = 20
	offLen      = 24
	offType     = 28
	offOp       = 30
	offFlags    = 32
	offBufAlloc = 36
	offFwdCnt   = 40
)

// Socket types.
const (
	TypeStream    uint16 = 1
	TypeSeqpacket uint16 = 2
)

// Operations.
const (
	OpInvalid       uint16 = 0
	OpRequest       uint16 = 1
	OpResponse      uint16 = 2
	OpRST           uint16 = 3
	OpShutdown      uint16 = 4
	OpRW            uint16 = 5
	OpCreditUpdate  uint16 = 6
	OpCreditRequest uint16 = 7
)

// SHUTDOWN flags.
const (
	ShutdownRecv uint32 = 1 // the sender will receive no more
	ShutdownSend uint32 = 2 // the sender will send no more
	shutdownBoth        = ShutdownRecv | ShutdownSend
)

// HostCID is the host's context id: the peer of every guest connection.
const HostCID = 2

// MaxPayload bounds one packet's data, as Linux's
// VIRTIO_VSOCK_MAX_PKT_BUF_SIZE does: a longer RW from the guest is a
// protocol error, and the device never sends a longer one.
const MaxPayload = 64 << 10

// Header is a decoded packet header.
type Header struct {
	SrcCID, DstCID   uint64
	SrcPort, DstPort uint32
	Len              uint32
	Type, Op         uint16
	Flags            uint32
	BufAlloc, FwdCnt uint32
}

// DecodeHeader reads a header from the first HeaderSize bytes of b.
func DecodeHeader(b []byte) Header {
	le := binary.LittleEndian
	return Header{
		SrcCID: le.Uint64(b[offSrcCID:]), DstCID: le.Uint64(b[offDstCID:]),
		SrcPort: le.Uint32(b[offSrcPort:]), DstPort: le.Uint32(b[offDstPort:]),
		Len: le.Uint32(b[offLen:]), Type: le.Uint16(b[offType:]), Op: le.Uint16(b[offOp:]),
		Flags: le.Uint32(b[offFlags:]), BufAlloc: le.Uint32(b[offBufAlloc:]), FwdCnt: le.Uint32(b[offFwdCnt:]),
	}
}

// Encode writes h into the first HeaderSize bytes of b.
func (h Header) Encode(b []byte) {
	le := binary.LittleEndian
	le.PutUint64(b[offSrcCID:], h.SrcCID)
	le.PutUint64(b[offDstCID:], h.DstCID)
	le.PutUint32(b[offSrcPort:], h.SrcPort)
	le.PutUint32(b[offDstPort:], h.DstPort)
	le.PutUint32(b[offLen:], h.Len)
	le.PutUint16(b[offType:], h.Type)
	le.PutUint16(b[offOp:], h.Op)
	le.PutUint32(b[offFlags:], h.Flags)
	le.PutUint32(b[offBufAlloc:], h.BufAlloc)
	le.PutUint32(b[offFwdCnt:], h.FwdCnt)
}

func (h Header) String() string {
	return fmt.Sprintf("op %d type %d %d:%d -> %d:%d len %d flags %#x buf_alloc %d fwd_cnt %d",
		h.Op, h.Type, h.SrcCID, h.SrcPort, h.DstCID, h.DstPort, h.Len, h.Flags, h.BufAlloc, h.FwdCnt)
}
