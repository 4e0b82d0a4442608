// Package nvmevirt speaks NVMe's virtualization management to a primary
// controller (the physical function of an SR-IOV NVMe device): Identify
// Primary Controller Capabilities (CNS 14h) and Secondary Controller List
// (CNS 15h) to read the flexible queue (VQ) and interrupt (VI) resources
// and the secondary controllers behind the virtual functions, and the
// Virtualization Management command (opcode 1Ch) to take a secondary
// offline, assign it resources and bring it online.
//
// The wire format (command dwords, the Identify structures) is pure
// functions here; the kernel's admin pass-through ioctl on /dev/nvmeN is
// a thin file of its own (ioctl_linux.go). Identify data comes from a
// device, so its parsers check every length and index.
package nvmevirt

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Admin opcodes.
const (
	OpIdentify = 0x06
	OpVirtMgmt = 0x1c
)

// Identify CNS values.
const (
	CNSPrimaryCaps   = 0x14
	CNSSecondaryList = 0x15
)

// Virtualization Management actions (CDW10 bits 3:0).
const (
	ActPrimaryFlexible = 0x1 // the primary's own share of the flexible pool, from its next reset
	ActOffline         = 0x7
	ActAssign          = 0x8
	ActOnline          = 0x9
)

// Resource is a Virtualization Management resource type (CDW10 bits
// 10:8).
type Resource uint8

const (
	VQ Resource = 0 // queue resources: a secondary needs 2 (admin + one I/O queue pair)
	VI Resource = 1 // interrupt resources (MSI-X vectors): a secondary needs 1
)

func (r Resource) String() string {
	if r == VI {
		return "VI"
	}
	return "VQ"
}

// IdentifySize is the length of every Identify data structure.
const IdentifySize = 4096

// Command is one admin command: what goes in its dwords, the data buffer
// it reads or fills, and the completion's dword 0 once it has run.
type Command struct {
	Opcode uint8
	NSID   uint32
	CDW10  uint32
	CDW11  uint32
	Data   []byte // Identify fills it
	Result uint32 // completion dword 0
}

// Admin runs admin commands on a primary controller: the ioctl on a
// host, a model of one in tests.
type Admin interface {
	Submit(c *Command) error
}

// IdentifyCmd is Identify with CNS cns and controller identifier cntid
// (CDW10 bits 31:16: for the Secondary Controller List, the lowest
// controller identifier to list).
func IdentifyCmd(cns uint8, cntid uint16) Command {
	return Command{Opcode: OpIdentify, CDW10: uint32(cns) | uint32(cntid)<<16, Data: make([]byte, IdentifySize)}
}

// VirtMgmtCmd is Virtualization Management: action act on controller
// cntlid, for resource type rt and nr resources (CDW11 bits 15:0; only
// Assign and Primary Flexible read them).
func VirtMgmtCmd(act uint8, rt Resource, cntlid, nr uint16) Command {
	return Command{Opcode: OpVirtMgmt, CDW10: uint32(act&0xf) | uint32(rt&0x7)<<8 | uint32(cntlid)<<16, CDW11: uint32(nr)}
}

// DecodeVirtMgmt splits a Virtualization Management command's dwords
// back into their fields (for models of a controller and for logs).
func DecodeVirtMgmt(c *Command) (act uint8, rt Resource, cntlid, nr uint16) {
	return uint8(c.CDW10 & 0xf), Resource(c.CDW10 >> 8 & 0x7), uint16(c.CDW10 >> 16), uint16(c.CDW11)
}

// PrimaryCaps is the Primary Controller Capabilities structure (CNS 14h):
// the flexible resource pools and the primary's share of them.
type PrimaryCaps struct {
	CNTLID uint16 `json:"cntlid"` // the primary's controller identifier
	PortID uint16 `json:"portid"`
	CRT    uint8  `json:"crt"` // resource types supported: bit 0 VQ, bit 1 VI

	VQFRT  uint32 `json:"vqfrt"`  // VQ flexible resources, total
	VQRFA  uint32 `json:"vqrfa"`  // ... assigned to secondaries
	VQRFAP uint16 `json:"vqrfap"` // ... allocated to the primary
	VQPRT  uint16 `json:"vqprt"`  // VQ private resources of the primary
	VQFRSM uint16 `json:"vqfrsm"` // most VQ one secondary may have
	VQGRAN uint16 `json:"vqgran"` // preferred granularity

	VIFRT  uint32 `json:"vifrt"`
	VIRFA  uint32 `json:"virfa"`
	VIRFAP uint16 `json:"virfap"`
	VIPRT  uint16 `json:"viprt"`
	VIFRSM uint16 `json:"vifrsm"`
	VIGRAN uint16 `json:"vigran"`
}

// Free is how many flexible resources of type rt neither the primary nor
// a secondary holds.
func (p PrimaryCaps) Free(rt Resource) int {
	if rt == VI {
		return int(p.VIFRT) - int(p.VIRFA) - int(p.VIRFAP)
	}
	return int(p.VQFRT) - int(p.VQRFA) - int(p.VQRFAP)
}

// Supports reports whether the controller manages resources of type rt.
func (p PrimaryCaps) Supports(rt Resource) bool { return p.CRT&(1<<rt) != 0 }

// ErrShort means a device returned less Identify data than the structure
// needs.
var ErrShort = errors.New("nvmevirt: Identify data too short")

// ParsePrimaryCaps parses a Primary Controller Capabilities structure.
func ParsePrimaryCaps(b []byte) (PrimaryCaps, error) {
	if len(b) < 80 {
		return PrimaryCaps{}, fmt.Errorf("%w: %d bytes of Primary Controller Capabilities, want at least 80", ErrShort, len(b))
	}
	le := binary.LittleEndian
	return PrimaryCaps{
		CNTLID: le.Uint16(b[0:]), PortID: le.Uint16(b[2:]), CRT: b[4],
		VQFRT: le.Uint32(b[32:]), VQRFA: le.Uint32(b[36:]), VQRFAP: le.Uint16(b[40:]),
		VQPRT: le.Uint16(b[42:]), VQFRSM: le.Uint16(b[44:]), VQGRAN: le.Uint16(b[46:]),
		VIFRT: le.Uint32(b[64:]), VIRFA: le.Uint32(b[68:]), VIRFAP: le.Uint16(b[72:]),
		VIPRT: le.Uint16(b[74:]), VIFRSM: le.Uint16(b[76:]), VIGRAN: le.Uint16(b[78:]),
	}, nil
}

// EncodePrimaryCaps is ParsePrimaryCaps backwards, for models of a
// controller.
func EncodePrimaryCaps(p PrimaryCaps) []byte {
	b := make([]byte, IdentifySize)
	le := binary.LittleEndian
	le.PutUint16(b[0:], p.CNTLID)
	le.PutUint16(b[2:], p.PortID)
	b[4] = p.CRT
	le.PutUint32(b[32:], p.VQFRT)
	le.PutUint32(b[36:], p.VQRFA)
	le.PutUint16(b[40:], p.VQRFAP)
	le.PutUint16(b[42:], p.VQPRT)
	le.PutUint16(b[44:], p.VQFRSM)
	le.PutUint16(b[46:], p.VQGRAN)
	le.PutUint32(b[64:], p.VIFRT)
	le.PutUint32(b[68:], p.VIRFA)
	le.PutUint16(b[72:], p.VIRFAP)
	le.PutUint16(b[74:], p.VIPRT)
	le.PutUint16(b[76:], p.VIFRSM)
	le.PutUint16(b[78:], p.VIGRAN)
	return b
}

// Secondary is one Secondary Controller Entry.
type Secondary struct {
	SCID   uint16 `json:"scid"` // the secondary's controller identifier
	PCID   uint16 `json:"pcid"` // its primary's
	Online bool   `json:"online"`
	VFN    uint16 `json:"vfn"` // its virtual function, 1-based (0: none)
	NVQ    uint16 `json:"nvq"` // VQ resources assigned
	NVI    uint16 `json:"nvi"` // VI resources assigned
}

const (
	secListHeader = 32  // byte 0: the number of entries; the rest reserved
	secEntrySize  = 32  // per entry
	secListMax    = 127 // entries that fit in 4096 bytes
)

// ParseSecondaryList parses a Secondary Controller List. The count comes
// from the device: entries beyond the data it returned, or beyond the 127
// the structure holds, are an error rather than a guess.
func ParseSecondaryList(b []byte) ([]Secondary, error) {
	if len(b) < 1 {
		return nil, fmt.Errorf("%w: an empty Secondary Controller List", ErrShort)
	}
	n := int(b[0])
	if n > secListMax {
		return nil, fmt.Errorf("nvmevirt: the Secondary Controller List claims %d entries, more than the %d it can hold", n, secListMax)
	}
	if need := secListHeader + n*secEntrySize; len(b) < need {
		return nil, fmt.Errorf("%w: %d bytes for a Secondary Controller List of %d entries, want %d", ErrShort, len(b), n, need)
	}
	le := binary.LittleEndian
	out := make([]Secondary, n)
	for i := range out {
		e := b[secListHeader+i*secEntrySize:]
		out[i] = Secondary{SCID: le.Uint16(e[0:]), PCID: le.Uint16(e[2:]), Online: e[4]&1 != 0,
			VFN: le.Uint16(e[8:]), NVQ: le.Uint16(e[10:]), NVI: le.Uint16(e[12:])}
	}
	return out, nil
}

// EncodeSecondaryList is ParseSecondaryList backwards (at most 127
// entries), for models of a controller.
func EncodeSecondaryList(s []Secondary) []byte {
	b := make([]byte, IdentifySize)
	if len(s) > secListMax {
		s = s[:secListMax]
	}
	b[0] = byte(len(s))
	le := binary.LittleEndian
	for i, c := range s {
		e := b[secListHeader+i*secEntrySize:]
		le.PutUint16(e[0:], c.SCID)
		le.PutUint16(e[2:], c.PCID)
		if c.Online {
			e[4] = 1
		}
		le.PutUint16(e[8:], c.VFN)
		le.PutUint16(e[10:], c.NVQ)
		le.PutUint16(e[12:], c.NVI)
	}
	return b
}

// ForVF returns the entry of the secondary behind virtual function vfn
// (1-based: virtfn0 in sysfs is VF 1).
func ForVF(list []Secondary, vfn int) (Secondary, bool) {
	for _, s := range list {
		if int(s.VFN) == vfn {
			return s, true
		}
	}
	return Secondary{}, false
}

// StatusError is a command the controller completed with an error
// status (status code type << 8 | status code, as the kernel returns it;
// bit 14 is Do Not Retry).
type StatusError struct {
	Op     string
	Status uint16
}

// Status codes of the Virtualization Management command (NVMe 2.0,
// command specific, type 1).
var statusText = map[uint16]string{
	0x0002: "invalid field in command",
	0x0001: "invalid command opcode (the controller has no virtualization management)",
	0x011f: "invalid controller identifier",
	0x0120: "invalid secondary controller state (resources are assigned only while offline; online needs resources and an enabled VF)",
	0x0121: "invalid number of controller resources",
	0x0122: "invalid resource identifier (not that many free flexible resources)",
}

func (e *StatusError) Error() string {
	sc := e.Status & 0x7ff
	if t, ok := statusText[sc]; ok {
		return fmt.Sprintf("nvme %s: the controller refused it: %s (status %#x)", e.Op, t, e.Status)
	}
	return fmt.Sprintf("nvme %s: the controller refused it with status %#x", e.Op, e.Status)
}

// Code is the status without its retry and more bits: status code type
// << 8 | status code.
func (e *StatusError) Code() uint16 { return e.Status & 0x7ff }

// Identify helpers.

// ReadPrimaryCaps reads the primary controller's capabilities.
func ReadPrimaryCaps(a Admin) (PrimaryCaps, error) {
	c := IdentifyCmd(CNSPrimaryCaps, 0)
	if err := a.Submit(&c); err != nil {
		return PrimaryCaps{}, fmt.Errorf("identify primary controller capabilities: %w", err)
	}
	return ParsePrimaryCaps(c.Data)
}

// ReadSecondaries reads the secondary controllers' list from the first.
func ReadSecondaries(a Admin) ([]Secondary, error) {
	c := IdentifyCmd(CNSSecondaryList, 0)
	if err := a.Submit(&c); err != nil {
		return nil, fmt.Errorf("identify secondary controller list: %w", err)
	}
	return ParseSecondaryList(c.Data)
}

// Offline takes secondary cntlid offline; the controller takes back the
// resources it had.
func Offline(a Admin, cntlid uint16) error {
	c := VirtMgmtCmd(ActOffline, VQ, cntlid, 0)
	return a.Submit(&c)
}

// Assign gives offline secondary cntlid nr resources of type rt.
func Assign(a Admin, cntlid uint16, rt Resource, nr uint16) error {
	c := VirtMgmtCmd(ActAssign, rt, cntlid, nr)
	return a.Submit(&c)
}

// Online brings secondary cntlid online: its VF must be enabled and it
// must have resources.
func Online(a Admin, cntlid uint16) error {
	c := VirtMgmtCmd(ActOnline, VQ, cntlid, 0)
	return a.Submit(&c)
}

// AllocatePrimary sets the primary's own share of the flexible pool of
// type rt to nr, which takes effect at its next reset.
func AllocatePrimary(a Admin, cntlid uint16, rt Resource, nr uint16) error {
	c := VirtMgmtCmd(ActPrimaryFlexible, rt, cntlid, nr)
	return a.Submit(&c)
}
