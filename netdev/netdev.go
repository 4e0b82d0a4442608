// Package netdev defines the contract between a NIC front-end (virtio-net,
// e1000) and whatever carries its frames: a TAP device, a user-mode stack,
// a switch port, an interposer (pcap, fault injection).
//
// A back-end moves whole Ethernet frames, each preceded by a virtio-net
// header (virtio 1.2 section 5.1.6, struct virtio_net_hdr_v1), in batches.
// The header carries the checksum and segmentation offloads, so a TSO
// frame of 64 KiB crosses the back-end once instead of as 45 segments —
// this is the format Linux's TAP speaks with IFF_VNET_HDR, so the TAP
// back-end passes frames through untouched.
package netdev

import (
	"encoding/binary"
	"errors"
	"strconv"
	"time"
)

// Sizes.
const (
	// HeaderSize is the size of struct virtio_net_hdr_v1 (with
	// num_buffers), the header virtio 1.x always uses.
	HeaderSize = 12
	// MinFrameLen is an Ethernet header: the shortest frame worth moving.
	MinFrameLen = 14
	// MaxFrameLen bounds a frame without its header: the largest IP
	// datagram (a TSO super-frame) behind an 802.1Q-tagged Ethernet
	// header.
	MaxFrameLen = 65535 + 14 + 4
	// MaxPacketLen is a header plus the largest frame: what a receive
	// buffer must hold.
	MaxPacketLen = HeaderSize + MaxFrameLen
)

// Backend carries frames for one NIC queue pair.
//
// ReadFrames blocks until at least one frame has arrived (or the read
// deadline passes, or the back-end is closed), then reads as many as are
// immediately available, up to len(bufs): frame i, header first, goes into
// bufs[i] and its length into sizes[i]. Every bufs[i] must hold
// MaxPacketLen bytes. It returns the number of frames read; n == 0 only
// with an error. A deadline error matches os.ErrDeadlineExceeded and
// leaves the back-end usable; after Close, errors match ErrClosed.
//
// WriteFrames sends frames in order. Each frame is a gather list whose
// concatenation is a header followed by the frame; the back-end does not
// retain the buffers after it returns (they may be guest memory). It
// returns the number of frames sent; n < len(frames) only with an error,
// which concerns frames[n] alone (the caller drops it and may go on with
// the rest), unless it matches ErrClosed. Like a cable, a back-end may lose
// frames without an error when its other end is congested or absent.
//
// SetReadDeadline bounds ReadFrames, as net.Conn's does: a zero time means
// no deadline; a time in the past makes a blocked ReadFrames return at
// once. A front-end uses it to stop its receive goroutine on reset.
//
// One goroutine at a time may call ReadFrames and one WriteFrames; the two
// may run concurrently with each other and with SetReadDeadline. Close
// unblocks both; it must be called once.
type Backend interface {
	ReadFrames(bufs [][]byte, sizes []int) (int, error)
	WriteFrames(frames [][][]byte) (int, error)
	SetReadDeadline(t time.Time) error
	Close() error
}

// Offloads is a set of checksum and segmentation offloads.
type Offloads uint32

// Offloads, as in virtio-net's feature bits and TUNSETOFFLOAD.
const (
	OffloadCsum   Offloads = 1 << iota // partial checksums (VIRTIO_NET_HDR_F_NEEDS_CSUM)
	OffloadTSO4                        // TCP segmentation, IPv4
	OffloadTSO6                        // TCP segmentation, IPv6
	OffloadTSOECN                      // TSO with the ECN (CWR) bit
	OffloadUFO                         // UDP fragmentation
	OffloadUSO4                        // UDP segmentation, IPv4
	OffloadUSO6                        // UDP segmentation, IPv6
)

// Offloader is implemented by back-ends that handle offloads. A back-end
// without it neither accepts nor delivers frames that need them: every
// header it sees or produces has no flags and GSO_NONE, and the front-end
// offers the guest no offloads.
type Offloader interface {
	// Offloads reports what the back-end accepts from WriteFrames and can
	// deliver through ReadFrames.
	Offloads() Offloads
	// SetRecvOffloads restricts what ReadFrames may deliver to o, a
	// subset of Offloads(): the front-end calls it with what its guest
	// can receive, and the back-end does the rest in software (Linux
	// segments and checksums for a TAP).
	SetRecvOffloads(o Offloads) error
}

// QueueSwitch is implemented by back-ends that are one queue of a
// multi-queue interface (a multi-queue TAP): a disabled queue gets no
// traffic steered to it, so flows do not wait on a queue its front-end
// does not read. Front-ends disable the queues of pairs the guest does not
// use. A back-end that is not part of a multi-queue interface accepts
// SetQueueEnabled(true) and does nothing.
type QueueSwitch interface {
	SetQueueEnabled(on bool) error
}

// Errors.
var (
	// ErrClosed matches the errors of a closed back-end.
	ErrClosed = errors.New("netdev: back-end closed")
	// ErrHeader reports a virtio-net header that is malformed or needs an
	// offload that was not negotiated.
	ErrHeader = errors.New("netdev: bad virtio-net header")
)

// Header flags and GSO types (struct virtio_net_hdr_v1).
const (
	FlagNeedsCsum = 1
	FlagDataValid = 2
	FlagRSCInfo   = 4

	GSONone  = 0
	GSOTCPv4 = 1
	GSOUDP   = 3
	GSOTCPv6 = 4
	GSOUDPL4 = 5
	GSOECN   = 0x80
)

// Header is struct virtio_net_hdr_v1, decoded.
type Header struct {
	Flags      uint8
	GSOType    uint8
	HdrLen     uint16
	GSOSize    uint16
	CsumStart  uint16
	CsumOffset uint16
	NumBuffers uint16
}

// DecodeHeader decodes the first HeaderSize bytes of b (which must hold
// them).
func DecodeHeader(b []byte) Header {
	le := binary.LittleEndian
	_ = b[HeaderSize-1]
	return Header{
		Flags: b[0], GSOType: b[1],
		HdrLen: le.Uint16(b[2:]), GSOSize: le.Uint16(b[4:]),
		CsumStart: le.Uint16(b[6:]), CsumOffset: le.Uint16(b[8:]),
		NumBuffers: le.Uint16(b[10:]),
	}
}

// Encode writes h into the first HeaderSize bytes of b.
func (h Header) Encode(b []byte) {
	le := binary.LittleEndian
	_ = b[HeaderSize-1]
	b[0], b[1] = h.Flags, h.GSOType
	le.PutUint16(b[2:], h.HdrLen)
	le.PutUint16(b[4:], h.GSOSize)
	le.PutUint16(b[6:], h.CsumStart)
	le.PutUint16(b[8:], h.CsumOffset)
	le.PutUint16(b[10:], h.NumBuffers)
}

// Check validates h for a frame of frameLen bytes (without the header)
// given the offloads allowed in this direction. It accepts what Linux's
// virtio_net_hdr_to_skb accepts and bounds the rest: a checksum must lie
// inside the frame, a GSO frame needs a segment size and room for one
// segment after its headers, and only negotiated offloads may be used.
// RSC_INFO and DATA_VALID are receive-side flags, ignored here.
func (h Header) Check(frameLen int, allowed Offloads) error {
	if frameLen < MinFrameLen || frameLen > MaxFrameLen {
		return frameLenError(frameLen)
	}
	if h.Flags&FlagNeedsCsum != 0 {
		if allowed&OffloadCsum == 0 {
			return headerError("checksum offload not negotiated")
		}
		if int(h.CsumStart)+int(h.CsumOffset)+2 > frameLen {
			return headerError("checksum beyond the frame")
		}
	}
	gso := h.GSOType &^ GSOECN
	if gso == GSONone {
		if h.GSOType&GSOECN != 0 {
			return headerError("ECN without GSO")
		}
		return nil
	}
	var need Offloads
	switch gso {
	case GSOTCPv4:
		need = OffloadTSO4
	case GSOTCPv6:
		need = OffloadTSO6
	case GSOUDP:
		need = OffloadUFO
	case GSOUDPL4:
		need = OffloadUSO4 | OffloadUSO6
	default:
		return headerError("unknown GSO type")
	}
	if allowed&need == 0 {
		return headerError("GSO type not negotiated")
	}
	if h.GSOType&GSOECN != 0 && allowed&OffloadTSOECN == 0 {
		return headerError("ECN not negotiated")
	}
	// Segmentation without a checksum offload makes no sense (Linux
	// refuses it for TCP and UDP L4 as well).
	if h.Flags&FlagNeedsCsum == 0 && gso != GSOUDP {
		return headerError("GSO without NEEDS_CSUM")
	}
	if h.GSOSize == 0 {
		return headerError("GSO with segment size 0")
	}
	if int(h.HdrLen) >= frameLen {
		return headerError("GSO header length beyond the frame")
	}
	return nil
}

type headerError string

func (e headerError) Error() string { return "netdev: bad virtio-net header: " + string(e) }
func (e headerError) Is(target error) bool {
	return target == ErrHeader
}

type frameLenError int

func (e frameLenError) Error() string {
	return "netdev: bad virtio-net header: frame length " + strconv.Itoa(int(e))
}
func (e frameLenError) Is(target error) bool { return target == ErrHeader }
