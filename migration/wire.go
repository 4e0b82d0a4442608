package migration

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"

	"github.com/viovmm/vio/state"
)

// The stream (docs/migration.md). Everything is little-endian.
//
//	source → destination: header, then records
//	  header   "VIOMIGR\x00", version u32, flags u32 (0, flagLocal or flagDisks)
//	  record   type u16, reserved u16 (0), length u32, then length bytes
//	destination → source: a reply after the layout (ready) and after done
//	  reply    status u32 (0 ok, 1 failed), length u32, then a sentence
const (
	// Magic opens every migration stream.
	Magic = "VIOMIGR\x00"
	// Version is the stream version this vio sends; a receiver accepts
	// exactly its own, since both ends must also agree on device state.
	// Version 2 added same-host migration (flagLocal, the memory record).
	Version = 2
	// PageSize is the granule of RAM in the stream (and of dirty logs).
	PageSize = 4096

	headerSize = len(Magic) + 8
	frameSize  = 8
	replySize  = 8

	// Limits a receiver enforces before it allocates or writes.
	MaxConfigSize = 1 << 20
	MaxRegions    = 64
	MaxRunPages   = 256 // pages in one data record (1 MiB)
	MaxStateSize  = state.HeaderSize + state.MaxBodySize
	MaxReplySize  = 4096
)

// Record types.
const (
	recConfig    = 1 // the VM config (JSON, as vm.create takes it)
	recLayout    = 2 // guest RAM regions: n × (GPA u64, size u64)
	recData      = 3 // region u32, 0 u32, first page u64, then whole pages
	recZero      = 4 // region u32, 0 u32, first page u64, count u64
	recIteration = 5 // iteration u32, 0 u32, dirty pages u64: an iteration ended
	recState     = 6 // device and vCPU state: a state container (docs/state-format.md)
	recDone      = 7 // no payload: restore and run the VM, then reply
	recMemory    = 8 // local only: n × file offset u64, guest RAM's memfd attached (SCM_RIGHTS)
	// With flagDisks (disks.go): the disks to copy, after the config;
	// and, before RAM, the copy's progress, once a second while the
	// source waits for the disks to be in sync (which keeps the stream
	// alive for the receiver's idle bound).
	recDisks        = 9  // token [16], n u32, n × (size u64, id length u8, id)
	recDiskProgress = 10 // copied u64, total u64
)

// Header flags.
const (
	// flagLocal: a same-host migration. Guest RAM is not copied: the
	// source passes the memfd holding it, and the stream is header,
	// config, layout, memory, then state and done (docs/migration.md).
	flagLocal = 1
	// flagDisks: the source copies disks that are not on shared storage
	// (disks.go). A receiver that does not know it refuses the stream.
	flagDisks  = 2
	knownFlags = flagLocal | flagDisks
)

var recordNames = map[uint16]string{
	recConfig: "config", recLayout: "layout", recData: "data", recZero: "zero",
	recIteration: "iteration", recState: "state", recDone: "done", recMemory: "memory",
	recDisks: "disks", recDiskProgress: "disk progress",
}

// ErrProtocol is matched by every error about what a peer sent.
var ErrProtocol = errors.New("migration: bad stream")

func protoErr(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, a...))
}

// Region is one region of guest RAM: its guest-physical address and the
// host memory that holds it (a whole number of pages).
type Region struct {
	GPA  uint64
	Data []byte
}

var le = binary.LittleEndian

// encoder writes the source's half of the stream and counts what it wrote.
type encoder struct {
	w     *bufio.Writer
	bytes uint64
	frame [frameSize + 24]byte
}

func newEncoder(w io.Writer) *encoder { return &encoder{w: bufio.NewWriterSize(w, 1<<20)} }

func (e *encoder) write(b []byte) error {
	n, err := e.w.Write(b)
	e.bytes += uint64(n)
	return err
}

func (e *encoder) header(flags uint32) error {
	b := append([]byte(Magic), 0, 0, 0, 0, 0, 0, 0, 0)
	le.PutUint32(b[len(Magic):], Version)
	le.PutUint32(b[len(Magic)+4:], flags)
	return e.write(b)
}

// record writes a frame with the fixed fields head and then body.
func (e *encoder) record(typ uint16, head []byte, body []byte) error {
	f := e.frame[:frameSize]
	le.PutUint16(f, typ)
	le.PutUint16(f[2:], 0)
	le.PutUint32(f[4:], uint32(len(head)+len(body)))
	f = append(f, head...)
	if err := e.write(f); err != nil {
		return err
	}
	return e.write(body)
}

func (e *encoder) config(b []byte) error {
	if len(b) > MaxConfigSize {
		return fmt.Errorf("migration: the VM config is %d bytes, the limit is %d", len(b), MaxConfigSize)
	}
	return e.record(recConfig, nil, b)
}

func (e *encoder) layout(rs []Region) error {
	if len(rs) == 0 || len(rs) > MaxRegions {
		return fmt.Errorf("migration: %d RAM regions, want 1 to %d", len(rs), MaxRegions)
	}
	b := make([]byte, 0, 16*len(rs))
	for _, r := range rs {
		b = le.AppendUint64(b, r.GPA)
		b = le.AppendUint64(b, uint64(len(r.Data)))
	}
	return e.record(recLayout, nil, b)
}

func runHead(b []byte, region int, page uint64) []byte {
	b = le.AppendUint32(b, uint32(region))
	b = le.AppendUint32(b, 0)
	return le.AppendUint64(b, page)
}

func (e *encoder) data(region int, page uint64, pages []byte) error {
	var h [16]byte
	return e.record(recData, runHead(h[:0], region, page), pages)
}

func (e *encoder) zero(region int, page, count uint64) error {
	var h [24]byte
	return e.record(recZero, le.AppendUint64(runHead(h[:0], region, page), count), nil)
}

func (e *encoder) iteration(n uint32, dirty uint64) error {
	var h [16]byte
	b := le.AppendUint32(h[:0], n)
	b = le.AppendUint32(b, 0)
	return e.record(recIteration, le.AppendUint64(b, dirty), nil)
}

func (e *encoder) state(b []byte) error {
	if len(b) > MaxStateSize {
		return fmt.Errorf("migration: device state of %d bytes, the limit is %d", len(b), MaxStateSize)
	}
	return e.record(recState, nil, b)
}

func (e *encoder) done() error { return e.record(recDone, nil, nil) }

func (e *encoder) flush() error { return e.w.Flush() }

// readHeader reads and checks the stream header and returns its flags.
func readHeader(r io.Reader) (uint32, error) {
	var b [headerSize]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, protoErr("header: %v", eofIsUnexpected(err))
	}
	if string(b[:len(Magic)]) != Magic {
		return 0, protoErr("not a vio migration stream (bad magic)")
	}
	if v := le.Uint32(b[len(Magic):]); v != Version {
		return 0, protoErr("stream version %d, this vio speaks %d: migrate between the same vio versions", v, Version)
	}
	f := le.Uint32(b[len(Magic)+4:])
	if f&^knownFlags != 0 {
		return 0, protoErr("unknown header flags %#x", f)
	}
	return f, nil
}

// frame is a record's type and payload length.
type frame struct {
	typ uint16
	len uint32
}

func (f frame) String() string {
	if n, ok := recordNames[f.typ]; ok {
		return n
	}
	return fmt.Sprintf("type %d", f.typ)
}

// readFrame reads a record's frame and checks the length the type allows,
// so no payload is read or allocated before its size is known to be sane.
func readFrame(r io.Reader) (frame, error) {
	var b [frameSize]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return frame{}, protoErr("record: %v", eofIsUnexpected(err))
	}
	f := frame{typ: le.Uint16(b[:]), len: le.Uint32(b[4:])}
	if le.Uint16(b[2:]) != 0 {
		return f, protoErr("%v record with reserved bits set", f)
	}
	ok := false
	switch f.typ {
	case recConfig:
		ok = f.len > 0 && f.len <= MaxConfigSize
	case recLayout:
		ok = f.len > 0 && f.len%16 == 0 && f.len/16 <= MaxRegions
	case recData:
		n := uint64(f.len) - 16
		ok = f.len > 16 && n%PageSize == 0 && n/PageSize <= MaxRunPages
	case recZero:
		ok = f.len == 24
	case recIteration:
		ok = f.len == 16
	case recState:
		ok = f.len > 0 && f.len <= uint32(MaxStateSize)
	case recDone:
		ok = f.len == 0
	case recMemory:
		ok = f.len > 0 && f.len%8 == 0 && f.len/8 <= MaxRegions
	case recDisks:
		ok = f.len > 0 && f.len <= uint32(maxDisksRecord)
	case recDiskProgress:
		ok = f.len == 16
	default:
		return f, protoErr("unknown record type %d", f.typ)
	}
	if !ok {
		return f, protoErr("%v record of %d bytes", f, f.len)
	}
	return f, nil
}

// readPayload reads a payload whose size readFrame has bounded.
func readPayload(r io.Reader, f frame) ([]byte, error) {
	b := make([]byte, f.len)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, protoErr("%v record: %v", f, eofIsUnexpected(err))
	}
	return b, nil
}

func eofIsUnexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Reply statuses.
const (
	replyOK     = 0
	replyFailed = 1
)

// writeReply sends the destination's answer: nil for OK, or the error's
// sentence (cut to MaxReplySize).
func writeReply(w io.Writer, err error) error {
	status, msg := uint32(replyOK), ""
	if err != nil {
		status, msg = replyFailed, err.Error()
		if len(msg) > MaxReplySize {
			msg = msg[:MaxReplySize]
			for !utf8.ValidString(msg) {
				msg = msg[:len(msg)-1]
			}
		}
	}
	b := make([]byte, replySize, replySize+len(msg))
	le.PutUint32(b, status)
	le.PutUint32(b[4:], uint32(len(msg)))
	_, werr := w.Write(append(b, msg...))
	return werr
}

// ErrDestination is matched by a failure the destination reported.
var ErrDestination = errors.New("the migration destination failed")

type destError struct{ msg string }

func (e *destError) Error() string        { return "the destination refused the migration: " + e.msg }
func (e *destError) Is(target error) bool { return target == ErrDestination }

// readReply reads the destination's answer: nil for OK, a destError with
// its sentence, or a protocol error.
func readReply(r io.Reader) error {
	var b [replySize]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return protoErr("reply: %v", eofIsUnexpected(err))
	}
	status, n := le.Uint32(b[:]), le.Uint32(b[4:])
	switch {
	case n > MaxReplySize:
		return protoErr("reply of %d bytes", n)
	case status == replyOK && n != 0:
		return protoErr("OK reply with a message")
	case status != replyOK && status != replyFailed:
		return protoErr("reply status %d", status)
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(r, msg); err != nil {
		return protoErr("reply: %v", eofIsUnexpected(err))
	}
	if status == replyOK {
		return nil
	}
	s := string(msg)
	if !utf8.ValidString(s) {
		s = fmt.Sprintf("%q", s)
	}
	return &destError{msg: s}
}
