package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Request is a front-end request code (the first header word).
type Request uint32

// Front-end request codes this package knows. Codes not listed here are
// refused by Validate.
const (
	GetFeatures         Request = 1
	SetFeatures         Request = 2
	SetOwner            Request = 3
	ResetOwner          Request = 4
	SetMemTable         Request = 5
	SetLogBase          Request = 6
	SetLogFD            Request = 7
	SetVringNum         Request = 8
	SetVringAddr        Request = 9
	SetVringBase        Request = 10
	GetVringBase        Request = 11
	SetVringKick        Request = 12
	SetVringCall        Request = 13
	SetVringErr         Request = 14
	GetProtocolFeatures Request = 15
	SetProtocolFeatures Request = 16
	GetQueueNum         Request = 17
	SetVringEnable      Request = 18
	GetConfig           Request = 24
	SetConfig           Request = 25
	GetInflightFD       Request = 31
	SetInflightFD       Request = 32
	ResetDevice         Request = 34
	GetMaxMemSlots      Request = 36
	AddMemReg           Request = 37
	RemMemReg           Request = 38
	SetStatus           Request = 39
	GetStatus           Request = 40
)

var requestNames = map[Request]string{
	GetFeatures: "GET_FEATURES", SetFeatures: "SET_FEATURES", SetOwner: "SET_OWNER",
	ResetOwner: "RESET_OWNER", SetMemTable: "SET_MEM_TABLE", SetLogBase: "SET_LOG_BASE",
	SetLogFD: "SET_LOG_FD", SetVringNum: "SET_VRING_NUM", SetVringAddr: "SET_VRING_ADDR",
	SetVringBase: "SET_VRING_BASE", GetVringBase: "GET_VRING_BASE", SetVringKick: "SET_VRING_KICK",
	SetVringCall: "SET_VRING_CALL", SetVringErr: "SET_VRING_ERR",
	GetProtocolFeatures: "GET_PROTOCOL_FEATURES", SetProtocolFeatures: "SET_PROTOCOL_FEATURES",
	GetQueueNum: "GET_QUEUE_NUM", SetVringEnable: "SET_VRING_ENABLE", GetConfig: "GET_CONFIG",
	SetConfig: "SET_CONFIG", GetInflightFD: "GET_INFLIGHT_FD", SetInflightFD: "SET_INFLIGHT_FD",
	ResetDevice: "RESET_DEVICE", GetMaxMemSlots: "GET_MAX_MEM_SLOTS",
	AddMemReg: "ADD_MEM_REG", RemMemReg: "REM_MEM_REG",
	SetStatus: "SET_STATUS", GetStatus: "GET_STATUS",
}

func (r Request) String() string {
	if n, ok := requestNames[r]; ok {
		return n
	}
	return fmt.Sprintf("Request(%d)", uint32(r))
}

// Header flags. The low two bits carry the protocol version, which is 1.
const (
	Version       = 0x1
	versionMask   = 0x3
	FlagReply     = 1 << 2
	FlagNeedReply = 1 << 3
	knownFlags    = versionMask | FlagReply | FlagNeedReply
)

// Virtio feature bit that vhost-user borrows: the back-end supports
// GET/SET_PROTOCOL_FEATURES. It is negotiated with SET_FEATURES like a
// device feature but never reaches the guest.
const FProtocolFeatures = 1 << 30

// FLogAll is VHOST_F_LOG_ALL, the vhost feature bit a back-end offers
// when it can log the guest memory it writes (for a live migration's
// dirty-page tracking): acknowledged with SET_FEATURES, it makes the
// back-end mark, in the log of SET_LOG_BASE, every page it writes. Like
// FProtocolFeatures it never reaches the guest.
const FLogAll = 1 << 26

// LogPageSize is VHOST_LOG_PAGE: one bit of the log per 4 KiB page of
// guest physical address space (bit p%8 of byte p/8 is page p).
const LogPageSize = 0x1000

// Protocol feature bits (GET/SET_PROTOCOL_FEATURES).
const (
	ProtocolMQ                  = 1 << 0
	ProtocolLogShmfd            = 1 << 1
	ProtocolReplyAck            = 1 << 3
	ProtocolBackendReq          = 1 << 5
	ProtocolConfig              = 1 << 9
	ProtocolInflightShmfd       = 1 << 12
	ProtocolResetDevice         = 1 << 13
	ProtocolConfigureMemSlots   = 1 << 15
	ProtocolStatus              = 1 << 16
	protocolFeaturesImplemented = ProtocolMQ | ProtocolLogShmfd | ProtocolReplyAck | ProtocolConfig | ProtocolInflightShmfd
)

// Limits.
const (
	// HeaderSize is the fixed header: request, flags, payload size.
	HeaderSize = 12
	// MaxRegions is VHOST_MEMORY_BASELINE_NREGIONS: the most regions (and
	// descriptors) one SET_MEM_TABLE carries.
	MaxRegions = 8
	// MaxConfigSize bounds a GET/SET_CONFIG payload's data, as QEMU does.
	MaxConfigSize = 256
	// MaxFDs is the most descriptors any message may carry.
	MaxFDs = MaxRegions
	// MaxVrings bounds vring indices: the kick/call payload has 8 bits for
	// the index.
	MaxVrings = 256

	configHeaderSize = 12
	regionSize       = 32
	memTableHeader   = 8
	// sizeMemReg is ADD_MEM_REG's and REM_MEM_REG's payload: 8 bytes of
	// padding, then one region.
	sizeMemReg = 8 + regionSize
	// MaxPayload is the largest payload any known request carries: a
	// full config window (268 bytes; a full memory table is 264).
	MaxPayload = configHeaderSize + MaxConfigSize
)

// Payload sizes.
const (
	sizeU64        = 8
	sizeVringState = 8
	sizeVringAddr  = 40
	// sizeInflight is the inflight description as QEMU sends and expects
	// it: two u64, two u16, and the padding a C compiler puts after them.
	sizeInflight = 24
	// sizeLog is the log description of SET_LOG_BASE: two u64.
	sizeLog = 16
)

// Errors.
var (
	ErrUnsupported = errors.New("vhostuser: request not supported")
	ErrMalformed   = errors.New("vhostuser: malformed message")
	ErrFailed      = errors.New("vhostuser: back-end reported failure")
)

// Header is the fixed part of every message.
type Header struct {
	Request Request
	Flags   uint32
	Size    uint32 // payload bytes that follow
}

// Reply reports whether the message is a reply.
func (h Header) Reply() bool { return h.Flags&FlagReply != 0 }

// NeedReply reports whether the sender asked for a REPLY_ACK.
func (h Header) NeedReply() bool { return h.Flags&FlagNeedReply != 0 }

// PutHeader encodes h into b[:HeaderSize].
func PutHeader(b []byte, h Header) {
	binary.LittleEndian.PutUint32(b[0:], uint32(h.Request))
	binary.LittleEndian.PutUint32(b[4:], h.Flags)
	binary.LittleEndian.PutUint32(b[8:], h.Size)
}

// ParseHeader decodes and checks a header: version 1, no unknown flags, a
// request this package knows, and a size that request may carry in this
// direction (see PayloadSizeOK). Nothing after the header is read before
// it passes, so a hostile size never sizes an allocation.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("%w: header of %d bytes", ErrMalformed, len(b))
	}
	h := Header{
		Request: Request(binary.LittleEndian.Uint32(b[0:])),
		Flags:   binary.LittleEndian.Uint32(b[4:]),
		Size:    binary.LittleEndian.Uint32(b[8:]),
	}
	if h.Flags&versionMask != Version {
		return h, fmt.Errorf("%w: version %d, want %d", ErrMalformed, h.Flags&versionMask, Version)
	}
	if h.Flags&^uint32(knownFlags) != 0 {
		return h, fmt.Errorf("%w: unknown flags %#x", ErrMalformed, h.Flags&^uint32(knownFlags))
	}
	if _, ok := requestNames[h.Request]; !ok {
		return h, fmt.Errorf("%w: %v", ErrUnsupported, h.Request)
	}
	if err := PayloadSizeOK(h.Request, h.Reply(), h.Size); err != nil {
		return h, err
	}
	return h, nil
}

// PayloadSizeOK reports whether a payload of size bytes is allowed for req
// in a request (reply false) or a reply (reply true). A reply of 8 bytes is
// always allowed: it is the REPLY_ACK status for requests that have no
// reply of their own.
func PayloadSizeOK(req Request, reply bool, size uint32) error {
	ok := false
	switch {
	case req == GetConfig || req == SetConfig && !reply:
		// A back-end reports a failed GET_CONFIG with an empty payload.
		// (SET_CONFIG's only reply is REPLY_ACK's u64, below.)
		ok = size >= configHeaderSize && size <= MaxPayload || reply && req == GetConfig && size == 0
	case req == SetMemTable && !reply:
		ok = size >= memTableHeader && size <= memTableHeader+MaxRegions*regionSize &&
			(size-memTableHeader)%regionSize == 0
	case reply:
		switch req {
		case GetVringBase:
			ok = size == sizeVringState
		case GetInflightFD:
			ok = size == sizeInflight
		case SetLogBase:
			// With LOG_SHMFD SET_LOG_BASE has a reply of its own, whose
			// payload back-ends fill differently: libvhost-user sends a
			// u64 (the log size, its union's first word), rust-vmm's
			// back-end the log description back, vio's a u64 status.
			ok = size == sizeU64 || size == sizeLog
		default:
			ok = size == sizeU64
		}
	default:
		switch req {
		case GetFeatures, GetProtocolFeatures, GetQueueNum, SetOwner, ResetOwner,
			GetMaxMemSlots, GetStatus, ResetDevice:
			ok = size == 0
		case SetFeatures, SetProtocolFeatures, SetVringKick, SetVringCall,
			SetVringErr, SetStatus, SetLogFD:
			ok = size == sizeU64 || req == SetLogFD && size == 0
		case SetLogBase:
			// The log description (LOG_SHMFD), or the u64 the kernel's
			// vhost takes (a front-end without LOG_SHMFD).
			ok = size == sizeLog || size == sizeU64
		case SetVringNum, SetVringBase, GetVringBase, SetVringEnable:
			ok = size == sizeVringState
		case SetVringAddr:
			ok = size == sizeVringAddr
		case AddMemReg, RemMemReg:
			ok = size == sizeMemReg
		case GetInflightFD, SetInflightFD:
			ok = size == sizeInflight
		}
	}
	if !ok {
		dir := "request"
		if reply {
			dir = "reply"
		}
		return fmt.Errorf("%w: %v %s with a %d-byte payload", ErrMalformed, req, dir, size)
	}
	return nil
}

// FDsAllowed returns how many descriptors a request may carry (replies
// carry none).
func FDsAllowed(req Request, reply bool) int {
	if reply {
		if req == GetInflightFD {
			return 1 // the inflight region the back-end made
		}
		return 0
	}
	switch req {
	case SetMemTable:
		return MaxRegions
	case SetVringKick, SetVringCall, SetVringErr, SetLogBase, SetLogFD, AddMemReg, SetInflightFD:
		return 1
	case RemMemReg:
		// The specification asks for none but lets a back-end accept (and
		// close) one, for front-ends that send it.
		return 1
	}
	return 0
}

// VringState is the payload of SET_VRING_NUM, SET_VRING_BASE,
// SET_VRING_ENABLE and GET_VRING_BASE.
type VringState struct {
	Index uint32
	Num   uint32
}

func (s VringState) Marshal() []byte {
	b := make([]byte, sizeVringState)
	binary.LittleEndian.PutUint32(b[0:], s.Index)
	binary.LittleEndian.PutUint32(b[4:], s.Num)
	return b
}

// ParseVringState decodes a vring state.
func ParseVringState(b []byte) (VringState, error) {
	if len(b) != sizeVringState {
		return VringState{}, fmt.Errorf("%w: vring state of %d bytes", ErrMalformed, len(b))
	}
	return VringState{binary.LittleEndian.Uint32(b[0:]), binary.LittleEndian.Uint32(b[4:])}, nil
}

// VringFlagLog in VringAddr.Flags asks the back-end to log used-ring writes.
const VringFlagLog = 1

// VringAddr is the payload of SET_VRING_ADDR. The three ring addresses are
// in the front-end's virtual address space (the user addresses of
// SET_MEM_TABLE); Log is a guest physical address.
type VringAddr struct {
	Index uint32
	Flags uint32
	Desc  uint64
	Used  uint64
	Avail uint64
	Log   uint64
}

func (a VringAddr) Marshal() []byte {
	b := make([]byte, sizeVringAddr)
	binary.LittleEndian.PutUint32(b[0:], a.Index)
	binary.LittleEndian.PutUint32(b[4:], a.Flags)
	binary.LittleEndian.PutUint64(b[8:], a.Desc)
	binary.LittleEndian.PutUint64(b[16:], a.Used)
	binary.LittleEndian.PutUint64(b[24:], a.Avail)
	binary.LittleEndian.PutUint64(b[32:], a.Log)
	return b
}

// ParseVringAddr decodes a vring address.
func ParseVringAddr(b []byte) (VringAddr, error) {
	if len(b) != sizeVringAddr {
		return VringAddr{}, fmt.Errorf("%w: vring address of %d bytes", ErrMalformed, len(b))
	}
	a := VringAddr{
		Index: binary.LittleEndian.Uint32(b[0:]),
		Flags: binary.LittleEndian.Uint32(b[4:]),
		Desc:  binary.LittleEndian.Uint64(b[8:]),
		Used:  binary.LittleEndian.Uint64(b[16:]),
		Avail: binary.LittleEndian.Uint64(b[24:]),
		Log:   binary.LittleEndian.Uint64(b[32:]),
	}
	if a.Flags&^uint32(VringFlagLog) != 0 {
		return a, fmt.Errorf("%w: unknown vring address flags %#x", ErrMalformed, a.Flags)
	}
	return a, nil
}

// MemoryRegion is one entry of SET_MEM_TABLE; its bytes are at MmapOffset
// in the descriptor sent with it.
type MemoryRegion struct {
	GuestAddr  uint64
	Size       uint64
	UserAddr   uint64 // the front-end's virtual address of the region
	MmapOffset uint64
}

// ParseMemoryRegion decodes ADD_MEM_REG's and REM_MEM_REG's payload (the
// padding is ignored) and checks the region as ParseMemoryTable does.
func ParseMemoryRegion(b []byte) (MemoryRegion, error) {
	if len(b) != sizeMemReg {
		return MemoryRegion{}, fmt.Errorf("%w: memory region payload of %d bytes", ErrMalformed, len(b))
	}
	return parseRegion(b[8:], 0)
}

// Marshal encodes r as ADD_MEM_REG's and REM_MEM_REG's payload.
func (r MemoryRegion) Marshal() []byte {
	b := make([]byte, sizeMemReg)
	putRegion(b[8:], r)
	return b
}

func putRegion(p []byte, r MemoryRegion) {
	binary.LittleEndian.PutUint64(p[0:], r.GuestAddr)
	binary.LittleEndian.PutUint64(p[8:], r.Size)
	binary.LittleEndian.PutUint64(p[16:], r.UserAddr)
	binary.LittleEndian.PutUint64(p[24:], r.MmapOffset)
}

// parseRegion decodes region i: non-empty, wrapping none of the address
// spaces.
func parseRegion(p []byte, i int) (MemoryRegion, error) {
	r := MemoryRegion{
		GuestAddr:  binary.LittleEndian.Uint64(p[0:]),
		Size:       binary.LittleEndian.Uint64(p[8:]),
		UserAddr:   binary.LittleEndian.Uint64(p[16:]),
		MmapOffset: binary.LittleEndian.Uint64(p[24:]),
	}
	if r.Size == 0 || r.GuestAddr+r.Size < r.GuestAddr || r.UserAddr+r.Size < r.UserAddr ||
		r.MmapOffset+r.Size < r.MmapOffset {
		return MemoryRegion{}, fmt.Errorf("%w: memory region %d (gpa %#x size %#x) wraps or is empty",
			ErrMalformed, i, r.GuestAddr, r.Size)
	}
	return r, nil
}

// MemoryTable is the payload of SET_MEM_TABLE.
type MemoryTable struct {
	Regions []MemoryRegion
}

func (t MemoryTable) Marshal() []byte {
	b := make([]byte, memTableHeader+regionSize*len(t.Regions))
	binary.LittleEndian.PutUint32(b[0:], uint32(len(t.Regions)))
	for i, r := range t.Regions {
		putRegion(b[memTableHeader+regionSize*i:], r)
	}
	return b
}

// ParseMemoryTable decodes and checks a memory table: the count must match
// the payload, be 1..MaxRegions, every region non-empty without wrapping
// either address space, and guest ranges disjoint.
func ParseMemoryTable(b []byte) (MemoryTable, error) {
	if len(b) < memTableHeader {
		return MemoryTable{}, fmt.Errorf("%w: memory table of %d bytes", ErrMalformed, len(b))
	}
	n := binary.LittleEndian.Uint32(b[0:])
	if n == 0 || n > MaxRegions {
		return MemoryTable{}, fmt.Errorf("%w: %d memory regions (1 to %d allowed)", ErrMalformed, n, MaxRegions)
	}
	if uint64(len(b)) != memTableHeader+regionSize*uint64(n) {
		return MemoryTable{}, fmt.Errorf("%w: %d memory regions in %d bytes", ErrMalformed, n, len(b))
	}
	t := MemoryTable{Regions: make([]MemoryRegion, n)}
	for i := range t.Regions {
		r, err := parseRegion(b[memTableHeader+regionSize*i:], i)
		if err != nil {
			return MemoryTable{}, err
		}
		for j, o := range t.Regions[:i] {
			if r.GuestAddr < o.GuestAddr+o.Size && o.GuestAddr < r.GuestAddr+r.Size {
				return MemoryTable{}, fmt.Errorf("%w: memory regions %d and %d overlap", ErrMalformed, j, i)
			}
		}
		t.Regions[i] = r
	}
	return t, nil
}

// Config is the payload of GET_CONFIG and SET_CONFIG: a window of the
// device's configuration space.
type Config struct {
	Offset uint32
	Flags  uint32
	Data   []byte
}

// Config flags.
const (
	ConfigWritable  = 0 // SET_CONFIG applies the bytes now
	ConfigMigration = 1 // SET_CONFIG during live migration
)

func (c Config) Marshal() []byte {
	b := make([]byte, configHeaderSize+len(c.Data))
	binary.LittleEndian.PutUint32(b[0:], c.Offset)
	binary.LittleEndian.PutUint32(b[4:], uint32(len(c.Data)))
	binary.LittleEndian.PutUint32(b[8:], c.Flags)
	copy(b[configHeaderSize:], c.Data)
	return b
}

// ParseConfig decodes a config payload, whose inner size must match the
// bytes that follow and be at most MaxConfigSize.
func ParseConfig(b []byte) (Config, error) {
	if len(b) < configHeaderSize || len(b) > MaxPayload {
		return Config{}, fmt.Errorf("%w: config payload of %d bytes", ErrMalformed, len(b))
	}
	c := Config{
		Offset: binary.LittleEndian.Uint32(b[0:]),
		Flags:  binary.LittleEndian.Uint32(b[8:]),
	}
	n := binary.LittleEndian.Uint32(b[4:])
	if uint64(n) != uint64(len(b)-configHeaderSize) {
		return Config{}, fmt.Errorf("%w: config says %d bytes, carries %d", ErrMalformed, n, len(b)-configHeaderSize)
	}
	if c.Flags > ConfigMigration {
		return Config{}, fmt.Errorf("%w: unknown config flags %#x", ErrMalformed, c.Flags)
	}
	if uint64(c.Offset)+uint64(n) > MaxConfigSize {
		return Config{}, fmt.Errorf("%w: config window %d+%d past %d bytes", ErrMalformed, c.Offset, n, MaxConfigSize)
	}
	c.Data = append([]byte(nil), b[configHeaderSize:]...)
	return c, nil
}

// U64 encodes a u64 payload.
func U64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

// ParseU64 decodes a u64 payload.
func ParseU64(b []byte) (uint64, error) {
	if len(b) != sizeU64 {
		return 0, fmt.Errorf("%w: u64 payload of %d bytes", ErrMalformed, len(b))
	}
	return binary.LittleEndian.Uint64(b), nil
}

// Kick/call/err payload: the vring index in bits 0-7, and bit 8 set when
// no descriptor comes with the message (polling mode).
const (
	vringIndexMask = 0xff
	VringNoFD      = 1 << 8
)

// ParseVringFD decodes a SET_VRING_KICK/CALL/ERR payload.
func ParseVringFD(b []byte) (index uint32, noFD bool, err error) {
	v, err := ParseU64(b)
	if err != nil {
		return 0, false, err
	}
	if v&^uint64(vringIndexMask|VringNoFD) != 0 {
		return 0, false, fmt.Errorf("%w: vring fd payload %#x has unknown bits", ErrMalformed, v)
	}
	return uint32(v & vringIndexMask), v&VringNoFD != 0, nil
}

// Message is one decoded message with the descriptors that came with it.
// The receiver owns FDs and must close them (Close) unless it keeps them.
type Message struct {
	Header
	Payload []byte
	FDs     []int
}

// ParsePayload decodes m's payload into the type its request carries in
// its direction: uint64, VringState, VringAddr, MemoryTable, MemoryRegion
// (ADD/REM_MEM_REG), Config, Inflight (GET/SET_INFLIGHT_FD), Log
// (SET_LOG_BASE's description, and the reply that echoes it), a
// uint32 vring index (SET_VRING_KICK/CALL/ERR), or nil for an empty
// payload. It also checks the descriptor count against the
// request.
func ParsePayload(m *Message) (any, error) {
	if err := PayloadSizeOK(m.Request, m.Reply(), uint32(len(m.Payload))); err != nil {
		return nil, err
	}
	if len(m.FDs) > FDsAllowed(m.Request, m.Reply()) {
		return nil, fmt.Errorf("%w: %v with %d descriptors", ErrMalformed, m.Request, len(m.FDs))
	}
	if len(m.Payload) == 0 {
		return nil, nil
	}
	switch m.Request {
	case GetConfig, SetConfig:
		return ParseConfig(m.Payload)
	case SetMemTable:
		if m.Reply() {
			return ParseU64(m.Payload)
		}
		t, err := ParseMemoryTable(m.Payload)
		if err != nil {
			return nil, err
		}
		if len(m.FDs) != len(t.Regions) {
			return nil, fmt.Errorf("%w: %d memory regions with %d descriptors", ErrMalformed, len(t.Regions), len(m.FDs))
		}
		return t, nil
	case SetVringAddr:
		if !m.Reply() {
			return ParseVringAddr(m.Payload)
		}
	case AddMemReg, RemMemReg:
		if !m.Reply() {
			r, err := ParseMemoryRegion(m.Payload)
			if err != nil {
				return nil, err
			}
			if m.Request == AddMemReg && len(m.FDs) != 1 {
				return nil, fmt.Errorf("%w: ADD_MEM_REG with %d descriptors", ErrMalformed, len(m.FDs))
			}
			return r, nil
		}
	case SetVringNum, SetVringBase, GetVringBase, SetVringEnable:
		if !m.Reply() || m.Request == GetVringBase {
			return ParseVringState(m.Payload)
		}
	case GetInflightFD, SetInflightFD:
		if m.Request == SetInflightFD && m.Reply() {
			break // a REPLY_ACK status
		}
		inf, err := ParseInflight(m.Payload)
		if err != nil {
			return nil, err
		}
		if m.Request == SetInflightFD && len(m.FDs) != 1 {
			return nil, fmt.Errorf("%w: SET_INFLIGHT_FD with %d descriptors", ErrMalformed, len(m.FDs))
		}
		return inf, nil
	case SetLogBase:
		if m.Reply() {
			if len(m.Payload) == sizeLog {
				return ParseLog(m.Payload)
			}
			break
		}
		if len(m.Payload) != sizeLog {
			break // the kernel's u64, which no vhost-user back-end can use
		}
		l, err := ParseLog(m.Payload)
		if err != nil {
			return nil, err
		}
		if len(m.FDs) != 1 {
			return nil, fmt.Errorf("%w: SET_LOG_BASE with %d descriptors", ErrMalformed, len(m.FDs))
		}
		return l, nil
	case SetVringKick, SetVringCall, SetVringErr:
		if !m.Reply() {
			idx, noFD, err := ParseVringFD(m.Payload)
			if err != nil {
				return nil, err
			}
			if noFD == (len(m.FDs) == 1) {
				return nil, fmt.Errorf("%w: %v no-fd flag %v with %d descriptors", ErrMalformed, m.Request, noFD, len(m.FDs))
			}
			return idx, nil
		}
	}
	return ParseU64(m.Payload)
}

// Inflight is the payload of GET_INFLIGHT_FD (request and reply) and
// SET_INFLIGHT_FD: where the inflight region lies in the descriptor that
// comes with it, and the queues it was made for.
type Inflight struct {
	MmapSize   uint64
	MmapOffset uint64
	NumQueues  uint16
	QueueSize  uint16
}

func (i Inflight) Marshal() []byte {
	b := make([]byte, sizeInflight)
	binary.LittleEndian.PutUint64(b[0:], i.MmapSize)
	binary.LittleEndian.PutUint64(b[8:], i.MmapOffset)
	binary.LittleEndian.PutUint16(b[16:], i.NumQueues)
	binary.LittleEndian.PutUint16(b[18:], i.QueueSize)
	return b
}

// ParseInflight decodes an inflight description (the padding is ignored).
// Its values are checked by whoever maps the region.
func ParseInflight(b []byte) (Inflight, error) {
	if len(b) != sizeInflight {
		return Inflight{}, fmt.Errorf("%w: inflight description of %d bytes", ErrMalformed, len(b))
	}
	return Inflight{
		MmapSize:   binary.LittleEndian.Uint64(b[0:]),
		MmapOffset: binary.LittleEndian.Uint64(b[8:]),
		NumQueues:  binary.LittleEndian.Uint16(b[16:]),
		QueueSize:  binary.LittleEndian.Uint16(b[18:]),
	}, nil
}

// Log is the log description of SET_LOG_BASE (LOG_SHMFD): the log
// bitmap is MmapSize bytes at MmapOffset in the descriptor that comes
// with the message, and covers guest physical addresses from 0 up to
// 8*LogPageSize*MmapSize.
type Log struct {
	MmapSize   uint64
	MmapOffset uint64
}

// MaxLogSize bounds a log's size: one bit per 4 KiB page, so 1 TiB of
// log covers 2^55 bytes of guest physical address space, more than any
// x86 machine has. A larger size (a hostile front-end) is refused before
// anything is mapped.
const MaxLogSize = 1 << 40

func (l Log) Marshal() []byte {
	b := make([]byte, sizeLog)
	binary.LittleEndian.PutUint64(b[0:], l.MmapSize)
	binary.LittleEndian.PutUint64(b[8:], l.MmapOffset)
	return b
}

// ParseLog decodes a log description and checks that it can be mapped:
// a size of 1 to MaxLogSize bytes, and an offset that keeps the end
// representable. Whether the file holds it is checked by the mapping.
func ParseLog(b []byte) (Log, error) {
	if len(b) != sizeLog {
		return Log{}, fmt.Errorf("%w: log description of %d bytes", ErrMalformed, len(b))
	}
	l := Log{MmapSize: binary.LittleEndian.Uint64(b[0:]), MmapOffset: binary.LittleEndian.Uint64(b[8:])}
	if l.MmapSize == 0 || l.MmapSize > MaxLogSize || l.MmapOffset > MaxLogSize<<8 {
		return Log{}, fmt.Errorf("%w: log of %#x bytes at offset %#x", ErrMalformed, l.MmapSize, l.MmapOffset)
	}
	return l, nil
}

// CheckLogBaseReply checks a back-end's reply to SET_LOG_BASE for the log
// sent. Back-ends disagree on what it carries (see PayloadSizeOK), so
// what is accepted is: a u64 of 0 (success, as a REPLY_ACK status), a
// u64 equal to the log's size (libvhost-user's echo of its union's first
// word), or the log description itself (rust-vmm's echo). Any other u64
// is a failure status (ErrFailed); another description, or another size,
// is malformed.
func CheckLogBaseReply(p []byte, sent Log) error {
	switch len(p) {
	case sizeU64:
		v := binary.LittleEndian.Uint64(p)
		if v == 0 || v == sent.MmapSize {
			return nil
		}
		return fmt.Errorf("%w: SET_LOG_BASE status %#x", ErrFailed, v)
	case sizeLog:
		l, err := ParseLog(p)
		if err != nil {
			return err
		}
		if l != sent {
			return fmt.Errorf("%w: SET_LOG_BASE answered with a log of %#x bytes at %#x, sent %#x at %#x",
				ErrMalformed, l.MmapSize, l.MmapOffset, sent.MmapSize, sent.MmapOffset)
		}
		return nil
	}
	return fmt.Errorf("%w: SET_LOG_BASE reply of %d bytes", ErrMalformed, len(p))
}
